"""Tier `integration`: One real component at a time: MLflow server, TorchServe's handler, S3, the
Kubeflow SDKs, kfp CLI; faults injected into them. Every test here gets the `integration` marker."""

from tests.helpers.tiers import mark_tier


def pytest_collection_modifyitems(items):
    mark_tier(items, __file__)
