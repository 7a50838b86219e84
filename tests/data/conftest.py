"""Tier `data`: Data tests: dataset layout, synthetic/real faces, prepare, DVC stages, GE validation,
S3 (moto). Every test here gets the `data` marker."""

from tests.helpers.tiers import mark_tier


def pytest_collection_modifyitems(items):
    mark_tier(items, __file__)
