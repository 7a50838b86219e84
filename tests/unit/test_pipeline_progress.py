"""The local run's progress view, fed the lines kfp.local prints (ANSI colours included)."""

import io

from rich.console import Console

from pipelines import progress as progress_mod
from pipelines.progress import RunProgress, failure_message

CYAN, GREEN, RED, RESET = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[0m"


def kfp_lines(task: str, body: list[str], status: str = "SUCCESS") -> str:
    color = GREEN if status == "SUCCESS" else RED
    lines = [f"05:31:44.100 - INFO - Executing task {CYAN}'{task}'{RESET}", "05:31:44.100 - INFO - Streamed logs:", ""]
    lines += [f"    {b}" for b in body]
    lines += [f"05:31:54.600 - INFO - Task {CYAN}'{task}'{RESET} finished with status {color}{status}{RESET}"]
    return "\n".join(lines) + "\n"


def test_tasks_labels_log_and_failure(tmp_path, monkeypatch):
    out = io.StringIO()
    log = tmp_path / "pipeline.log"
    monkeypatch.setattr(progress_mod, "HEARTBEAT_S", 0.0)  # every line is a heartbeat here
    with RunProgress(log, Console(file=out, width=120), total_tasks=3) as p:
        p.write(
            kfp_lines(
                "train-model",
                [
                    '    {"executor": "json"}',
                    "[train] no-extra-kv: python -m iwarp train",
                    "train:  50%|#####     | 10/20",
                ],
            )
        )
        # written in arbitrary pieces, as print() hands them over
        text = kfp_lines("evaluate-model", ["[evaluate] no-extra-kv: python -m iwarp evaluate"])
        for i in range(0, len(text), 17):
            p.write(text[i : i + 17])
        p.write(
            kfp_lines(
                "data-gate",
                [
                    "Traceback (most recent call last):",
                    '  File "x.py", line 1',
                    "RuntimeError: data validation failed, stopping the pipeline:",
                    "- [too_short] expect_column_values_to_be_between(num_frames): videos: a, b",
                ],
                status="FAILURE",
            )
        )
    shown = out.getvalue()
    assert [t.title for t in p.tasks] == ["train-model (no-extra-kv)", "evaluate-model (no-extra-kv)", "data-gate"]
    assert [t.status for t in p.tasks] == ["SUCCESS", "SUCCESS", "FAILURE"]
    assert "[1/3] ✓ train-model (no-extra-kv) success" in shown
    assert "✗ data-gate failure" in shown
    assert "… train-model (no-extra-kv): train:  50%" in shown  # heartbeat with the latest line
    assert "executor" not in shown  # KFP's JSON plumbing stays in the log file only
    (failed,) = p.failed_tasks()
    assert failure_message(failed).splitlines() == [
        "RuntimeError: data validation failed, stopping the pipeline:",
        "- [too_short] expect_column_values_to_be_between(num_frames): videos: a, b",
    ]
    full = log.read_text()
    assert '{"executor": "json"}' in full and "RuntimeError" in full and "\x1b[96m" in full  # complete, raw


def test_printed_links_are_never_wrapped_or_marked_up():
    """A copied link must work: no hard wrap at the console width, brackets kept."""
    import io

    from rich.console import Console

    from pipelines.local_run import compare_url, print_link

    out = io.StringIO()
    url = compare_url("http://127.0.0.1:5000", "1", [f"{i:032x}" for i in range(4)])
    print_link(Console(file=out, width=40, force_terminal=False), "  compare runs:", url)
    assert out.getvalue() == f"  compare runs: {url}\n" and len(url) > 100


def test_a_cache_hit_is_shown_as_a_task_reused_from_an_earlier_attempt(tmp_path):
    """kfp.local logs a cache hit (at INFO, outside the log context it prints through): the
    view counts the task as done and says it was reused; `reused()` / `executed()` tell them apart."""
    import logging

    out = io.StringIO()
    with RunProgress(tmp_path / "pipeline.log", Console(file=out, width=120), total_tasks=2) as p:
        logging.getLogger("kfp.local.orchestrator").info("Task train-model cache hit (key=0123456789ab); skipping.")
        p.write(kfp_lines("evaluate-model", ["[evaluate] full: python -m iwarp evaluate"]))
    shown = out.getvalue()
    assert "[1/2] ↺ train-model reused (finished in an earlier attempt)" in shown
    assert "[2/2] ✓ evaluate-model (full) success" in shown
    assert p.reused() == ["train-model"] and p.executed() == ["evaluate-model"]
    assert logging.getLogger().level == logging.WARNING  # the root logger is as it was
