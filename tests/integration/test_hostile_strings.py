"""Hostile device strings: what a USB device says about itself reaches nothing raw.

A device's serial, manufacturer and product name are whatever its firmware
says, so they are attacker-chosen: markup, quotes, newlines, terminal escapes
(C0 and C1), NUL, bytes that are not UTF-8, bidi overrides, 64 KiB of text.
umockdev devices carry them (raw bytes through ``set_attribute_binary``), and
the claims are checked where the strings could do harm:

- the hostdev XML phyllod sends to libvirt is one ``<hostdev>`` of the expected
  shape and carries none of them;
- D-Bus properties are valid strings, without control characters, at most 256
  characters (device_text.clean), and the daemon stays up;
- ``phyllodctl`` text output (list, show, explain, status, requests, monitor)
  and ``phyllod check-policy`` drive no terminal: no control character but
  newline and tab, no bidi override, and no line a device could forge;
- each log record stays one line, without control characters;
- a policy rule written with a device's shown serial matches it.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import testbed
from daemon_process import LineProcess, child_env
from phyllod_on_bus import MANAGER, NAME, ROOT, Phyllod

from phyllod.core.device_text import MAX_TEXT
from phyllod.core.hostdev_xml import hostdev_xml
from phyllod.host.sysfs import host_keyboards
from phyllod.host.udev_source import present_devices

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

VENDOR, PRODUCT = "f00d", "0001"
#: The longest string phyllod may publish: a description joins two device strings
#: (maker and name) with the device's id and ids (a request's Description).
MAX_ON_BUS = 2 * MAX_TEXT + 64

#: A log record as the daemon's stderr formatter starts it, and one forged to look like it.
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
FORGED_LOG = "2025-01-01 12:00:00,000 INFO attached usb:1-2 to work"
#: A ``phyllodctl monitor`` line, and one forged to look like it.
MONITOR_LINE = re.compile(r"\d\d:\d\d:\d\d ")
FORGED_MONITOR = "12:00:00 usb:1-2 state attached guest=work"

#: C0 and C1 controls (DEL too): none may be on the bus or in a device string.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: What must not reach a terminal or a log: controls but newline and tab, bidi
#: controls (they reorder what follows: "Trojan Source"), line/paragraph separators.
UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e"
                    r"\u2066-\u2069\u2028\u2029]")

# The corpus: raw sysfs contents (bytes, so NUL and non-UTF-8 can be said too).
CORPUS: dict[str, bytes] = {
    "markup": b"</source><hostdev mode='subsystem' type='pci' managed='yes'><source>"
              b"<address domain='0x0000' bus='0x00' slot='0x02' function='0x0'/></source>"
              b"</hostdev><source>",
    "entities": b"&lt;hostdev&gt; &amp; &#x1b;[2J &#0; ]]><![CDATA[<x/>]]> <!-- -->",
    "quotes": b"\"'\"'`$(touch /tmp/pwned)` \\\" \\x1b[2J \\",
    "newlines": f"first\n{FORGED_LOG}\r\n{FORGED_MONITOR}\rlast".encode(),
    "escapes": b"\x1b[2J\x1b]0;pwned\x07\x1b[31mred\x1b[0m\x1bP+q\x1b\\ \x1bc",
    "c1-chars": "C1\u009b31m\u009d0;title\u009c\u0085next\u0090dcs".encode(),
    "c1-bytes": b"C1raw\x9b31m\x9d0;t\x9c",
    "bel-bs-del": b"ok\x07\x08\x08\x08bad\x7f\x0b\x0c\x1c\x1e",
    "nul": b"before-nul\x00\x1b[2Jafter",
    "invalid-utf8": b"bad\xff\xfe\xc3\x28\xed\xa0\x80\xf4\x90\x80\x80\xc0\xaf<x>",
    "bidi": "invoice\u202egnp.exe\u202c \u2066\u2067\u2068\u2069\u200e\u200f\u061c".encode(),
    "separators": "para\u2028line\u2029end".encode(),
    "format": b"%s%n%(message)s{0}${IFS}%x",
    "64KiB": (b"<hostdev/>\x1b[1m&amp;\"'\n" * 4096)[:65536],
}

# Pieces of the random strings of a soak (and a few in CI).
PIECES = [b"<", b">", b"&", b"'", b'"', b"]]>", b"</hostdev>", b"<!--", b"\x1b[", b"\x1b]0;",
          b"\x07", b"\x08", b"\x00", b"\n", b"\r", b"\t", b"\x7f", b"\x9b", "\u009b".encode(),
          "\u202e".encode(), "\u2028".encode(), b"\xff", b"\xc3", b"\xed\xa0\x80", b"%s",
          b"\\x1b", b"A" * 300, "\u00e9\u20ac\U0001f600".encode(), b" ", b"\\"]


def hostile_strings(reliability: Any, seed: int = 10) -> list[bytes]:
    """The corpus, then random mixes (each with a unique prefix, so serials stay distinct)."""
    rng = random.Random(seed)
    extra = [f"r{i:03d}-".encode() + b"".join(rng.choice(PIECES)
                                               for _ in range(rng.randint(1, 12)))
             for i in range(reliability.size(4, 200))]
    return [*CORPUS.values(), *extra]


@dataclass(frozen=True)
class Plugged:
    """A hostile device in the testbed: where it is and what it claims."""

    port: str
    serial: bytes
    manufacturer: bytes
    product: bytes

    @property
    def id(self) -> str:
        return f"usb:{self.port}"

    @property
    def strings(self) -> tuple[bytes, bytes, bytes]:
        return self.serial, self.manufacturer, self.product


def plug_hostile(tb: testbed.UsbTestbed, strings: list[bytes],
                 after_each: Callable[[Plugged], object] = lambda _: None) -> list[Plugged]:
    """One device per string; device i says strings i, i+1, i+2 as serial, maker, name.

    Values libumockdev can take as text go in with the device (its ``add``
    carries them); NUL and non-UTF-8 are written as bytes afterwards, followed
    by a ``change``, as a device whose attributes settle late. ``after_each``
    paces hotplugs: umockdev aborts the process when a listener's socket is full.
    """
    plugged = []
    n = len(strings)
    for i in range(n):
        bus, place = 3 + i // 120, i % 120
        d = Plugged(f"{bus}-{place + 1}", strings[i], strings[(i + 1) % n],
                    strings[(i + 2) % n])
        fields = {"serial": d.serial, "manufacturer": d.manufacturer, "product": d.product}
        as_text = {k: _as_text(v) for k, v in fields.items()}
        path = tb.plug(d.port, devnum=place + 2, vendor=VENDOR, product=PRODUCT,
                       serial=as_text["serial"] or "", manufacturer=as_text["manufacturer"] or "",
                       product_name=as_text["product"] or "")
        raw = [k for k, text in as_text.items() if text is None]
        for name in raw:
            tb.tb.set_attribute_binary(path, name, fields[name])
        if raw:
            tb.tb.uevent(path, "change")
        plugged.append(d)
        after_each(d)
    return plugged


def _as_text(value: bytes) -> str | None:
    """``value`` as a str libumockdev can write, or None if only bytes can say it."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def _strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def unsafe_chars(texts: Iterable[str], pattern: re.Pattern[str] = UNSAFE) -> list[str]:
    """The offending characters in ``texts`` (empty when all is well)."""
    return [c for t in texts for c in pattern.findall(t)]


def check_log(log: str, plugged: list[Plugged]) -> tuple[int, list[str]]:
    """(records, problems) of a captured daemon log: one record per line, nothing raw,
    and each hostile device described (with its strings) at least once."""
    lines = log.splitlines()
    problems = [f"{p.id} never described" for p in plugged
                if not any(f"{p.id} ({VENDOR}:{PRODUCT} " in line for line in lines)]
    for line in lines:
        if not RECORD.match(line):
            problems.append(f"not a record of its own: {line[:200]!r}")
        if line.startswith(FORGED_LOG[:23]):
            problems.append(f"forged record: {line[:200]!r}")
    problems += [f"unsafe character {c!r}" for c in unsafe_chars(lines)]
    return len(lines), problems


def toml_string(value: str) -> str:
    """A TOML basic string, every character beyond printable ASCII escaped."""
    def esc(c: str) -> str:
        if c in '"\\':
            return "\\" + c
        if " " <= c <= "~":
            return c
        return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"
    return '"' + "".join(map(esc, value)) + '"'


def deny_by_serial(devices: Iterable[tuple[str, str]]) -> str:
    """One deny rule per (rule name, shown serial)."""
    return "".join(
        f'[[rule]]\nname = "{name}"\nmatch = {{ vendor = "{VENDOR}", serial = '
        f"{toml_string(serial)} }}\naction = \"deny\"\n\n" for name, serial in devices)


def test_hostdev_xml_names_hostile_devices_by_numbers_only(
        usb_testbed: testbed.UsbTestbed, reliability):
    strings = hostile_strings(reliability)
    plugged = plug_hostile(usb_testbed, strings)
    built = {d.port: d for d in present_devices()}
    assert len(built) == len(plugged)
    shape = [("hostdev", ["managed", "mode", "type"]), ("source", []), ("vendor", ["id"]),
             ("product", ["id"]), ("address", ["bus", "device"]), ("alias", ["name"])]
    longest = 0
    found: list[str] = []
    for p in plugged:
        d = built[p.port]
        kept = (d.serial, d.manufacturer, d.product_name)
        found += unsafe_chars(kept)
        assert all(kept) and max(map(len, kept)) <= MAX_TEXT, (p.port, kept)
        longest = max(longest, *map(len, kept))
        xml = hostdev_xml(d)
        root = ET.fromstring(xml)  # one root element, or it does not parse
        assert xml.count("<hostdev") == 1
        assert [(e.tag, sorted(e.attrib)) for e in root.iter()] == shape, xml
        assert all(not (e.text or "").strip() and not (e.tail or "").strip()
                   for e in root.iter()), xml
        assert root.find("source/vendor").get("id") == f"0x{VENDOR}"
        assert root.find("source/product").get("id") == f"0x{PRODUCT}"
        assert root.find("source/address").attrib == {"bus": str(d.busnum),
                                                      "device": str(d.devnum)}
        assert re.fullmatch(r"ua-phyllod-usb\d+-\d+-\d+", root.find("alias").get("name"))
        # Nothing the device says changes a byte: the XML is that of the same
        # device without any strings, and holds none of them.
        assert xml == hostdev_xml(replace(d, serial="", manufacturer="", product_name=""))
        for value in {*kept, *(raw.decode("utf-8", "replace") for raw in p.strings)}:
            assert value not in xml, (p.port, value, xml)
    assert found == []
    # What is kept: libudev reads up to a NUL, bytes that are not UTF-8 and controls
    # become U+FFFD, and 64 KiB become 256 characters.
    kept_serial = {p.serial: built[p.port].serial for p in plugged}
    assert kept_serial[CORPUS["nul"]] == "before-nul"
    assert kept_serial[CORPUS["invalid-utf8"]].startswith("bad\ufffd")
    assert kept_serial[CORPUS["bidi"]].startswith("invoice\ufffdgnp.exe\ufffd")
    assert kept_serial[CORPUS["escapes"]].startswith("\ufffd[2J\ufffd]0;pwned\ufffd")
    assert len(kept_serial[CORPUS["64KiB"]]) == MAX_TEXT
    reliability.record("hostile device strings: hostdev XML", hostile_devices=len(plugged),
                       strings_tried=len(strings), longest_string_kept=longest,
                       control_chars_found=len(found), xml_documents=len(plugged))


def test_udev_and_sysfs_clean_a_device_string_alike(usb_testbed: testbed.UsbTestbed,
                                                   reliability):
    """One cleaner on every read path: each hostile string, said by a USB device (the udev
    adapter) and by the keyboard behind it (its input name, read by sysfs), is kept
    the same way. The sysfs reader used to let bidi controls and U+2028 through."""
    strings = hostile_strings(reliability)
    plugged = plug_hostile(usb_testbed, strings)
    for n, p in enumerate(plugged):
        usb_testbed.add_keyboard_input(p.port, 100 + n)
        usb_testbed.tb.set_attribute_binary(usb_testbed.paths[f"input{100 + n}"], "name",
                                            p.product + b"\n")
    by_udev = {d.port: d.product_name for d in present_devices()}
    by_sysfs = {path.split("/")[-2].split(":")[0]: name
                for path, name in host_keyboards(Path("/sys")).items()}
    differ = {p.port: (by_udev[p.port], by_sysfs[p.port]) for p in plugged
              if by_udev[p.port] != by_sysfs[p.port]}
    assert set(by_sysfs) == {p.port for p in plugged}
    assert differ == {}
    found = unsafe_chars(by_sysfs.values())
    assert found == []
    reliability.record("hostile device strings: udev and sysfs clean alike",
                       strings_tried=len(strings), read_paths=2, differences=len(differ),
                       control_chars_found=len(found))


def test_check_policy_output_is_clean_and_matches_by_shown_serial(
        usb_testbed: testbed.UsbTestbed, tmp_path: Path, reliability):
    strings = hostile_strings(reliability)
    plugged = plug_hostile(usb_testbed, strings)
    serials = {d.port: d.serial for d in present_devices()}
    assert len(set(serials.values())) == len(plugged) and all(serials.values())
    (tmp_path / "10-hostile.toml").write_text(
        deny_by_serial((f"hostile {p.port}", serials[p.port]) for p in plugged))
    result = subprocess.run(
        [sys.executable, "-m", "phyllod.cli", "check-policy", "--policy-dir", str(tmp_path)],
        capture_output=True, text=True, errors="surrogateescape",
        env=child_env(**usb_testbed.env), timeout=60)
    assert result.returncode == 0, result.stderr
    found = unsafe_chars([result.stdout, result.stderr])
    assert found == [], found
    lines = result.stdout.splitlines()
    # Two header lines, then each rule and the one device it matches: no forged line.
    assert len(lines) == 2 + 2 * len(plugged), lines
    for p, (rule, match) in zip(plugged, zip(lines[2::2], lines[3::2], strict=True),
                                strict=True):
        assert rule.endswith(f": rule 'hostile {p.port}' (deny)"), rule
        assert match.startswith(f"    matches {p.id} ({VENDOR}:{PRODUCT} "), match
    reliability.record("hostile device strings: check-policy", hostile_devices=len(plugged),
                       strings_tried=len(strings), output_lines=len(lines),
                       longest_line=max(map(len, lines)), rules_matched_by_shown_serial=len(
                           plugged), control_chars_found=len(found))


def _bus_strings(phyllod: Phyllod) -> list[str]:
    """Every string phyllod publishes: all objects' properties and the Manager's."""
    out = []
    for args in (("call", NAME, ROOT, "org.freedesktop.DBus.ObjectManager",
                  "GetManagedObjects"),
                 ("call", NAME, ROOT, "org.freedesktop.DBus.Properties", "GetAll", "s",
                  MANAGER)):
        r = phyllod.busctl("--json=short", *args)
        assert r.returncode == 0, r.stderr
        out += list(_strings(json.loads(r.stdout)["data"]))
    return out


def _json(phyllod: Phyllod, *args: str) -> Any:
    r = phyllod.ctl("--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_shown_as_built(phyllod: Phyllod, plugged: list[Plugged],
                        timeout: float = 20.0) -> dict[str, dict[str, Any]]:
    """``phyllodctl --json list`` once the daemon shows each device's strings as
    udev_source reads them here (late attributes included); by device id."""
    built = {d.id: (d.serial, d.manufacturer, d.product_name) for d in present_devices()}
    deadline = time.monotonic() + timeout
    while True:
        shown = {d["Id"]: d for d in _json(phyllod, "list")}
        if all(p.id in shown and (shown[p.id]["Serial"], shown[p.id]["Manufacturer"],
                                  shown[p.id]["Name"]) == built[p.id] for p in plugged):
            return shown
        assert time.monotonic() < deadline, {p.id: shown.get(p.id) for p in plugged}
        time.sleep(0.2)


def test_bus_and_phyllodctl_show_hostile_devices_harmlessly(phyllod: Phyllod, reliability):
    strings = hostile_strings(reliability)
    plugged = plug_hostile(phyllod.tb, strings)
    phyllod.start()

    # On the bus: valid strings, no controls, bounded.
    on_bus = _bus_strings(phyllod)
    found = unsafe_chars(on_bus, CONTROL)
    assert found == [], found
    assert max(map(len, on_bus)) <= MAX_ON_BUS
    shown = wait_shown_as_built(phyllod, plugged)
    for p in plugged:
        props = shown[p.id]
        for key in ("Serial", "Manufacturer", "Name"):
            assert props[key] and len(props[key]) <= MAX_TEXT, (p.id, key, props[key])
            assert not UNSAFE.search(props[key]), (p.id, key, props[key])

    # A rule written with each device's shown serial matches it.
    (phyllod.policy_dir / "10-hostile.toml").write_text(
        deny_by_serial((f"hostile {p.port}", shown[p.id]["Serial"]) for p in plugged))
    assert phyllod.proc is not None
    phyllod.proc.signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while True:
        states = {d["Id"]: (d["State"], d["Rule"])
                  for d in json.loads(phyllod.ctl("--json", "list").stdout)}
        if all(states[p.id] == ("denied", f"hostile {p.port}") for p in plugged):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.2)

    # phyllodctl's text output, command by command.
    outputs: dict[str, str] = {}
    r = phyllod.ctl("list")
    assert r.returncode == 0, r.stderr
    outputs["list"] = r.stdout + r.stderr
    rows = r.stdout.splitlines()
    assert len(rows) == 1 + len(shown) and all(row.startswith("usb:") for row in rows[1:]), rows
    for p in plugged:
        r = phyllod.ctl("show", p.id)
        assert r.returncode == 0, r.stderr
        outputs[f"show {p.id}"] = r.stdout + r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == len(shown[p.id]), lines  # one line per property
        assert all(re.match(r"[A-Za-z]+:( |$)", ln) for ln in lines), lines
        r = phyllod.ctl("explain", p.id)
        assert r.returncode == 0, r.stderr
        outputs[f"explain {p.id}"] = r.stdout + r.stderr
        keys = [ln.split(":", 1)[0] for ln in r.stdout.splitlines()]
        # One line per key, whatever the strings hold (identity: for a device with a serial).
        assert [k for k in keys if k != "identity"] == ["device", "state", "why", "rule",
                                                        "override"], r.stdout
        assert keys.count("identity") <= 1, r.stdout
    r = phyllod.ctl("status")
    outputs["status"] = r.stdout + r.stderr
    # A caller's own hostile name comes back escaped too.
    r = phyllod.ctl("explain", f"usb:9-9\x1b[2J\n{FORGED_LOG}\u202e")
    assert r.returncode == 3
    outputs["explain (hostile name)"] = r.stdout + r.stderr
    assert all(ln.startswith("phyllodctl: ") for ln in r.stderr.splitlines()), r.stderr
    leaks = {cmd: unsafe_chars([text]) for cmd, text in outputs.items()}
    assert not any(leaks.values()), {k: v for k, v in leaks.items() if v}

    assert phyllod.proc.alive
    phyllod.stop()
    records, problems = check_log(phyllod.logs[-1], plugged)
    assert problems == [], problems
    reliability.record(
        "hostile device strings: D-Bus, phyllodctl, log (coldplug)",
        hostile_devices=len(plugged), strings_tried=len(strings),
        longest_on_bus=max(map(len, on_bus)), rules_matched_by_shown_serial=len(plugged),
        ctl_commands=len(outputs), log_records=records,
        control_chars_found=len(found) + sum(map(len, leaks.values())) + len(problems))


ASK = f"""\
[settings]
ask_timeout = 60
debounce = 0

[[rule]]
name = "hostile devices"
match = {{ vendor = "{VENDOR}" }}
action = "ask"
"""


def test_monitor_requests_and_log_of_hostile_plugs(phyllod: Phyllod, reliability):
    strings = hostile_strings(reliability)
    (phyllod.policy_dir / "10-ask.toml").write_text(ASK)
    phyllod.start()
    mon = LineProcess([sys.executable, "-m", "phyllod.ctl", "--bus", phyllod.bus.address,
                       "monitor"], child_env())
    try:
        mon.wait_line("phyllod monitoring")
        # Paced by the monitor: each plug shows before the next is made.
        plugged = plug_hostile(phyllod.tb, strings,
                               lambda p: mon.wait_line(f" + {p.id} plugged "))
        wait_shown_as_built(phyllod, plugged)
        deadline = time.monotonic() + 20
        while len(requests := _json(phyllod, "requests")) < len(plugged):
            assert time.monotonic() < deadline, requests
            time.sleep(0.2)
        assert {r["DeviceId"] for r in requests} == {p.id for p in plugged}
        for p in plugged:
            mon.wait_line(f" asks where {p.id} goes: ")
        outputs = {"requests": phyllod.ctl("requests").stdout}
        assert len(outputs["requests"].splitlines()) == 1 + len(plugged), outputs["requests"]

        # Remember an answer: the device's identity (its serial) is then in status,
        # and a person can forget it by that identity as shown.
        first = requests[0]
        r = phyllod.ctl("answer", str(first["Id"]), "--host", "--remember")
        assert r.returncode == 0, r.stderr
        remembered = _json(phyllod, "status")["Remembered"]
        (identity,) = remembered
        assert identity.startswith(f"usb:{VENDOR}:{PRODUCT}:")
        on_bus = _bus_strings(phyllod)
        r = phyllod.ctl("status")
        outputs["status"] = r.stdout + r.stderr
        r = phyllod.ctl("forget", identity)
        assert r.returncode == 0, r.stderr
        assert _json(phyllod, "status")["Remembered"] == {}

        for p in plugged:
            phyllod.tb.unplug(p.port)
            mon.wait_line(f" - {p.id} gone")
        assert phyllod.proc is not None and phyllod.proc.alive
    finally:
        mon.stop()
    assert mon.proc.returncode == 0, mon.log()
    lines = mon.lines
    monitor_problems = [ln for ln in lines if not MONITOR_LINE.match(ln)]
    monitor_problems += [ln for ln in lines if ln.startswith(FORGED_MONITOR[:9])]
    assert monitor_problems == [], monitor_problems
    found = unsafe_chars(lines) + unsafe_chars(outputs.values()) + \
        unsafe_chars(on_bus, CONTROL)
    assert found == [], found
    assert max(map(len, on_bus)) <= MAX_ON_BUS
    phyllod.stop()
    records, problems = check_log(phyllod.logs[-1], plugged)
    assert problems == [], problems
    reliability.record(
        "hostile device strings: monitor, ask requests, log (hotplug)",
        hostile_devices=len(plugged), strings_tried=len(strings),
        longest_on_bus=max(map(len, on_bus)), monitor_lines=len(lines), log_records=records,
        requests=len(requests), control_chars_found=len(found) + len(problems))
