#!/usr/bin/env bash
# The whole test suite, slow end-to-end tests included (CI runs exactly this via `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/k8s-deps.sh
export PATH="$PWD/.venv/bin:$PATH"
# Lint and type-check first: a finding fails the run before the long pytest starts (config: pyproject.toml).
python -m ruff check .
python -m ruff format --check .
python -m mypy
# Exit 5 ("no tests collected") is a failure here, as every non-zero exit is.
# Two workers (pytest-xdist), one test module at a time each (`loadscope`: a module's shared
# fixtures, such as the pipeline's full run, are built once). Much of the suite waits on servers,
# outages and timeouts, so the second worker fills that time; the slowest modules go first
# (tests/conftest.py orders them; xdist would otherwise order modules by their number of tests).
exec python -m pytest -v --durations=30 -n "${IWARP_TEST_WORKERS:-2}" --dist loadscope --no-loadscope-reorder "$@"
