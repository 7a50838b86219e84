"""Progress of a local pipeline run, read off the KFP local runner's own output.

`kfp.local` prints "Executing task 'x'" / "Task 'x' finished with status S" and streams
every task's output through `print`. `RunProgress` stands in for `sys.stdout` while the
pipeline runs: it keeps the complete log in a file and turns those lines into a live task
list (rich) on a terminal, or one line per task event elsewhere (CI logs, pipes).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import re
import threading
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

HEARTBEAT_S = 30.0
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_START = re.compile(r"Executing task '(?P<name>[^']+)'")
_END = re.compile(r"Task '(?P<name>[^']+)' finished with status (?P<status>[A-Z]+)")
# kfp.local's task cache: in a resumed run, a task an earlier attempt finished is not run again.
_CACHED = re.compile(r"Task '?(?P<name>[\w.-]+)'? cache hit")
REUSED = "REUSED"  # a task's status when its outputs came from an earlier attempt
_LABEL = re.compile(r"^\s*\[(?:train|evaluate)\] (?P<label>[\w.-]+):")
# Lines not worth showing as a task's latest activity (executor plumbing, JSON dumps).
_NOISE = re.compile(r"^\s*(\[KFP Executor|[{}\[\]\"]|Streamed logs|Task '|Executing task|$)")


@dataclasses.dataclass
class TaskState:
    name: str
    started: float
    ended: float | None = None
    status: str = "RUNNING"
    label: str = ""
    last_line: str = ""
    tail: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=40))

    @property
    def title(self) -> str:
        return f"{self.name} ({self.label})" if self.label else self.name

    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started


class RunProgress(io.TextIOBase):
    """A write-only text stream: full log to `log_path`, task progress to `console`."""

    def __init__(self, log_path: Path, console: Console, total_tasks: int, verbose: bool = False):
        super().__init__()
        self.log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (closed in __exit__)
        # Bound to the stream the caller's console writes to *now*: while the run goes, sys.stdout
        # is this object, and a console following sys.stdout would write into itself.
        self.console = Console(
            file=console.file,
            width=console.width,
            force_terminal=console.is_terminal,
            no_color=console.no_color,
            highlight=False,
        )
        self.verbose = verbose
        self.tasks: list[TaskState] = []
        self.total = total_tasks
        self._lock = threading.Lock()
        self._buf = ""
        self._t0 = time.monotonic()
        self._last_beat = time.monotonic()
        self.live = console.is_terminal and not verbose
        self._bar = Progress(
            SpinnerColumn(),
            TextColumn("[bold]iwarp pipeline"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tasks"),
            TimeElapsedColumn(),
            console=console,
        )
        self._bar_task = self._bar.add_task("pipeline", total=total_tasks)
        self._live: Live | None = None

    # ------------------------------------------------------------------ stream API
    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        with self._lock:
            self.log.write(s)
            self._buf += s
            *lines, self._buf = self._buf.split("\n")
            for line in lines:
                self._line(ANSI.sub("", line).replace("\r", ""))
        return len(s)

    def flush(self) -> None:
        self.log.flush()

    # ------------------------------------------------------------------ display
    def __enter__(self) -> RunProgress:
        # kfp.local logs a cache hit (a task an earlier attempt finished) outside the log context
        # it prints through, at INFO: pass those records on as lines of this stream.
        self._hits = _CacheHits(self)
        root = logging.getLogger()
        self._root_level = root.level
        root.addHandler(self._hits)
        root.setLevel(min(root.level or logging.WARNING, logging.INFO))
        if self.live:
            self._live = Live(
                self._render(),
                console=self.console,
                refresh_per_second=4,
                get_renderable=self._render,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        root = logging.getLogger()
        root.removeHandler(self._hits)
        root.setLevel(self._root_level)
        if self._live:
            self._live.stop()
        self.log.close()

    def _running(self, name: str) -> TaskState | None:
        return next((t for t in self.tasks if t.name == name and t.ended is None), None)

    def _line(self, line: str) -> None:
        if self.verbose:
            self.console.print(Text(line), soft_wrap=True)
        if m := _START.search(line):
            self.tasks.append(TaskState(m["name"], time.monotonic()))
            if not self.live and not self.verbose:
                self._event(f"▶ {m['name']}")
            return
        if m := _CACHED.search(line):
            now = time.monotonic()
            self.tasks.append(TaskState(m["name"], now, ended=now, status=REUSED))
            self._bar.advance(self._bar_task)
            if not self.live and not self.verbose:
                self._event(f"↺ {m['name']} reused (finished in an earlier attempt)")
            return
        if m := _END.search(line):
            task = self._running(m["name"])
            if task:
                task.ended, task.status = time.monotonic(), m["status"]
                if task.status == "SUCCESS":
                    self._bar.advance(self._bar_task)
                if not self.live and not self.verbose:
                    mark = "✓" if task.status == "SUCCESS" else "✗"
                    self._event(f"{mark} {task.title} {task.status.lower()} in {task.elapsed():.1f} s")
            return
        running = [t for t in self.tasks if t.ended is None]
        if not running:
            return
        current = running[-1]
        if m := _LABEL.match(line):
            current.label = current.label or m["label"]
        if not _NOISE.match(line):
            current.last_line = line.strip()[:160]
            current.tail.append(line.strip())
            # Without a live view (CI logs, pipes), a heartbeat keeps long steps visibly moving.
            if not self.live and not self.verbose and time.monotonic() - self._last_beat > HEARTBEAT_S:
                self._last_beat = time.monotonic()
                self._event(f"… {current.title}: {current.last_line}")

    def _event(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        done = sum(1 for t in self.tasks if t.status in ("SUCCESS", REUSED))
        self.console.print(f"[dim]{stamp}[/] [{done}/{self.total}] {text}", highlight=False)

    def _render(self):
        table = Table.grid(padding=(0, 2))
        for t in self.tasks[-14:]:
            mark = {"SUCCESS": "[green]✓[/]", REUSED: "[cyan]↺[/]", "RUNNING": "[yellow]…[/]"}.get(
                t.status, "[red]✗[/]"
            )
            last = Text(t.last_line if t.ended is None else "", style="dim")
            took = "reused" if t.status == REUSED else f"{t.elapsed():6.1f} s"
            table.add_row(mark, t.title, took, last)
        return Group(self._bar, table)

    def note(self, text: str) -> None:
        """A message of the driver itself (outside any task), logged and shown."""
        with self._lock:
            self.log.write(text + "\n")
        if self._live:
            self._live.console.print(text)
        else:
            self.console.print(text)

    def failed_tasks(self) -> list[TaskState]:
        return [t for t in self.tasks if t.status not in ("SUCCESS", REUSED, "RUNNING")]

    def reused(self) -> list[str]:
        return [t.name for t in self.tasks if t.status == REUSED]

    def executed(self) -> list[str]:
        return [t.name for t in self.tasks if t.status != REUSED]


class _CacheHits(logging.Handler):
    """kfp.local's "Task x cache hit" records, written to a RunProgress as log lines."""

    def __init__(self, stream: RunProgress):
        super().__init__(logging.INFO)
        self.stream = stream
        self.addFilter(lambda record: _CACHED.search(record.getMessage()) is not None)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.write(record.getMessage() + "\n")


_EXCEPTION = re.compile(r"^[A-Za-z_.]*(Error|Exception|Unavailable)\b:?")


def failure_message(task: TaskState) -> str:
    """The exception a failed task ended with (its message lines), else its last lines."""
    lines = list(task.tail)
    starts = [i for i, line in enumerate(lines) if _EXCEPTION.match(line)]
    return "\n".join(lines[starts[-1] :] if starts else lines[-8:])
