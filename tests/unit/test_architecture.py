"""The rules of the house (docs/architecture.md, "The rules"), checked over phyllod/'s source.

Each rule is a parametrized test over the modules of one room, read with
``ast`` (nothing is imported), so a broken rule names the module and the
import, with its line. Every import counts: at the top, inside a function or
under ``if TYPE_CHECKING:`` (a type dependency is still a dependency). The
checker itself is tested on small synthetic trees at the end, so a rule that
stopped finding anything would fail here too.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "phyllod"
TOP = "phyllod"
MAX_LINES = 450  # the issue: "no module longer than about 400 lines"

#: The standard library core/ may use: computation over values, nothing that
#: reaches the machine, the clock, the network, threads or the event loop.
#: (``sys`` is for the interpreter's own limits only: see CORE_SYS.)
CORE_STDLIB = frozenset({
    "__future__", "abc", "bisect", "collections", "collections.abc", "copy", "dataclasses",
    "difflib", "enum", "fractions", "functools", "hashlib", "heapq", "ipaddress",
    "itertools", "keyword", "math", "numbers", "operator", "re", "shlex", "statistics",
    "string", "sys", "textwrap", "tomllib", "types", "typing", "unicodedata",
    "xml.etree.ElementTree",
})
#: What core/ may read off ``sys``: limits, never stdin/stdout/argv/exit.
CORE_SYS = frozenset({"get_int_max_str_digits", "maxsize", "float_info", "int_info",
                      "hash_info"})

#: The one library each room is the home of; any other import is the standard
#: library or phyllod itself.
THIRD_PARTY = {
    "core": frozenset(),
    "contract": frozenset(),
    "host": frozenset({"libvirt", "pyudev", "systemd"}),
    "bus": frozenset({"dbus_fast"}),
    "service": frozenset(),
    "cli": frozenset(),
    "ctl": frozenset({"dbus_fast"}),
    "applet": frozenset({"gi"}),
    "package": frozenset(),
}

#: Helpers host/ adapters share: reading a file an attacker may have placed, the trace
#: hook, following sysfs links.
HOST_SHARED = frozenset({"phyllod.host.safe_read", "phyllod.host.trace",
                         "phyllod.host.sysfs_paths"})
#: One adapter written in two files: the second is a part of the first, and
#: only the first may import it.
HOST_ADAPTER_PARTS = {"phyllod.host.sysfs_acs": "phyllod.host.sysfs",
                      "phyllod.host.sysfs_keyboards": "phyllod.host.sysfs",
                      "phyllod.host.udev_devices": "phyllod.host.udev_source",
                      "phyllod.host.usb_sysfs": "phyllod.host.udev_devices",
                      "phyllod.host.uevent_copies": "phyllod.host.udev_source"}
#: What service/ parts share that is no part (no state, no decisions): the
#: fault-injection seams, the journal fields of the daemon's log records, and
#: one-shot timers by key.
SERVICE_SHARED = frozenset({"phyllod.service.fault_points", "phyllod.service.journal",
                            "phyllod.service.timers"})
SERVICE_ROOT = "phyllod.service.root"
CONTRACT = "phyllod.contract"
FOLDERS = ("core", "host", "bus", "service", "ctl", "applet")
#: What phyllodctl may take from the daemon's side: one way to open a bus and
#: the dbus-fast shims (bus/), the pure text helpers (core/).
CTL_FROM_DAEMON = frozenset({"phyllod.bus.connect", "phyllod.bus.compat",
                             "phyllod.core.device_text", "phyllod.core.bounds"})


@dataclass(frozen=True)
class Import:
    """One imported name, absolute: the module, or ``phyllod`` for its ``__version__``."""
    name: str
    line: int


@dataclass(frozen=True, kw_only=True, repr=False)
class Module:
    """One module of the tree, as the rules see it: its imports and its length."""
    name: str
    path: Path
    lines: int
    imports: tuple[Import, ...]
    uses_of_sys: tuple[tuple[str, int], ...]

    def __repr__(self) -> str:
        return self.name

    @property
    def room(self) -> str:
        parts = self.name.split(".")
        if len(parts) == 1:
            return "package"
        if parts[1] in FOLDERS or (len(parts) == 2 and parts[1] in ("contract", "cli")):
            return parts[1]
        return "none"


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_modules(package: Path) -> list[Module]:
    paths = sorted(package.rglob("*.py"))
    known = {module_name(p, package) for p in paths}
    return [read_module(p, module_name(p, package), known) for p in paths]


def read_module(path: Path, name: str, known: set[str]) -> Module:
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(Import(sub if sub in known else base, node.lineno))
    uses = tuple((n.attr, n.lineno) for n in ast.walk(tree)
                 if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                 and n.value.id == "sys")
    return Module(name=name, path=path, lines=len(text.splitlines()),
                  imports=tuple(dict.fromkeys(found)), uses_of_sys=uses)


def first_party(name: str) -> bool:
    return name == TOP or name.startswith(TOP + ".")


def within(name: str, room: str) -> bool:
    return name == f"{TOP}.{room}" or name.startswith(f"{TOP}.{room}.")


def say(module: Module, imp: Import, why: str) -> str:
    return f"{module.name} ({module.path.name}:{imp.line}) imports {imp.name}: {why}"


def outside_libraries(module: Module) -> list[str]:
    """Third-party imports the module's room is not the home of."""
    home = THIRD_PARTY.get(module.room, frozenset())
    out = []
    for i in module.imports:
        library = i.name.split(".")[0]
        if first_party(i.name) or library in sys.stdlib_module_names or library in home:
            continue
        rooms = " / ".join(r for r, libs in THIRD_PARTY.items() if library in libs)
        out.append(say(module, i, f"{library} belongs in {rooms or 'no room'}"))
    return out


def core_rule(module: Module) -> list[str]:
    """core/ is pure: its allow-listed standard library and core/ only."""
    out = outside_libraries(module)
    for i in module.imports:
        if first_party(i.name):
            if not within(i.name, "core"):
                out.append(say(module, i, "core imports nothing outside core"))
        elif i.name.split(".")[0] in sys.stdlib_module_names and i.name not in CORE_STDLIB:
            out.append(say(module, i, "not a pure standard module (core does no I/O, "
                                      "reads no clock, runs no loop)"))
    out += [f"{module.name} ({module.path.name}:{line}) uses sys.{attr}: core reads only "
            f"the interpreter's limits off sys" for attr, line in module.uses_of_sys
            if attr not in CORE_SYS]
    return out


def host_rule(module: Module) -> list[str]:
    """A host/ adapter imports core/ and the shared host helpers, never another adapter."""
    out = outside_libraries(module)
    for i in module.imports:
        if not first_party(i.name) or within(i.name, "core") or i.name in HOST_SHARED:
            continue
        if HOST_ADAPTER_PARTS.get(i.name) == module.name or i.name == module.name:
            continue
        why = ("another host adapter" if within(i.name, "host")
               else "host adapters import core only")
        out.append(say(module, i, why))
    return out


def only(module: Module, allowed: Callable[[str], bool], why: str) -> list[str]:
    """The room's libraries, and of phyllod only the names ``allowed`` accepts."""
    return outside_libraries(module) + [say(module, i, why) for i in module.imports
                                        if first_party(i.name) and not allowed(i.name)]


def bus_rule(module: Module) -> list[str]:
    """bus/ is one adapter: core/, contract and its own modules."""
    return only(module, lambda n: within(n, "core") or within(n, "bus") or n == CONTRACT,
                "bus imports core, contract and bus only")


def service_rule(module: Module) -> list[str]:
    """A service/ part never imports a sibling; the root wires them (not the clients)."""
    out = outside_libraries(module)
    for i in module.imports:
        if not first_party(i.name):
            continue
        if within(i.name, "ctl") or within(i.name, "applet") or i.name == f"{TOP}.cli":
            out.append(say(module, i, "the daemon never imports its clients"))
        elif (module.name != SERVICE_ROOT and within(i.name, "service")
              and i.name not in SERVICE_SHARED and i.name != module.name):
            out.append(say(module, i, "a service part never imports a sibling "
                                      "(the root passes callables)"))
    return out


def ctl_rule(module: Module) -> list[str]:
    """phyllodctl: the contract, its own modules, bus.connect/compat, core's text helpers."""
    return only(module, lambda n: within(n, "ctl") or n in (TOP, CONTRACT)
                or n in CTL_FROM_DAEMON,
                "phyllodctl imports the contract, ctl, bus.connect/compat and core's "
                "text helpers only")


def applet_rule(module: Module) -> list[str]:
    """The applet: gi, the standard library, the contract and phyllod's __version__."""
    return only(module, lambda n: within(n, "applet") or n in (TOP, CONTRACT),
                "the applet imports gi, the standard library, the contract and "
                "__version__ only")


def contract_rule(module: Module) -> list[str]:
    """contract.py, shared by all three programs: the standard library only."""
    return only(module, lambda n: False, "the contract imports the standard library only")


def cli_rule(module: Module) -> list[str]:
    """`phyllod` (cli.py) starts the daemon: anything but the clients."""
    return only(module, lambda n: not (within(n, "ctl") or within(n, "applet")),
                "the daemon's command never imports the clients")


def package_rule(module: Module) -> list[str]:
    """phyllod/__init__.py holds the version and a map: it imports nothing of phyllod."""
    return only(module, lambda n: False, "the package's __init__ imports nothing of phyllod")


RULES: dict[str, Callable[[Module], list[str]]] = {
    "core": core_rule, "host": host_rule, "bus": bus_rule, "service": service_rule,
    "ctl": ctl_rule, "applet": applet_rule, "contract": contract_rule, "cli": cli_rule,
    "package": package_rule,
}


def problems(module: Module) -> list[str]:
    rule = RULES.get(module.room)
    if rule is None:
        return [f"{module.name} is in no room (core, host, bus, service, ctl, applet, "
                f"contract, cli)"]
    return rule(module)


MODULES = read_modules(PACKAGE)


#: Each room's rule, by the name its test cases carry.
RULE_NAMES = {
    "core": "core is pure",
    "host": "a host adapter imports core only, never another adapter",
    "bus": "bus imports core and the contract only",
    "service": "a service part never imports a sibling",
    "ctl": "phyllodctl imports the contract, not the daemon",
    "applet": "the applet imports gi, the standard library and the contract",
    "contract": "the contract imports the standard library only",
    "cli": "the daemon's command never imports the clients",
    "package": "the package's __init__ imports nothing",
    "none": "every module is in a room",
}


@pytest.mark.parametrize("module", MODULES,
                         ids=[f"{RULE_NAMES[m.room]}: {m.name}" for m in MODULES])
def test_the_rule_of_its_room(module: Module):
    """One case per module, under its room's rule (RULES); the message names the import."""
    found = problems(module)
    if found:
        pytest.fail("\n".join(found), pytrace=False)


@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_no_module_is_longer_than_450_lines(module: Module):
    if module.lines > MAX_LINES:
        pytest.fail(f"{module.name} has {module.lines} lines (at most {MAX_LINES}): split it",
                    pytrace=False)


def test_every_room_is_there():
    assert {m.room for m in MODULES} >= set(RULES)


# The checker, on synthetic trees: a good house passes every rule, and each
# rule finds the one bad import planted for it.

GOOD_TREE = {
    "__init__.py": '__version__ = "0"\n',
    "contract.py": "from enum import IntEnum\n",
    "cli.py": ("import argparse\nfrom phyllod import __version__\n"
               "from phyllod.service import root\n"),
    "core/__init__.py": "",
    "core/model.py": "from dataclasses import dataclass\nimport xml.etree.ElementTree as ET\n",
    "core/plan.py": ("import sys\nfrom . import model\nfrom .safety.pci import verdict\n"
                     "LIMIT = sys.get_int_max_str_digits()\n"),
    "core/safety/__init__.py": "",
    "core/safety/pci.py": "from ..model import Device\ndef verdict(): ...\n",
    "host/__init__.py": "",
    "host/safe_read.py": "import os\n",
    "host/sysfs.py": ("import os\nfrom phyllod.core import model\n"
                      "from . import safe_read, sysfs_acs\n"),
    "host/sysfs_acs.py": "from pathlib import Path\n",
    "host/udev_source.py": "import pyudev\nimport asyncio\nfrom phyllod.core.model import Device\n",
    "bus/__init__.py": "",
    "bus/compat.py": "import dbus_fast\n",
    "bus/connect.py": "from dbus_fast.aio import MessageBus\nfrom phyllod.bus import compat\n",
    "bus/service.py": ("from phyllod import contract\nfrom phyllod.core.plan import LIMIT\n"
                       "from .connect import MessageBus\n"),
    "service/__init__.py": "",
    "service/fault_points.py": "import asyncio\n",
    "service/plugs.py": ("import asyncio\nfrom phyllod.core import model\n"
                         "from phyllod.host.udev_source import Device\n"
                         "from phyllod.service import fault_points\n"),
    "service/root.py": ("from phyllod import __version__\nfrom phyllod.bus import service\n"
                        "from phyllod.host import sysfs\nfrom . import plugs\n"),
    "ctl/__init__.py": "",
    "ctl/main.py": ("import dbus_fast\nfrom phyllod import __version__, contract\n"
                    "from phyllod.bus.connect import MessageBus\n"
                    "from phyllod.core.device_text import clean\nfrom .output import x\n"),
    "ctl/output.py": "import json\n",
    "applet/__init__.py": "",
    "applet/app.py": ("import gi\nfrom gi.repository import Gio\nfrom phyllod import __version__\n"
                      "from phyllod.contract import ROOT\nfrom .views import x\n"),
    "applet/views.py": "import dataclasses\n",
}

#: (file, its source, a fragment of the problem the checker must report)
BAD_IMPORTS = [
    ("core/policy.py", "import os\n", "imports os: not a pure standard module"),
    ("core/policy.py", "import asyncio\n", "imports asyncio: not a pure standard module"),
    ("core/policy.py", "from time import monotonic\n", "imports time: not a pure"),
    ("core/policy.py", "from phyllod.host.safe_read import read\n",
     "imports phyllod.host.safe_read: core imports nothing outside core"),
    ("core/policy.py", "import sys\nsys.stdout.write('x')\n", "uses sys.stdout"),
    ("core/policy.py", "import libvirt\n", "libvirt belongs in host"),
    ("core/policy.py", "from dbus_fast import Variant\n", "dbus_fast belongs in bus / ctl"),
    ("core/policy.py", "def f():\n    from phyllod.service import root\n",
     "phyllod.service.root: core imports nothing outside core"),
    ("host/udev_source.py", "from phyllod.host import sysfs\n",
     "imports phyllod.host.sysfs: another host adapter"),
    ("host/udev_source.py", "from . import sysfs_acs\n",
     "imports phyllod.host.sysfs_acs: another host adapter"),
    ("host/udev_source.py", "from phyllod.bus import compat\n",
     "host adapters import core only"),
    ("host/udev_source.py", "import dbus_fast\n", "dbus_fast belongs in bus / ctl"),
    ("bus/service.py", "from phyllod.host import sysfs\n",
     "bus imports core, contract and bus only"),
    ("bus/service.py", "from phyllod.service.root import x\n", "bus imports core, contract"),
    ("bus/service.py", "import pyudev\n", "pyudev belongs in host"),
    ("service/plugs.py", "from phyllod.service.guests import x\n",
     "imports phyllod.service.guests: a service part never imports a sibling"),
    ("service/plugs.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                         "    from .root import Root\n", "a service part never imports"),
    ("service/plugs.py", "import dbus_fast\n", "dbus_fast belongs in bus / ctl"),
    ("service/root.py", "from phyllod.ctl import main\n",
     "the daemon never imports its clients"),
    ("ctl/main.py", "from phyllod.bus.service import x\n", "phyllodctl imports the contract"),
    ("ctl/main.py", "from phyllod.core.plan import x\n", "phyllodctl imports the contract"),
    ("ctl/main.py", "import libvirt\n", "libvirt belongs in host"),
    ("applet/app.py", "from phyllod.core import model\n", "the applet imports gi"),
    ("applet/app.py", "import dbus_fast\n", "dbus_fast belongs in bus / ctl"),
    ("contract.py", "from phyllod.core import model\n", "the contract imports the standard"),
    ("contract.py", "import gi\n", "gi belongs in applet"),
    ("cli.py", "from phyllod.ctl import main\n", "the daemon's command never imports"),
    ("__init__.py", "from phyllod import contract\n", "the package's __init__ imports nothing"),
    ("extras.py", "", "phyllod.extras is in no room"),
    ("core/more.py", "import requests\n", "requests belongs in no room"),
]


def plant(root: Path, files: dict[str, str]) -> Path:
    package = root / TOP
    for rel, text in files.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return package


def test_the_checker_passes_a_good_house(tmp_path: Path):
    modules = read_modules(plant(tmp_path, GOOD_TREE))
    assert len(modules) == len(GOOD_TREE)
    assert {m.room for m in modules} == set(RULES)
    assert [p for m in modules for p in problems(m)] == []


@pytest.mark.parametrize(("rel", "source", "expected"), BAD_IMPORTS,
                         ids=[f"{rel}:{expected[:40]}" for rel, _, expected in BAD_IMPORTS])
def test_the_checker_finds_each_bad_import(tmp_path: Path, rel: str, source: str,
                                           expected: str):
    package = plant(tmp_path, GOOD_TREE | {rel: source})
    found = [p for m in read_modules(package) for p in problems(m)]
    assert len(found) == 1 and expected in found[0], found


def test_the_checker_resolves_relative_and_from_imports(tmp_path: Path):
    package = plant(tmp_path, GOOD_TREE)
    plan = next(m for m in read_modules(package) if m.name == "phyllod.core.plan")
    assert [i.name for i in plan.imports] == ["sys", "phyllod.core.model",
                                              "phyllod.core.safety.pci"]


def test_the_size_rule_counts_lines(tmp_path: Path):
    package = plant(tmp_path, GOOD_TREE | {"core/big.py": "x = 1\n" * (MAX_LINES + 1)})
    sizes = {m.name: m.lines for m in read_modules(package)}
    assert sizes["phyllod.core.big"] == MAX_LINES + 1 > MAX_LINES >= sizes["phyllod.core.plan"]
