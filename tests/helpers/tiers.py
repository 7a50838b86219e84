"""Each tier folder's conftest.py marks its tests with the folder's name (`-m unit`, `-m "not e2e"`)."""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "data", "model", "integration", "e2e")  # registered in pyproject.toml


def mark_tier(items: list[pytest.Item], conftest_file: str) -> None:
    """Add the tier marker to the items under the conftest's folder. pytest calls every
    conftest's pytest_collection_modifyitems with all items, so each tier keeps to its own."""
    folder = Path(conftest_file).resolve().parent
    tier = folder.name
    assert tier in TIERS, f"{folder} is not a test tier ({', '.join(TIERS)})"
    for item in items:
        if item.path.is_relative_to(folder):
            item.add_marker(getattr(pytest.mark, tier))
