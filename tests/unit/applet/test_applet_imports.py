"""The applet imports only gi and the standard library, and its logic not even gi.

So it runs with Debian's /usr/bin/python3 + python3-gi as well as in the
venv, and the pure modules are testable without typelibs or a display.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

APPLET = Path(__file__).resolve().parents[3] / "phyllod" / "applet"
PURE = ("views", "actions", "menu", "notices")


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_gi_and_the_standard_library():
    for path in APPLET.glob("*.py"):
        foreign = {n for n in imported(path)
                   if n not in sys.stdlib_module_names and n not in ("gi", "phyllod")}
        assert not foreign, f"{path.name} imports {foreign}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("phyllod"):
                assert node.module in ("phyllod", "phyllod.applet") or node.module.startswith(
                    "phyllod.applet."), f"{path.name} imports {node.module}"


def test_the_logic_needs_no_gi():
    code = ("import sys\n"
            + "".join(f"import phyllod.applet.{m}\n" for m in PURE)
            + "assert 'gi' not in sys.modules, sorted(m for m in sys.modules if 'gi' in m)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=APPLET.parents[1], timeout=60, check=False)
    assert done.returncode == 0, done.stderr
