"""The test suite, in tiers (see tests/conftest.py); a package so helpers import as `tests.helpers.x`."""
