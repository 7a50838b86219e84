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
exec python -m pytest -v --durations=25 "$@"
