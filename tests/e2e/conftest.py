"""Tier `e2e`: End to end: the whole local pipeline, TorchServe over HTTP, the gated canary, the KServe
canary step. Every test here gets the `e2e` marker."""

from tests.helpers.tiers import mark_tier


def pytest_collection_modifyitems(items):
    mark_tier(items, __file__)
