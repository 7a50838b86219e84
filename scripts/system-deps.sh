#!/usr/bin/env bash
# System packages some tests need beyond Python: headless Chromium (MLflow UI screenshot test) and
# Debian's chromedriver for it (the demo's Selenium browser test, tests/e2e/test_demo_e2e.py).
# Java 17 (TorchServe) and kubectl (Kustomize) come with the machine image.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "[system-deps] missing ${need[*]}; install them (needs root)" >&2; exit 1
  fi
  echo "[system-deps] apt-get install ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
