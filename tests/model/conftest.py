"""Tier `model`: Behavioural model tests: the network's properties, losses, metrics, and the training
loop (resume, init, DDP, evaluate/animate). Every test here gets the `model` marker."""

from tests.helpers.tiers import mark_tier


def pytest_collection_modifyitems(items):
    mark_tier(items, __file__)
