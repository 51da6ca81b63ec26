import sys
from pathlib import Path

# Tests import their helpers (tests/unit/factories.py, tests/integration/...)
# as plain modules; pytest runs with --import-mode=importlib.
for sub in ("unit", "integration"):
    sys.path.insert(0, str(Path(__file__).parent / sub))

import pytest  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """Keep each phase's report on the item so fixtures can dump logs on failure."""
    outcome = yield
    setattr(item, f"rep_{call.when}", outcome.get_result())
    return None
