"""Plain helper modules the tests import (`from tests.helpers.train import ...`); no tests here,
and no test module ever imports another test module (tests/unit/test_architecture.py checks)."""
