"""What each pipeline step does, as plain functions the KFP components in `components/`
call. Kept apart from the component definitions because inside a running KFP task
`kfp.dsl` is the slim runtime package without `dsl.component`: a step's body can import
these modules, not the ones that declare components.

A local run's driver puts its pid in `IWARP_DRIVER_PID`. Every task (on the first import of a
step module) then watches it and ends when the driver is gone, and the processes a task starts
end with the task (`die_with_parent` as their `preexec_fn`): a driver killed with `kill -9`
leaves no training writing into the folders a resumed run continues. (kfp.local starts each
task under two shells, so the task cannot rely on its parent's death.)
"""

import os
import signal
import threading
import time

DRIVER_PID_ENV = "IWARP_DRIVER_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Linux: SIGTERM to this process when its parent exits (a training saves a checkpoint on
    it). Elsewhere nothing."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _watch(pid: int, every_s: float = 1.0) -> None:
    while True:
        time.sleep(every_s)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(143)  # as SIGTERM would; what this task started gets its SIGTERM (die_with_parent)
        except PermissionError:
            pass  # alive, another user's: not ours to judge


if os.environ.get(DRIVER_PID_ENV, "").isdigit():
    threading.Thread(target=_watch, args=(int(os.environ[DRIVER_PID_ENV]),), name="driver-watch", daemon=True).start()
