import os

# Tests run on the CPU; keep XLA from grabbing every core for one tiny op.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

# Module fixtures that meta-train or run a whole suite make every test that uses them slow.
_SLOW_FIXTURES = {"smoke_eval", "smoke_run", "short_run"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
