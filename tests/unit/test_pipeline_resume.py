"""What `iwarp pipeline run --resume` continues, and what it refuses (one line each), and how a
step waits for an MLflow answer it needs. The resume itself runs in tests/e2e/test_pipeline_e2e.py."""

import json
import os
import time

import pytest

from iwarp.errors import InputError, ServiceUnavailable
from pipelines.local_run import DRIVER, RESULT, LocalRunResult, resume_target


def make_run(home, name: str, args: dict, result: dict | None = None, driver: int | None = None):
    run = home / "runs" / name
    run.mkdir(parents=True)
    (run / "arguments.json").write_text(json.dumps({**args, "work_dir": str(run / "work")}))
    if result is not None:
        (run / RESULT).write_text(json.dumps(result))
    if driver is not None:
        (run / DRIVER).write_text(json.dumps({"pid": driver}))
    return run


def test_resume_takes_the_newest_unfinished_run_given_the_same_options(tmp_path):
    args = {"train_steps": 10, "data_source": "faces"}
    make_run(tmp_path, "20260101-000000", args)
    newest = make_run(tmp_path, "20260102-000000", args, result={"ok": False})  # failed: resumable
    assert resume_target(tmp_path, args) == newest
    with pytest.raises(InputError, match=r"options run 20260102-000000 was started with \(train_steps: 10 then"):
        resume_target(tmp_path, {**args, "train_steps": 20})


def test_resume_refuses_a_finished_run_a_running_one_and_no_run(tmp_path):
    args = {"train_steps": 10}
    with pytest.raises(InputError, match="no earlier run"):
        resume_target(tmp_path, args)
    make_run(tmp_path, "20260101-000000", args, result={"ok": True})
    with pytest.raises(InputError, match="finished; run without --resume"):
        resume_target(tmp_path, args)
    alive = os.getppid()  # a live process that is not this one
    make_run(tmp_path, "20260102-000000", args, driver=alive)
    with pytest.raises(InputError, match=f"still running \\(driver pid {alive}\\)"):
        resume_target(tmp_path, args)


def test_a_step_failed_on_an_unreachable_service_exits_3():
    failed = LocalRunResult(ok=False, run_dir=None, log=None, mlflow_url="")  # type: ignore[arg-type]
    failed.error = "iwarp.errors.ServiceUnavailable: MLflow at http://x is unreachable: registering iwarp ..."
    assert failed.exit_code == 3
    failed.error = "RuntimeError: training of variant 'full' failed"
    assert failed.exit_code == 1


def test_answered_retries_while_down_then_fails_in_one_line_naming_the_service(monkeypatch):
    import requests

    from components.tracking import WAIT_ENV, answered

    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise requests.ConnectionError("refused")
        return "v7"

    assert answered(flaky, "http://127.0.0.1:9", "registering iwarp") == "v7" and len(calls) == 3
    monkeypatch.setenv(WAIT_ENV, "1")

    def down():
        raise requests.ConnectionError("refused")

    with pytest.raises(ServiceUnavailable, match=r"MLflow at http://127.0.0.1:9 is unreachable: registering iwarp"):
        answered(down, "http://127.0.0.1:9", "registering iwarp")

    def rejected():  # not an outage: no waiting
        raise ValueError("bad name")

    t0 = time.monotonic()
    with pytest.raises(ValueError):
        answered(rejected, "http://127.0.0.1:9", "x")
    assert time.monotonic() - t0 < 0.5


def test_delivery_after_the_run_waits_once_then_names_every_folder_still_pending(tmp_path, monkeypatch, capsys):
    """The driver's final delivery with MLflow still down: one bounded wait (not one per folder),
    nothing sent, and each folder left is named with the command that uploads it later."""
    from components.tracking import DRAIN_ENV, WAIT_ENV, StepLog, deliver_pending, pending_folders, step_folder

    monkeypatch.setenv(DRAIN_ENV, "0")  # the steps end at once, their calls kept in the journals
    monkeypatch.setenv(WAIT_ENV, "1")
    dead = "http://127.0.0.1:9"
    for step in ("evaluate-full", "compare"):
        with StepLog(dead, "0123abcd", step_folder(str(tmp_path), step)) as log:
            log.log_metrics({"l1": 0.25}, step=0)
    folders = pending_folders(tmp_path)
    assert len(folders) == 2
    capsys.readouterr()
    sent, left = deliver_pending(tmp_path, dead)
    out = capsys.readouterr().out
    assert sent == 0 and left == folders
    assert out.count("waiting up to 1 s") == 1  # the second folder did not wait again
    for folder in folders:
        assert f"upload later with: iwarp track sync {folder} --tracking-uri {dead}" in out
