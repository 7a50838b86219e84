"""Tier `unit`: Fast tests of pure functions, configs, manifests and CLI parsing: no service, no
training. Every test here gets the `unit` marker."""

from tests.helpers.tiers import mark_tier


def pytest_collection_modifyitems(items):
    mark_tier(items, __file__)
