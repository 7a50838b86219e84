#!/usr/bin/env bash
# The whole test suite, slow end-to-end tests included (CI runs exactly this via `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/k8s-deps.sh
export PATH="$PWD/.venv/bin:$PATH"
# One OpenMP thread per process: the two workers already fill both cores, and torch's default
# (a thread per core in every process) oversubscribes them; spinning threads under contention
# run several times slower (tests/model pins this in-process too).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Lint first: a finding fails the run before the long pytest starts (config: pyproject.toml).
python -m ruff check .
python -m ruff format --check .
# The type check (~45 s on one core) runs beside pytest's first minutes. A finding prints mypy's
# report and interrupts pytest at once (SIGINT: fixtures tear down, services stop); either
# failing fails the run.
(
  log=$(mktemp)
  if python -m mypy >"$log" 2>&1; then
    cat "$log" && rm -f "$log"
  else
    cat "$log" && rm -f "$log"
    echo "mypy found type errors: stopping the tests" >&2
    pkill -INT -P $$ -f "python -m pytest" || true
    exit 1
  fi
) &
typing=$!
# Exit 5 ("no tests collected") is a failure here, as every non-zero exit is.
# Two workers (pytest-xdist), one test module at a time each (`loadscope`: a module's shared
# fixtures, such as the pipeline's full run, are built once). Much of the suite waits on servers,
# outages and timeouts, so the second worker fills that time; the slowest modules go first
# (tests/conftest.py orders them; xdist would otherwise order modules by their number of tests).
rc=0
python -m pytest -v --durations=30 -n "${IWARP_TEST_WORKERS:-2}" --dist loadscope --no-loadscope-reorder "$@" || rc=$?
if ! wait "$typing" && [[ $rc == 0 ]]; then rc=1; fi
exit "$rc"
