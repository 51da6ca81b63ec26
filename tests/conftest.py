import sys
from pathlib import Path

# Tests import their helpers (tests/unit/factories.py, tests/integration/...)
# as plain modules; pytest runs with --import-mode=importlib.
for sub in ("unit", "integration"):
    sys.path.insert(0, str(Path(__file__).parent / sub))
