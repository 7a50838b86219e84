"""params.yaml's stage sections are the typed configs' fields, key for key, and dvc.yaml's
stages declare them: a field added to a config without its params.yaml line (or the reverse)
fails here instead of being silently left at its default by `dvc repro`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from iwarp.config import from_dict
from iwarp.data.cli import STAGE_KEYS
from iwarp.data.prepare import PrepareConfig
from iwarp.data.realfaces import FacesConfig
from iwarp.data.stats import StatsConfig
from iwarp.data.synth import SynthConfig
from iwarp.data.validate import ValidationConfig

REPO = Path(__file__).resolve().parents[2]
SECTIONS = {
    "faces": FacesConfig,
    "synth": SynthConfig,
    "prepare": PrepareConfig,
    "validate": ValidationConfig,
    "stats": StatsConfig,
}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_params_sections_are_the_typed_configs(section: str) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())[section]
    cls = SECTIONS[section]
    fields = {f.name for f in dataclasses.fields(cls)} | STAGE_KEYS.get(section, set())
    assert set(params) == fields
    cfg = from_dict(cls, {k: v for k, v in params.items() if k not in STAGE_KEYS.get(section, set())})
    assert isinstance(cfg, cls)
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][section]
    assert section in stage["params"]


def test_faces_params_are_the_defaults_of_the_personal_split() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())["faces"]
    defaults = FacesConfig()
    assert params["personal_holdout"] == defaults.personal_holdout
    assert params["personal_gap"] == defaults.personal_gap >= 24  # a second of her 24 fps recording
    outs = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["faces"]["outs"]
    assert {"data/faces/general", "data/faces/personal"} <= set(outs)
