"""The applet imports only gi and the standard library, and its logic not even gi.

So it runs with Debian's /usr/bin/python3 + python3-gi as well as in the
venv, and the pure modules are testable without typelibs or a display. Of
phyllod itself it may import only the contract's names and the version: the
phyllod-applet package depends on phyllod, and those two are standard library
only too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

APPLET = Path(__file__).resolve().parents[3] / "phyllod" / "applet"
PURE = ("views", "commands", "menu", "notices")
#: What the applet may import of phyllod outside phyllod/applet/.
ALLOWED = ("phyllod", "phyllod.contract")


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
                assert node.module in (*ALLOWED, "phyllod.applet") or node.module.startswith(
                    "phyllod.applet."), f"{path.name} imports {node.module}"
                if node.module == "phyllod":
                    assert [a.name for a in node.names] == ["__version__"], path.name
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("phyllod") for a in node.names), path.name


def test_the_logic_needs_no_gi():
    code = ("import sys\n"
            + "".join(f"import phyllod.applet.{m}\n" for m in PURE)
            + "assert 'gi' not in sys.modules, sorted(m for m in sys.modules if 'gi' in m)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=APPLET.parents[1], timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_what_it_takes_of_phyllod_is_standard_library_only():
    """phyllod/__init__.py and contract.py ship in the phyllod package and run in the
    applet's interpreter (a distribution's python3, no virtualenv)."""
    for path in (APPLET.parent / "__init__.py", APPLET.parent / "contract.py"):
        foreign = {n for n in imported(path)
                   if n not in sys.stdlib_module_names and n != "__future__"}
        assert not foreign, f"{path.name} imports {foreign}"
    code = ("import sys\nbefore = set(sys.modules)\nimport phyllod.contract\n"
            "loaded = {m.split('.')[0] for m in set(sys.modules) - before}\n"
            "foreign = {m for m in loaded if m not in sys.stdlib_module_names} - {'phyllod'}\n"
            "assert not foreign, foreign\n"
            "assert sorted(m for m in sys.modules if m.startswith('phyllod')) == "
            "['phyllod', 'phyllod.contract'], sorted(sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=APPLET.parents[1], timeout=60, check=False)
    assert done.returncode == 0, done.stderr
