"""Canary decision rules (pure logic, no server): the same `decide` drives the TorchServe
canary and the KServe rollout, so each rule is checked on its own."""

from __future__ import annotations

import math

import pytest

from serving.canary import (
    CanaryThresholds,
    VersionStats,
    decide,
    evidence_repeats,
    next_traffic_percent,
    percentile,
    with_failed_check,
    worker_restarts,
)
from serving.config import load_thresholds


def stats(version="1.0", n=10, err=0.0, p95=100.0, **quality):
    return VersionStats(
        version=version, n_requests=n, error_rate=err, p95_latency_ms=p95, quality=quality or {"l1": 0.1}
    )


def test_identical_versions_promote():
    t = CanaryThresholds()
    v = decide(stats("1.0"), stats("2.0"), t)
    assert v.promote and v.action == "promote"
    assert all(ch.passed for ch in v.checks)
    assert "PROMOTE" in v.summary() and "2.0" in v.summary()


def test_a_worker_restart_during_the_canary_vetoes_promotion():
    """Answers that all succeeded (requests queued behind TorchServe's restart) still do not
    promote when a worker died: the evidence is incomplete."""
    good = decide(stats("1.0"), stats("2.0"), CanaryThresholds())
    assert good.promote
    same = worker_restarts({"1.0": [11], "2.0": [22]}, {"1.0": [11], "2.0": [22]}, ["1.0", "2.0"])
    assert same.passed
    for after in ({"1.0": [11], "2.0": [23]}, {"1.0": [12], "2.0": [22]}, {"1.0": [11], "2.0": []}):
        check = worker_restarts({"1.0": [11], "2.0": [22]}, after, ["1.0", "2.0"])
        assert not check.passed and "restarted during the canary" in check.detail
        vetoed = with_failed_check(good, check)
        assert not vetoed.promote and vetoed.action == "rollback"
        assert vetoed.reasons == [f"worker restarts: {check.detail}"] and "[FAIL] worker restarts" in vetoed.summary()


def test_quality_regression_beyond_tolerance_rolls_back():
    t = CanaryThresholds(max_quality_regression={"l1": 0.05})
    assert decide(stats(l1=0.100), stats("2", l1=0.1049), t).promote
    v = decide(stats(l1=0.100), stats("2", l1=0.120), t)
    assert not v.promote
    assert any(r.startswith("quality l1") for r in v.reasons)
    assert "ROLL BACK" in v.summary()


def test_higher_is_better_metric_direction():
    t = CanaryThresholds(max_quality_regression={"psnr": 0.02})
    assert decide(stats(psnr=30.0), stats("2", psnr=31.0), t).promote
    assert not decide(stats(psnr=30.0), stats("2", psnr=29.0), t).promote


def test_missing_metric_blocks_promotion():
    t = CanaryThresholds(max_quality_regression={"l1": 0.05, "lpips": 0.05})
    v = decide(stats(l1=0.1), stats("2", l1=0.1), t)
    assert not v.promote and any("lpips" in r and "missing" in r for r in v.reasons)


def test_errors_latency_and_evidence():
    t = CanaryThresholds(max_error_rate=0.1, max_p95_latency_ratio=1.5, min_requests=4)
    assert not decide(stats(), stats("2", err=0.2), t).promote
    assert decide(stats(), stats("2", err=0.1), t).promote
    v = decide(stats(p95=100.0), stats("2", p95=151.0), t)
    assert not v.promote and any("p95" in r for r in v.reasons)
    assert not decide(stats(n=3), stats("2", n=3), t).promote
    capped = CanaryThresholds(max_p95_latency_ms=120.0)
    assert not decide(stats(p95=100.0), stats("2", p95=130.0), capped).promote


def test_all_failures_are_reported_together():
    v = decide(stats(), stats("2", err=1.0, p95=1e6, l1=9.0), CanaryThresholds())
    names = {r.split(":")[0] for r in v.reasons}
    assert {"evidence", "error rate", "quality l1", "p95 latency"} <= names
    d = v.to_dict()
    assert d["action"] == "rollback" and d["candidate"]["version"] == "2"


def test_from_samples_and_percentile():
    s = VersionStats.from_samples("3", [10, 20, 30, 40, 1000], errors=1, quality_samples={"l1": [0.1, 0.3]})
    assert s.n_requests == 5 and s.n_errors == 1 and math.isclose(s.error_rate, 0.2)
    assert math.isclose(s.quality["l1"], 0.2)
    assert math.isclose(percentile([1, 2, 3, 4], 50), 2.5)
    assert math.isclose(s.p95_latency_ms, 40 + 0.8 * 960)
    assert math.isnan(percentile([], 95))


def test_traffic_steps():
    ok = decide(stats(), stats("2"), CanaryThresholds())
    bad = decide(stats(), stats("2", err=1.0), CanaryThresholds())
    assert [next_traffic_percent(ok, c) for c in (0, 10, 50, 100)] == [10, 50, 100, 100]
    assert next_traffic_percent(bad, 50) == 0


def test_thresholds_from_yaml(tmp_path):
    full = load_thresholds(overrides=["canary.max_p95_latency_ratio=2.0"])
    assert full.max_p95_latency_ratio == 2.0 and "l1" in full.max_quality_regression
    own = tmp_path / "t.yaml"
    own.write_text("max_error_rate: 0.25\nmin_requests: 2\n")
    t = load_thresholds(own)
    assert t.max_error_rate == 0.25 and t.min_requests == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_eror_rate: 0.25\n")
    from iwarp.config import ConfigError

    with pytest.raises(ConfigError):
        load_thresholds(bad)


def test_canary_set_from_a_dataset_test_split(tmp_path):
    """`iwarp serve canary-set`: one self-reenactment case per held-out video."""
    from iwarp.data import SynthConfig, make_synth_dataset
    from serving.canary_set import CanarySetError, build_from_dataset, load_canary_set

    make_synth_dataset(
        tmp_path / "data",
        SynthConfig(num_identities=4, videos_per_identity=1, num_frames=14, image_size=32, test_fraction=0.5),
        progress=False,
    )
    out = build_from_dataset(tmp_path / "data", tmp_path / "canary", k=2, n_driving=4, stride=2, image_size=32)
    cases = load_canary_set(out)
    test_videos = sorted(p.name for p in (tmp_path / "data" / "test").iterdir())
    assert len(cases) == len(test_videos) == 2
    for case in cases:
        assert len(case.sources) == 2 and len(case.driving) == 4
        assert case.sources[0].shape == (32, 32, 3) and case.ground_truth().shape == (4, 3, 32, 32)
        assert any(v in case.name for v in test_videos)
    assert len(load_canary_set(out, max_cases=1)) == 1
    with pytest.raises(CanarySetError, match="not a folder"):
        load_canary_set(tmp_path / "missing")


def test_first_deployment_has_no_baseline_and_must_answer_everything():
    """decide(None, ...) is a first deployment: no comparison, but every case must succeed."""
    t = CanaryThresholds()
    ok = decide(None, stats("1.0"), t)
    assert ok.promote and ok.baseline is None
    assert "first deployment" in ok.summary()
    failing = decide(None, stats("1.0", err=0.1), t)
    assert not failing.promote
    assert any(r.startswith("error rate") for r in failing.reasons)
    too_few = decide(None, stats("1.0", n=t.min_requests - 1), t)
    assert not too_few.promote and any(r.startswith("evidence") for r in too_few.reasons)


def test_first_deployment_report_round_trips_through_the_kserve_cli(tmp_path):
    """The report `iwarp serve canary` writes for a first deployment (baseline null) is accepted
    by `iwarp deploy kserve --report`, which re-decides it with the same rule."""
    import json

    from deploy.cli import verdict_from_report

    report = tmp_path / "canary.json"
    report.write_text(json.dumps(decide(None, stats("1.0"), CanaryThresholds()).to_dict()))
    again = verdict_from_report(report)
    assert again.promote and again.baseline is None and again.candidate.version == "1.0"
    report.write_text(json.dumps(decide(None, stats("1.0", err=0.5), CanaryThresholds()).to_dict()))
    assert not verdict_from_report(report).promote


def test_evidence_repeats_reach_min_requests_from_a_small_set():
    t = CanaryThresholds(min_requests=4)
    assert evidence_repeats(3, 1, t) == 2  # 3 cases x 2 >= 4
    assert evidence_repeats(1, 1, t) == 4
    assert evidence_repeats(8, 1, t) == 1  # enough cases: configured repeats stand
    assert evidence_repeats(3, 5, t) == 5  # never fewer than configured
    assert evidence_repeats(0, 1, t) == 4  # an empty set still asks for the full evidence


def test_stop_server_without_a_server_creates_no_folders(tmp_path):
    """Stopping where nothing runs finds nothing to stop and leaves the folder as it was,
    also for a workdir long enough to need a short socket folder elsewhere."""
    from serving.server import stop_server

    for workdir in (tmp_path / "short", tmp_path / ("long-" + "x" * 120)):
        workdir.mkdir()
        assert stop_server(workdir) is False
        assert list(workdir.iterdir()) == []


def test_the_canary_sends_crops_and_still_reaches_a_version_older_than_the_frame_field():
    """Canary cases are face crops (frame=none); a version packaged before `frame` existed
    refuses the field, is asked without it, and only once."""
    from types import SimpleNamespace

    from serving.client import ServeError
    from serving.rollout import predict_crops

    calls = []

    class Client:
        def predict(self, sources, driving, *, version, frame=None):
            calls.append((version, frame))
            if version == "old" and frame is not None:
                raise ServeError(400, "unknown field `frame`")
            if version == "broken":
                raise ServeError(400, "`sources[0]` is not an image")
            return version

    case, legacy = SimpleNamespace(sources=["s"], driving=["d"]), set()
    assert predict_crops(Client(), case, "new", legacy) == "new" and calls[-1] == ("new", "none")
    assert predict_crops(Client(), case, "old", legacy) == "old" and legacy == {"old"}
    assert predict_crops(Client(), case, "old", legacy) == "old"
    assert calls == [("new", "none"), ("old", "none"), ("old", None), ("old", None)]
    with pytest.raises(ServeError, match="not an image"):  # any other 400 is the version's error
        predict_crops(Client(), case, "broken", legacy)


def test_the_client_remembers_that_a_version_cannot_be_watched(monkeypatch):
    """Several workers (or one on another machine) cannot be watched for lost requests: the
    client asks the management API once per `recheck_s`, not before every prediction; a
    version with no worker yet (starting) is asked again next time."""
    from types import SimpleNamespace

    from serving.client import TorchServeClient

    client = TorchServeClient(SimpleNamespace(management_url="http://127.0.0.1:9"))
    asked, answer = [], {"workers": [{"pid": 1}, {"pid": 2}]}

    def side(kind, method, url, **kwargs):
        asked.append(url)
        return SimpleNamespace(status_code=200, json=lambda: [{"modelVersion": "1.0", **answer}])

    monkeypatch.setattr(client, "_side", side)
    assert [client._worker(None) for _ in range(3)] == [None] * 3
    assert len(asked) == 1
    monkeypatch.setattr(client.watch, "recheck_s", 0.0)
    client._worker(None)
    assert len(asked) == 2  # the verdict expired: asked again
    monkeypatch.setattr(client.watch, "recheck_s", 30.0)
    answer = {"workers": []}
    client._unwatchable.clear()
    client._worker("2.0")
    client._worker("2.0")
    assert len(asked) == 4  # no worker yet: no lasting verdict
