"""Pure rendering for phyllodctl: terminal-safe text, aligned tables, JSON.

Every string a device reports (name, serial, manufacturer) is whatever the
device's firmware says, so it is attacker-controlled. Human output therefore
goes through :func:`escape` before it reaches a terminal: no control character,
escape sequence, bidi override or lone surrogate survives. JSON output is left
to :func:`json.dumps`, whose ASCII escaping is already safe.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from phyllod.contract import DEVICE_IFACE, GUEST_IFACE, REQUEST_IFACE

# A table cell longer than this is cut: one 64 KiB product name must not push
# every other column off the screen (`show` and --json give the whole value).
MAX_CELL_WIDTH = 40
ELLIPSIS = "…"
COLUMN_GAP = "  "

ManagedObjects = Mapping[str, Mapping[str, Mapping[str, Any]]]

# One escaped character, so truncation never cuts an escape in half.
_TOKEN = re.compile(r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|\\)|.", re.DOTALL)


def _escape_char(c: str) -> str:
    """``\\xNN`` for bytes and C0/C1 controls, ``\\uNNNN``/``\\UNNNNNNNN`` beyond.

    Lone surrogates U+DC80..U+DCFF are what ``surrogateescape`` makes of invalid
    UTF-8 bytes; showing the original byte is the most useful rendering.
    """
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x100:
        return f"\\x{o:02x}"
    if o <= 0xFFFF:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def escape(text: str, keep: str = "") -> str:
    """``text`` with every non-printable character (and ``\\``) escaped.

    ``str.isprintable`` is false for controls (ESC, CSI, newline), format
    characters (bidi overrides, zero-width joiners), separators other than the
    space, surrogates and unassigned code points: exactly what can fool or drive
    a terminal. The backslash is doubled so an escape cannot be forged by a
    device that names itself ``\\x1b``. ``keep`` lists characters to pass (a
    newline in multi-line daemon messages).
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(
        c if c in keep or (c.isprintable() and c != "\\")
        else "\\\\" if c == "\\"
        else _escape_char(c)
        for c in text
    )


def _char_width(c: str) -> int:
    """Terminal columns of one printable character (wide CJK 2, combining marks 0)."""
    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in "WF" else 1


def width(text: str) -> int:
    """Columns ``text`` (already escaped) takes on a terminal."""
    return len(text) if text.isascii() else sum(_char_width(c) for c in text)


def truncate(text: str, limit: int = MAX_CELL_WIDTH) -> str:
    """Cut escaped ``text`` to ``limit`` columns, ending in an ellipsis if cut."""
    if width(text) <= limit:
        return text
    kept: list[str] = []
    used = width(ELLIPSIS)
    for token in _TOKEN.findall(text):
        used += width(token)
        if used > limit:
            break
        kept.append(token)
    return "".join(kept) + ELLIPSIS


def cell(value: Any) -> str:
    """A value as a table cell: escaped, cut, and ``-`` when empty so columns stay visible."""
    text = display(value)
    return truncate(text) if text else "-"


def display(value: Any, keep: str = "") -> str:
    """A D-Bus value for humans: lists space-separated, booleans yes/no, all escaped."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return " ".join(display(v, keep) for v in value)
    return escape(str(value), keep)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], legend: bool = True) -> list[str]:
    """Left-aligned columns by display width, no trailing blanks.

    ``rows`` hold cells already made safe by :func:`cell`.
    """
    lines = [list(headers)] if legend else []
    lines += [list(r) for r in rows]
    if not lines:
        return []
    widths = [max(width(line[i]) for line in lines) for i in range(len(headers))]
    return [
        COLUMN_GAP.join(c + " " * (w - width(c)) for c, w in zip(line, widths, strict=True))
        .rstrip()
        for line in lines
    ]


def key_value(props: Mapping[str, Any], order: Collection[str],
              multiline: Collection[str] = ()) -> list[str]:
    """``Key: value`` lines, keys aligned, in ``order`` and then the rest by name.

    ``order`` is one of contract.py's property tables, so ``show`` reads like the
    documentation; unknown (newer) properties follow in name order.

    Values named in ``multiline`` (the daemon's own policy error report) keep their
    line breaks, continued under the value column; anywhere else a newline is
    escaped, so a device cannot forge a line of its own.
    """
    keys = [k for k in order if k in props] + sorted(set(props) - set(order))
    pad = max((len(k) for k in keys), default=0) + 1
    lines = []
    for k in keys:
        text = display(props[k], keep="\n" if k in multiline else "")
        lines.append(f"{k + ':':<{pad}} {text}".rstrip().replace("\n", "\n" + " " * (pad + 1)))
    return lines


def to_json(data: Any) -> str:
    """JSON for scripts; ``ensure_ascii`` keeps controls and surrogates escaped."""
    return json.dumps(data, indent=2, ensure_ascii=True)


def with_interface(objects: ManagedObjects, interface: str) -> list[Mapping[str, Any]]:
    """The property sets of every object that has ``interface``."""
    return [ifaces[interface] for ifaces in objects.values() if interface in ifaces]


def id_sort_key(device_id: str) -> tuple[str, tuple[int, ...], str]:
    """``usb:1-10`` after ``usb:1-9``: USB port numbers are decimal.

    PCI addresses are fixed-width hex, so plain string order is right for them
    (and for anything unexpected).
    """
    kind, _, place = device_id.partition(":")
    parts = re.split(r"[-.]", place)
    if kind == "usb" and all(p.isdigit() for p in parts):
        return kind, tuple(int(p) for p in parts), device_id
    return kind, (), device_id


def devices(objects: ManagedObjects) -> list[Mapping[str, Any]]:
    """The devices' property sets, sorted by id."""
    return sorted(with_interface(objects, DEVICE_IFACE),
                  key=lambda d: id_sort_key(str(d.get("Id", ""))))


def guests(objects: ManagedObjects) -> list[Mapping[str, Any]]:
    """The guests' property sets, sorted by name."""
    return sorted(with_interface(objects, GUEST_IFACE), key=lambda g: str(g.get("Name", "")))


def device_name(d: Mapping[str, Any]) -> str:
    """The device's own product string; failing that, the hardware database's names."""
    own = str(d.get("Name", ""))
    return own or " ".join(str(d[k]) for k in ("VendorFromDatabase", "ModelFromDatabase")
                           if d.get(k))


def device_table(objects: ManagedObjects, legend: bool = True) -> list[str]:
    """``phyllodctl list``."""
    rows = [
        [cell(d.get("Id", "")), cell(f"{d.get('Vendor', '')}:{d.get('Product', '')}"),
         cell(device_name(d)), cell(d.get("State", "")), cell(d.get("Guest", "")),
         cell(d.get("Rule", ""))]
        for d in devices(objects)
    ]
    return table(["ID", "VID:PID", "NAME", "STATE", "GUEST", "RULE"], rows, legend)


def guest_table(objects: ManagedObjects, legend: bool = True) -> list[str]:
    """``phyllodctl guests``: the device count, not the paths, is what a person wants."""
    rows = [
        [cell(g.get("Name", "")), cell(g.get("State", "")), str(len(g.get("Devices", []))),
         cell(g.get("UUID", ""))]
        for g in guests(objects)
    ]
    return table(["NAME", "STATE", "DEVICES", "UUID"], rows, legend)


def request_number(path: str) -> int:
    """``/me/phyllo/Phyllod1/requests/7`` → 7 (0 for anything else)."""
    tail = path.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def requests(objects: ManagedObjects) -> list[dict[str, Any]]:
    """The open requests, oldest first, each with its number as ``Id``."""
    found = [{"Id": request_number(path), **ifaces[REQUEST_IFACE]}
             for path, ifaces in objects.items() if REQUEST_IFACE in ifaces]
    return sorted(found, key=lambda r: r["Id"])


def seconds_left(deadline_usec: int, now: float) -> str:
    """``12s`` until a request's deadline (``0s`` once it passed)."""
    return f"{max(0, round(deadline_usec / 1e6 - now))}s"


def request_table(objects: ManagedObjects, now: float, legend: bool = True) -> list[str]:
    """``phyllodctl requests``: what to answer, with ``phyllodctl answer ID``."""
    rows = [
        [str(r["Id"]), cell(r.get("DeviceId", "")), cell(r.get("Description", "")),
         cell(r.get("Candidates", [])), seconds_left(int(r.get("Deadline", 0)), now),
         cell(r.get("Rule", ""))]
        for r in requests(objects)
    ]
    return table(["ID", "DEVICE", "DESCRIPTION", "GUESTS", "LEFT", "RULE"], rows, legend)


def one_per_line(values: Iterable[Any]) -> list[str]:
    """``--ids``/``--names`` for shell completion: escaped, so a newline in a name
    cannot make two completions (and nothing reaches the terminal raw)."""
    return [escape(str(v)) for v in values]


IOMMU_FIELDS = ("address", "ids", "class", "driver", "verdict", "reason")


def iommu_records(groups: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """``GetIommuGroups``' structs as plain records (``--json``), one per function."""
    return [{"group": number, **dict(zip(IOMMU_FIELDS, member, strict=True))}
            for number, members in groups for member in members]


def iommu_table(groups: Iterable[Sequence[Any]], legend: bool = True) -> list[str]:
    """One row per function, grouped: what could be passed, and why not.

    The reason is not cut: it is the point of the command.
    """
    rows = [[str(r["group"]), r["address"], r["ids"], r["class"], r["driver"] or "-",
             r["verdict"], display(r["reason"]) or "-"]
            for r in iommu_records(groups)]
    return table(("GROUP", "ADDRESS", "IDS", "CLASS", "DRIVER", "VERDICT", "REASON"),
                 [[cell(v) for v in row[:-1]] + [row[-1]] for row in rows], legend)
