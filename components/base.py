"""What every iwarp KFP component runs on: one container image and exact package pins.

All components share the image built from the repository's `Dockerfile` (iwarp, serving,
components and pipelines installed, plus every pin of `requirements/lock.txt`). Each
component still lists the packages it imports itself, pinned exactly as in the lock
(`tests/unit/test_pipeline_compile.py` checks they agree): in the image pip only confirms
them, and a reader of the compiled YAML sees what each step depends on.
"""

from __future__ import annotations

import os

# Built and pushed by users (`docker build -t REGISTRY/iwarp:0.1.0 .`); override at compile
# time with `iwarp pipeline compile --image ...` or $IWARP_IMAGE.
DEFAULT_IMAGE = "ghcr.io/iwarp/iwarp:0.1.0"
IMAGE = os.environ.get("IWARP_IMAGE", DEFAULT_IMAGE)

KFP = "kfp==2.17.3"
KFP_KUBERNETES = "kfp-kubernetes==2.17.3"
KUBEFLOW_SDK = "kubeflow==0.5.0"
MLFLOW = "mlflow==3.17.2"
DVC = "dvc==3.67.1"
DVC_S3 = "dvc-s3==3.3.0"
BOTO3 = "boto3==1.43.117"
GREAT_EXPECTATIONS = "great_expectations==1.24.1"
TORCH_MODEL_ARCHIVER = "torch-model-archiver==0.12.0"
TORCHSERVE = "torchserve==0.12.0"
REQUESTS = "requests==2.33.0"
MATPLOTLIB = "matplotlib==3.11.2"
PANDAS = "pandas==3.1.1"

# Per step: what its body imports beyond iwarp itself (which only the image provides).
DATA_PACKAGES = [DVC, DVC_S3, BOTO3, GREAT_EXPECTATIONS, PANDAS]
TRAIN_PACKAGES = [MLFLOW, KUBEFLOW_SDK, BOTO3]
EVAL_PACKAGES = [MLFLOW]
REPORT_PACKAGES = [MLFLOW, MATPLOTLIB, PANDAS]
REGISTRY_PACKAGES = [MLFLOW]
SERVING_PACKAGES = [MLFLOW, TORCH_MODEL_ARCHIVER, TORCHSERVE, REQUESTS, BOTO3]

ALL_PINS = sorted(
    {
        *DATA_PACKAGES,
        *TRAIN_PACKAGES,
        *EVAL_PACKAGES,
        *REPORT_PACKAGES,
        *REGISTRY_PACKAGES,
        *SERVING_PACKAGES,
        KFP,
        KFP_KUBERNETES,
    }
)
