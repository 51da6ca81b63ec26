import json
import os
import sys
import time
from pathlib import Path

# Tests import their helpers (tests/unit/support/factories.py,
# tests/integration/support/...) as plain modules; pytest runs with
# --import-mode=importlib. tests/lab/conftest.py adds tests/lab/support.
for sub in ("unit", "integration"):
    sys.path.insert(0, str(Path(__file__).parent / sub / "support"))

import pytest  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """Keep each phase's report on the item so fixtures can dump logs on failure."""
    outcome = yield
    setattr(item, f"rep_{call.when}", outcome.get_result())
    return None


class Reliability:
    """Figures a reliability test produced, for docs/reliability.md (bench/reliability.py).

    A test calls ``record(...)`` once its checks passed; the figures go, one
    JSON line per case, to $PHYLLOD_RELIABILITY_DIR (when bench/reliability.py
    runs the suite), else nowhere. ``size(fast, soak)`` is how many inputs,
    cycles or devices a test uses: the fast count in CI, the soak count with
    ``bench/reliability.py --soak`` (PHYLLOD_SOAK=1).
    """

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.soak = os.environ.get("PHYLLOD_SOAK") == "1"
        out = os.environ.get("PHYLLOD_RELIABILITY_DIR")
        self.path = Path(out) / "results.jsonl" if out else None

    def size(self, fast: int, soak: int) -> int:
        return soak if self.soak else fast

    def record(self, case: str, **figures: object) -> None:
        if self.path is None:
            return
        line = {"case": case, "test": self.nodeid, "soak": self.soak, "at": time.time(),
                "figures": figures}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Reliability:
    return Reliability(request.node.nodeid)
