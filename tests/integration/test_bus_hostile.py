"""Hostile D-Bus callers: thousands of malformed and random calls, from root and from nobody.

The real daemon runs on the private system bus with the shipped bus policy
(see phyllod_on_bus), umockdev devices and libvirt's test driver, and no
polkit (so only root may change anything: phyllod fails closed). Half the
calls come from root, whom a test-only allowance lets send phyllod anything
(so they reach phyllod's own dispatch rather than stop at the bus), half from
nobody, under the shipped policy alone, as on a real system. A client
process (this file run as a script, one process per batch) crafts calls with
dbus-fast's low-level Message API, so any path, interface, member, signature
and body can be sent: unknown paths, interfaces and members, wrong signatures
and argument types, 64 KiB and 1 MiB strings, control characters, strings
shaped like bad object paths, unknown devices and guests, answers to requests
that do not exist, Properties.Set on read-only properties, introspection of
random paths, ObjectManager calls, calls without an interface, and flags
(no reply expected; interactive authorization with no auto-start). It sends
them pipelined and prints a JSON summary of the replies.

The claims:

- every reply is a method return or an error named ``me.phyllo.Phyllod1.Error.*``
  or ``org.freedesktop.DBus.Error.*`` (never dbus-fast's own
  ``com.dubstepdish…ServiceError``, which means a handler raised), and every
  call that expects a reply gets one;
- the daemon lives, answers a normal call at the end and logs no traceback;
- nobody changes nothing: no mutating call returns success to nobody, and the
  full object tree (GetManagedObjects and the Manager's properties) and the
  state files (overrides.json, answers.json) are the same after nobody's batch
  as before it, though nobody aimed at real devices, a real pending request
  and a real remembered answer.

A second test takes the daemon away: the user nobody can neither own its name nor
pass for it (a forged sender header, a forged reply), and a mutating call to the
unowned name reaches no one.

What it found: a call flagged NO_REPLY_EXPECTED whose handler failed made
dbus-fast log a traceback at ERROR, so any client could fill the journal;
phyllod now drops the calls it does not serve itself when no reply is
expected (test_found_failing_calls_expecting_no_reply_log_no_traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.signature import SignatureTree, SignatureType

from phyllod.bus.service import _SendSocket

HERE = Path(__file__).resolve()
NAME = "me.phyllo.Phyllod1"
ROOT = "/me/phyllo/Phyllod1"
MANAGER = "me.phyllo.Phyllod1.Manager"
DEVICE = "me.phyllo.Phyllod1.Device"
REQUEST = "me.phyllo.Phyllod1.Request"
GUEST = "me.phyllo.Phyllod1.Guest"
PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PHYLLOD_ERROR = "me.phyllo.Phyllod1.Error."
DBUS_ERROR = "org.freedesktop.DBus.Error."

# ====================================================================== the client
# Runs as its own process (as root, or as nobody through setpriv); imports
# nothing from the tests or from phyllod, only dbus-fast.

#: (interface, member, signature, argument kinds, mutating): the API as published.
METHODS = [
    (MANAGER, "GetDevice", "s", ["device"], False),
    (MANAGER, "Explain", "s", ["device"], False),
    (MANAGER, "GetIommuGroups", "", [], False),
    (MANAGER, "Attach", "ss", ["device", "guest"], True),
    (MANAGER, "Detach", "s", ["device"], True),
    (MANAGER, "ClearOverride", "s", ["device"], True),
    (MANAGER, "Forget", "s", ["identity"], True),
    (MANAGER, "Reload", "", [], True),
    (DEVICE, "Attach", "s", ["guest"], True),
    (DEVICE, "Detach", "", [], True),
    (DEVICE, "ClearOverride", "", [], True),
    (REQUEST, "Answer", "sb", ["guest", "bool"], True),
    (PROPERTIES, "Get", "ss", ["interface", "property"], False),
    (PROPERTIES, "GetAll", "s", ["interface"], False),
    (PROPERTIES, "Set", "ssv", ["interface", "property", "variant"], False),
    (INTROSPECTABLE, "Introspect", "", [], False),
    (PEER, "Ping", "", [], False),
    (PEER, "GetMachineId", "", [], False),
    (OBJECT_MANAGER, "GetManagedObjects", "", [], False),
]
MUTATING = {(i, m) for i, m, _, _, mut in METHODS if mut}
INTERFACES = [MANAGER, DEVICE, REQUEST, GUEST, PROPERTIES, INTROSPECTABLE, PEER, OBJECT_MANAGER,
              "org.freedesktop.DBus", "me.phyllo.Phyllod1.Secret"]
#: Some of each published interface's (read-only) properties.
PROPS_OF = {MANAGER: ["Version", "IommuEnabled", "PolicyStatus", "PolicyError", "Remembered",
                      "AskTimeout"],
            DEVICE: ["Id", "State", "Guest", "Override", "Identity", "InterfaceClasses"],
            REQUEST: ["Device", "Candidates", "Deadline"],
            GUEST: ["Name", "UUID", "State", "Devices"]}
PROPS = [p for props in PROPS_OF.values() for p in props] + ["Nope", ""]
HOSTILE = ["", " ", "usb:9-9", "pci:0000:ff:1f.7", "0627:0001", "ffff:ffff", "usb:1-2\n",
           "\x1b[2J\x1b[31mred", "\x01\x02\x7f", "\u202eevil", "\ufeff", "\U0001f600" * 3,
           "/", "//", "/me/phyllo/Phyllod1/devices/", "/me/phyllo/Phyllod1/devices/..",
           "not/a/path", "/a//b", "/trailing/", "../../etc/passwd", "$(reboot)", "'; --",
           "%s%n%x", "a" * 256, "test", "TEST", "test ", "host", "-", "--host"]
#: One in this many strings is 64 KiB, one in ``HUGE_1M`` is 1 MiB.
HUGE_64K, HUGE_1M = 150, 1500
NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789"


class Crafter:
    """Calls built from a seeded random.Random, aimed at ``targets`` (real objects)."""

    def __init__(self, seed: int, targets: dict[str, list[str]]) -> None:
        self.rng = random.Random(seed)
        self.t = targets

    # ------------------------------------------------------------ names and strings

    def element(self, first_digit: bool = True) -> str:
        r = self.rng
        n = r.choice([1, 3, 8, 20, 60])
        s = "".join(r.choice(NAME_CHARS) for _ in range(n))
        return s if first_digit or not s[0].isdigit() else "x" + s

    def member(self) -> str:
        return self.element(first_digit=False)[:255]

    def interface(self) -> str:
        parts = [self.element(first_digit=False) for _ in range(self.rng.randint(2, 4))]
        return ".".join(parts)[:255]

    def path(self) -> str:
        r = self.rng
        kind = r.randrange(6)
        if kind == 0:
            return "/"
        if kind == 1:  # near the real objects
            base = r.choice([ROOT, f"{ROOT}/devices", f"{ROOT}/guests", f"{ROOT}/requests",
                             "/me", "/me/phyllo", *self.t["device_paths"],
                             *self.t["request_paths"]])
            return r.choice([base, f"{base}/{self.element()}"])
        if kind == 2:
            return f"{ROOT}/requests/{r.choice([0, 1, 2, 99, 2**31, 2**63])}"
        if kind == 3:  # deep
            return "/" + "/".join(self.element() for _ in range(r.randint(20, 200)))
        return "/" + "/".join(self.element() for _ in range(r.randint(1, 5)))

    def text(self) -> str:
        """A string argument: real names, hostile ones, random unicode, huge (never NUL)."""
        r = self.rng
        if r.randrange(HUGE_1M) == 0:
            return r.choice("x\u00e9\x01") * (1 << 20)
        if r.randrange(HUGE_64K) == 0:
            return r.choice("x\u00e9\x01/") * (1 << 16)
        kind = r.randrange(5)
        if kind == 0:
            pool = (self.t["device_ids"] + self.t["device_paths"] + self.t["guests"]
                    + self.t["identities"])
            return r.choice(pool or HOSTILE)
        if kind in (1, 2):
            return r.choice(HOSTILE)
        chars = []
        for _ in range(r.randrange(40)):
            c = r.choice([r.randrange(1, 0x20), r.randrange(0x20, 0x7F), r.randrange(0x80, 0xD800),
                          r.randrange(0xE000, 0x110000)])
            chars.append(chr(c))
        return "".join(chars)

    def arg(self, kind: str) -> Any:
        r = self.rng
        if kind == "device" and r.randrange(2):
            return r.choice(self.t["device_ids"] + self.t["device_paths"] or HOSTILE)
        if kind == "guest" and r.randrange(2):
            return r.choice(self.t["guests"] + ["", "nope"])
        if kind == "identity" and r.randrange(2):
            return r.choice(self.t["identities"] or HOSTILE)
        if kind == "bool":
            return r.random() < 0.5
        if kind == "interface":
            return r.choice(INTERFACES) if r.randrange(3) else self.text()
        if kind == "property":
            return r.choice(PROPS) if r.randrange(3) else self.text()
        if kind == "variant":
            sig = self.signature(1, depth=1) or "s"
            return Variant(sig, self.value(SignatureTree(sig).types[0]))
        return self.text()

    # ------------------------------------------------------------ signatures and bodies

    def single(self, depth: int) -> str:
        r = self.rng
        kind = r.randrange(10) if depth < 3 else 0
        if kind < 5:
            return r.choice("ybnqiuxtdsog")
        if kind == 5:
            return "v"
        if kind in (6, 7):
            return "a" + self.single(depth + 1)
        if kind == 8:
            return "a{" + r.choice("ybnqiuxtdsog") + self.single(depth + 1) + "}"
        return "(" + "".join(self.single(depth + 1) for _ in range(r.randint(1, 3))) + ")"

    def signature(self, most: int = 4, depth: int = 0) -> str:
        sig = "".join(self.single(depth) for _ in range(self.rng.randint(0, most)))
        return sig if len(sig) <= 255 else sig[:0]

    def value(self, t: SignatureType) -> Any:
        r = self.rng
        token = t.token
        if token == "y":
            return r.randrange(256)
        if token == "b":
            return r.random() < 0.5
        if token in "nqiuxt":
            bits = {"n": 16, "q": 16, "i": 32, "u": 32, "x": 64, "t": 64}[token]
            lo, hi = (0, 2**bits - 1) if token in "qut" else (-(2 ** (bits - 1)),
                                                               2 ** (bits - 1) - 1)
            return r.choice([lo, hi, 0, 1, r.randint(lo, hi)])
        if token == "d":
            return r.choice([0.0, -1.5, math.inf, -math.inf, math.nan, 1e308, r.random()])
        if token == "s":
            return self.text()
        if token == "o":
            return self.path()
        if token == "g":
            return self.signature(2, depth=2)
        if token == "v":
            sig = self.single(2)
            return Variant(sig, self.value(SignatureTree(sig).types[0]))
        if token == "a":
            child = t.children[0]
            n = r.choice([0, 1, 2, 5])
            if child.token == "y":
                return r.randbytes(n * 8)
            if child.token == "{":
                key_t, value_t = child.children
                return {self.value(key_t): self.value(value_t) for _ in range(n)}
            return [self.value(child) for _ in range(n)]
        if token == "(":
            return [self.value(c) for c in t.children]
        raise ValueError(token)

    def body(self, signature: str) -> list[Any]:
        return [self.value(t) for t in SignatureTree(signature).types]

    # ------------------------------------------------------------ whole calls

    def where(self, interface: str) -> str:
        """The object a known method lives on (mostly), else a random path."""
        r = self.rng
        if r.randrange(5) == 0:
            return self.path()
        if interface == DEVICE and self.t["device_paths"]:
            return r.choice(self.t["device_paths"])
        if interface == REQUEST:
            return r.choice(self.t["request_paths"] + [f"{ROOT}/requests/{r.randrange(100)}"])
        if interface in (PROPERTIES, INTROSPECTABLE, PEER):
            return r.choice([ROOT, *self.t["device_paths"], *self.t["guest_paths"],
                             *self.t["request_paths"]])
        return ROOT

    def call(self) -> tuple[str, Message, bool]:
        """(category, message, mutating): one call."""
        r = self.rng
        iface, member, sig, kinds, mutating = r.choice(METHODS)
        path = self.where(iface)
        category = r.choices(
            ["right", "wrong-signature", "unknown-member", "unknown-interface", "unknown-path",
             "no-interface", "properties", "introspect", "object-manager"],
            [30, 20, 8, 7, 8, 7, 10, 6, 4])[0]
        body: list[Any] = []
        if category == "right":
            body = [self.arg(k) for k in kinds]
        elif category == "wrong-signature":
            while (new := self.signature()) == sig:
                pass
            sig, body = new, self.body(new)
        elif category == "unknown-member":
            member, sig = self.member(), self.signature()
            body = self.body(sig)
        elif category == "unknown-interface":
            iface, member, sig = self.interface(), self.member(), self.signature()
            body = self.body(sig)
        elif category == "unknown-path":
            path, body = self.path(), [self.arg(k) for k in kinds]
        elif category == "no-interface":
            iface, body = "", [self.arg(k) for k in kinds]
            path = r.choice([path, ROOT])
        elif category == "properties":  # mostly on the right object, the right name
            iface, member = PROPERTIES, r.choice(["Set", "Set", "Get", "GetAll"])
            sig = {"Set": "ssv", "Get": "ss", "GetAll": "s"}[member]
            target = r.choice([MANAGER, DEVICE, REQUEST, GUEST])
            path = r.choice({MANAGER: [ROOT], DEVICE: self.t["device_paths"],
                             REQUEST: self.t["request_paths"],
                             GUEST: self.t["guest_paths"]}[target] or [ROOT])
            if r.randrange(5) == 0:
                path = self.where(target)
            name = r.choice(r.choice([PROPS_OF[target], PROPS]) if r.randrange(4)
                            else [self.text()])
            body = [target if r.randrange(6) else self.text(), name,
                    self.arg("variant")][:len(sig)]
        elif category == "introspect":
            iface, member, sig, path = INTROSPECTABLE, "Introspect", "", self.path()
        else:
            iface, member, sig, path = OBJECT_MANAGER, "GetManagedObjects", "", self.path()
            if r.randrange(4) == 0:
                sig = self.signature(2)
                body = self.body(sig)
        flags = MessageFlag.NONE
        roll = r.randrange(100)
        if roll < 2:
            flags = MessageFlag.NO_REPLY_EXPECTED
        elif roll < 12:
            flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION | MessageFlag.NO_AUTOSTART
        msg = Message(destination=NAME, path=path, interface=iface or None, member=member,
                      signature=sig, body=body, flags=flags)
        mutating = (iface, member) in MUTATING or (not iface and any(
            m == member for _, m in MUTATING))
        return category, msg, mutating


async def _connect(address: str) -> MessageBus:
    bus = await MessageBus(bus_address=address).connect()
    # A client pipelining 1 MiB calls fills the send buffer at once: the same
    # dbus-fast writer fix as phyllod's own.
    bus._writer.sock = _SendSocket(bus._writer.sock)
    return bus


def _well_named(error: str) -> bool:
    return error.startswith((PHYLLOD_ERROR, DBUS_ERROR))


async def run_batch(address: str, seed: int, count: int, targets: dict[str, list[str]],
                    window: int = 64) -> dict[str, Any]:
    """Send ``count`` crafted calls, ``window`` at a time; a summary of the replies."""
    bus = await _connect(address)
    crafter = Crafter(seed, targets)
    errors: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    out: dict[str, Any] = {"calls": 0, "returns": 0, "errors": 0, "no_reply_expected": 0,
                           "timeouts": 0, "failures": [], "bad_error_names": {},
                           "mutating_calls": 0, "mutating_returned": [],
                           "traceback_in_reply": 0}
    gate = asyncio.Semaphore(window)

    async def one(category: str, msg: Message, mutating: bool) -> None:
        try:
            if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
                await bus.send(msg)
                out["no_reply_expected"] += 1
                return
            try:
                reply = await asyncio.wait_for(bus.call(msg), 60)
            except TimeoutError:
                out["timeouts"] += 1
                return
            except Exception as e:  # the connection went away, a marshalling error
                out["failures"].append(f"{category} {msg.interface}.{msg.member}: {e!r}"[:300])
                return
            assert reply is not None
            if reply.message_type is MessageType.METHOD_RETURN:
                out["returns"] += 1
                if mutating:
                    out["mutating_returned"].append(
                        f"{msg.path} {msg.interface}.{msg.member}({msg.signature})"[:300])
            else:
                out["errors"] += 1
                name = reply.error_name or ""
                errors[name] += 1
                text = str(reply.body[0]) if reply.body else ""
                if not _well_named(name):
                    out["bad_error_names"].setdefault(
                        name, f"{category} {msg.path} {msg.interface}.{msg.member}"
                              f"({msg.signature}): {text}"[:500])
                if "Traceback" in text:
                    out["traceback_in_reply"] += 1
        finally:
            gate.release()

    started = time.monotonic()
    tasks = []
    for _ in range(count):
        category, msg, mutating = crafter.call()
        categories[category] += 1
        out["calls"] += 1
        out["mutating_calls"] += mutating
        await gate.acquire()
        tasks.append(asyncio.ensure_future(one(category, msg, mutating)))
    await asyncio.gather(*tasks)
    out["seconds"] = time.monotonic() - started
    out["error_names"] = dict(errors)
    out["categories"] = dict(categories)
    bus.disconnect()
    return out


async def impersonate(address: str, listener: str) -> dict[str, Any]:
    """As nobody, with phyllod not running: try to own its name and to pass for it."""
    bus = await MessageBus(bus_address=address).connect()
    out: dict[str, Any] = {"unique_name": bus.unique_name}

    async def call(**kw: Any) -> str:
        reply = await bus.call(Message(**kw))
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            return reply.error_name or "?"
        return f"returned {reply.signature} {reply.body!r}"

    dbus = {"destination": "org.freedesktop.DBus", "path": "/org/freedesktop/DBus",
            "interface": "org.freedesktop.DBus"}
    out["request_name"] = [await call(**dbus, member="RequestName", signature="su",
                                      body=[NAME, flags]) for flags in (0, 1, 2, 4, 7)]
    # The mutating methods, sent to the unowned name.
    out["mutating_calls"] = [
        await call(destination=NAME, path=path, interface=iface, member=member,
                   signature=sig, body=body)
        for path, iface, member, sig, body in [
            (ROOT, MANAGER, "Attach", "ss", ["usb:1-2", "test"]),
            (ROOT, MANAGER, "Reload", "", []),
            (f"{ROOT}/devices/usb_1_2", DEVICE, "Detach", "", []),
            (f"{ROOT}/requests/1", REQUEST, "Answer", "sb", ["test", True])]]
    # Signals claiming to come from phyllod (the sender header is the bus's to write).
    for sender in (NAME, ":1.0", "org.freedesktop.DBus"):
        await bus.send(Message.new_signal(f"{ROOT}/devices/usb_1_2", PROPERTIES,
                                          "PropertiesChanged", "sa{sv}as",
                                          [DEVICE, {"State": Variant("s", "attached")}, []]))
        forged = Message(message_type=MessageType.SIGNAL, path=ROOT, interface=OBJECT_MANAGER,
                         member="InterfacesAdded", signature="oa{sa{sv}}", sender=sender,
                         body=[f"{ROOT}/devices/forged", {DEVICE: {"Id": Variant("s", "x")}}])
        await bus.send(forged)
    # Replies nobody asked for, to the listener's pending calls (the bus must drop them).
    refused: list[str] = []

    def on_error(msg: Message) -> bool:
        if msg.message_type is MessageType.ERROR and msg.reply_serial in forged_serials:
            refused.append(msg.error_name or "?")
        return False

    bus.add_message_handler(on_error)
    forged_serials: set[int] = set()
    for serial in range(1, 21):
        reply = Message(message_type=MessageType.METHOD_RETURN, destination=listener,
                        reply_serial=serial, sender=NAME, signature="(bba{ss})",
                        body=[[True, False, {}]], serial=bus.next_serial())
        forged_serials.add(reply.serial)
        await bus.send(reply)
    await call(**dbus, member="GetId")  # a round trip: the bus has answered the forgeries
    out["forged_replies_refused"] = refused
    out["owner_after"] = await call(**dbus, member="GetNameOwner", signature="s", body=[NAME])
    bus.disconnect()
    return out


async def fire_and_forget(address: str, count: int, detach: str) -> dict[str, Any]:
    """Failing reads flagged NO_REPLY_EXPECTED, then one round trip (all were read);
    with ``detach``, a Detach of it flagged so too, and time for phyllod to check
    who sent it (a caller gone from the bus is no one's to authorize)."""
    bus = await MessageBus(bus_address=address).connect()
    calls = [(ROOT, MANAGER, "GetDevice", "s", ["usb:9-9"]),
             (ROOT, MANAGER, "Explain", "s", ["nope"]),
             (ROOT, PROPERTIES, "Get", "ss", [MANAGER, "Nope"]),
             (ROOT, PROPERTIES, "GetAll", "s", ["no.such.Interface"]),
             (ROOT, PROPERTIES, "Set", "ssv", [MANAGER, "Version", Variant("s", "x")]),
             ("/", PROPERTIES, "Get", "ss", [MANAGER, "Version"])]
    for i in range(count):
        path, iface, member, sig, body = calls[i % len(calls)]
        await bus.send(Message(destination=NAME, path=path, interface=iface, member=member,
                               signature=sig, body=body, flags=MessageFlag.NO_REPLY_EXPECTED))
    if detach:
        await bus.send(Message(destination=NAME, path=ROOT, interface=MANAGER, member="Detach",
                               signature="s", body=[detach],
                               flags=MessageFlag.NO_REPLY_EXPECTED))
    reply = await bus.call(Message(destination=NAME, path=ROOT, interface=PEER, member="Ping"))
    assert reply is not None
    if detach:
        await asyncio.sleep(1.0)
    bus.disconnect()
    return {"sent": count, "ping": reply.message_type.name}


#: Multi-megabyte arguments: each method and property access that takes a string,
#: with characters that repr() and UTF-8 blow up (a control character is 4 characters
#: in repr, U+00E9 is 2 bytes, U+E0001 is 4 bytes and 10 characters in repr).
HUGE_CALLS = [
    (ROOT, MANAGER, "Explain", "s", ["device"]),
    (ROOT, MANAGER, "GetDevice", "s", ["device"]),
    (ROOT, MANAGER, "Attach", "ss", ["device", "device"]),
    (ROOT, MANAGER, "Attach", "ss", ["usb:1-2", "device"]),
    (ROOT, MANAGER, "Detach", "s", ["device"]),
    (ROOT, MANAGER, "ClearOverride", "s", ["device"]),
    (ROOT, MANAGER, "Forget", "s", ["device"]),
    (f"{ROOT}/devices/usb_1_2", DEVICE, "Attach", "s", ["device"]),
    (f"{ROOT}/requests/1", REQUEST, "Answer", "sb", ["device", False]),
    (ROOT, PROPERTIES, "Get", "ss", ["device", "Version"]),
    (ROOT, PROPERTIES, "Get", "ss", [MANAGER, "device"]),
    (ROOT, PROPERTIES, "Get", "ss", [PEER, "device"]),
    (ROOT, PROPERTIES, "GetAll", "s", ["device"]),
    (ROOT, PROPERTIES, "Set", "ssv", [MANAGER, "Version", "variant"]),
    ("path", INTROSPECTABLE, "Introspect", "", []),
    ("path", PROPERTIES, "GetAll", "s", [MANAGER]),
    ("path", MANAGER, "Explain", "s", ["usb:1-2"]),
    (ROOT, MANAGER, "Explain", "as", ["array"]),
]
HUGE_CHARS = "\x01\u00e9\U000e0001x"


async def huge(address: str, size: int) -> dict[str, Any]:
    """Every call of HUGE_CALLS with ``size``-character strings; what came back."""
    bus = await _connect(address)
    out: dict[str, Any] = {"calls": 0, "replies": {}, "longest_reply_text": 0,
                           "failures": []}
    for char in HUGE_CHARS:
        big = char * (size if char.isascii() else size // 4)
        for path, iface, member, sig, kinds in HUGE_CALLS:
            body = [{"device": big, "variant": Variant("s", big),
                     "array": [big[:1000]] * (size // 4000)}.get(k, k) for k in kinds]
            msg = Message(destination=NAME, path=f"/{'p' * size}" if path == "path" else path,
                          interface=iface, member=member, signature=sig, body=body)
            out["calls"] += 1
            try:
                reply = await asyncio.wait_for(bus.call(msg), 60)
            except Exception as e:  # phyllod fell off the bus, or the bus refused the call
                out["failures"].append(f"{iface}.{member}({sig}) {char!r}: {e!r}"[:300])
                continue
            assert reply is not None
            name = reply.error_name or reply.message_type.name
            out["replies"][name] = out["replies"].get(name, 0) + 1
            text = str(reply.body[0]) if reply.body else ""
            out["longest_reply_text"] = max(out["longest_reply_text"], len(text))
    bus.disconnect()
    return out


def client_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["batch", "impersonate", "fire-and-forget", "huge"])
    parser.add_argument("address")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--targets", default="{}")
    parser.add_argument("--detach", default="")
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("listener", nargs="?")
    args = parser.parse_args()
    if args.mode == "batch":
        result = asyncio.run(run_batch(args.address, args.seed, args.count,
                                       json.loads(args.targets)))
    elif args.mode == "huge":
        result = asyncio.run(huge(args.address, args.size))
    elif args.mode == "fire-and-forget":
        result = asyncio.run(fire_and_forget(args.address, args.count, args.detach))
    else:
        result = asyncio.run(impersonate(args.address, args.listener))
    print(json.dumps(result))


if __name__ == "__main__":
    client_main()
    sys.exit(0)

# ====================================================================== the tests

import private_bus  # noqa: E402
import pytest  # noqa: E402
from daemon_process import child_env  # noqa: E402
from phyllod_on_bus import Phyllod  # noqa: E402

pytestmark = pytest.mark.integration

ASK = """\
[settings]
ask_timeout = 3600
debounce = 0

[[rule]]
name = "keys"
match = { vendor = "1050" }
action = "ask"
"""


#: Test only: root may send phyllod anything, so the root half reaches phyllod's own
#: dispatch (unknown interfaces and members, Properties.Set) instead of stopping at
#: the bus; nobody stays under the shipped policy alone, as on a real system.
ROOT_SENDS_ANYTHING = f"""\
  <policy user="root">
    <allow send_destination="{NAME}"/>
  </policy>
"""


def _let_root_send_anything(bus: private_bus.PrivateSystemBus) -> None:
    assert bus.dir is not None
    config = bus.dir / "system.conf"
    config.write_text(config.read_text().replace(
        "</busconfig>", ROOT_SENDS_ANYTHING + "</busconfig>"))
    # ReloadConfig answers once the new configuration is in force (see logind_mock).
    bus.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
             "ReloadConfig")


def _client(argv: list[str], nobody: bool, timeout: float) -> dict[str, Any]:
    """This file as the client, as root or as nobody; its JSON summary."""
    cmd = [sys.executable, str(HERE), *argv]
    env = {k: v for k, v in child_env().items() if k not in ("LD_PRELOAD", "UMOCKDEV_DIR")}
    if nobody:
        r = private_bus.run_as_nobody(cmd, env, timeout=timeout)
    else:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                           cwd="/")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _plain(v: Any) -> Any:
    if isinstance(v, Variant):
        return [v.signature, _plain(v.value)]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in sorted(v.items())}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


async def _snapshot_async(address: str) -> dict[str, Any]:
    bus = await MessageBus(bus_address=address).connect()
    try:
        replies = []
        for iface, member, sig, body in ((OBJECT_MANAGER, "GetManagedObjects", "", []),
                                         (PROPERTIES, "GetAll", "s", [MANAGER])):
            reply = await bus.call(Message(destination=NAME, path=ROOT, interface=iface,
                                           member=member, signature=sig, body=body))
            assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
            replies.append(_plain(reply.body[0]))
        return {"objects": replies[0], "manager": replies[1]}
    finally:
        bus.disconnect()


def _snapshot(phyllod: Phyllod) -> dict[str, Any]:
    """What the bus shows and what the state directory holds."""
    state = {p.name: p.read_text() for p in sorted(phyllod.state_dir.glob("*"))
             if p.is_file()}
    return {**asyncio.run(_snapshot_async(phyllod.bus.address)), "state": state}


def _settled(phyllod: Phyllod, timeout: float = 30.0) -> dict[str, Any]:
    """A snapshot that stayed the same for a second (no reconcile left to run)."""
    deadline = time.monotonic() + timeout
    last = _snapshot(phyllod)
    while True:
        time.sleep(1.0)
        now = _snapshot(phyllod)
        busy = any(o.get(DEVICE, {}).get("State", ["s", ""])[1] in ("attaching", "detaching")
                   for o in now["objects"].values())
        if now == last and not busy:
            return now
        assert time.monotonic() < deadline, "the daemon never settled"
        last = now


def _targets(snapshot: dict[str, Any]) -> dict[str, list[str]]:
    objects = snapshot["objects"]
    devices = {p: o[DEVICE] for p, o in objects.items() if DEVICE in o}
    return {
        "device_paths": sorted(devices),
        "device_ids": sorted(d["Id"][1] for d in devices.values()),
        "identities": sorted({d["Identity"][1] for d in devices.values()}
                             | set(snapshot["manager"]["Remembered"][1])),
        "guests": sorted(o[GUEST]["Name"][1] for o in objects.values() if GUEST in o),
        "guest_paths": sorted(p for p, o in objects.items() if GUEST in o),
        "request_paths": sorted(p for p, o in objects.items() if REQUEST in o),
    }


def _ok(phyllod: Phyllod, *args: str, **where: str) -> str:
    r = phyllod.call(*args, **where)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _plug_key(phyllod: Phyllod, port: str, devnum: int, serial: str) -> None:
    phyllod.tb.plug(port, devnum=devnum, vendor="1050", product="0407", serial=serial,
                    manufacturer="Yubico", product_name="YubiKey", interfaces=("030101",))


def _check_batch(result: dict[str, Any], count: int) -> None:
    assert result["calls"] == count
    assert result["failures"] == [], result["failures"][:5]
    assert result["timeouts"] == 0
    assert result["bad_error_names"] == {}, result["bad_error_names"]
    assert result["traceback_in_reply"] == 0
    assert result["returns"] + result["errors"] + result["no_reply_expected"] == count


def _histogram(*results: dict[str, Any]) -> Counter[str]:
    total: Counter[str] = Counter()
    for r in results:
        total.update(r["error_names"])
    return total


def _compact(histogram: Counter[str]) -> str:
    short = {PHYLLOD_ERROR: "", DBUS_ERROR: "DBus."}
    parts = []
    for name, n in histogram.most_common():
        for prefix, to in short.items():
            if name.startswith(prefix):
                name = to + name[len(prefix):]
        parts.append(f"{name} {n}")
    return "; ".join(parts)


@pytest.mark.reliability
def test_hostile_calls_get_named_errors_and_nobody_changes_nothing(phyllod: Phyllod,
                                                                     reliability):
    total = reliability.size(10_000, 100_000)
    half = total // 2
    (phyllod.policy_dir / "10-ask.toml").write_text(ASK)
    phyllod.start()
    assert phyllod.proc is not None
    targets = _targets(_snapshot(phyllod))
    assert targets["device_ids"] == ["usb:1-2"] and targets["guests"] == ["test"]

    # Root: everything reaches phyllod, the mutating calls work (no polkit: root may).
    _let_root_send_anything(phyllod.bus)
    root = _client(["batch", phyllod.bus.address, "--seed", "1", "--count", str(half),
                    "--targets", json.dumps(targets)], nobody=False, timeout=600)
    _check_batch(root, half)
    assert root["returns"] > 0 and root["mutating_returned"], "root's calls never worked"
    assert phyllod.proc.alive
    _settled(phyllod)

    # State for nobody to aim at: an override, a remembered answer, a pending request.
    _ok(phyllod, "ClearOverride", "s", "usb:1-2")
    _ok(phyllod, "Detach", "s", "usb:1-2")
    _plug_key(phyllod, "1-3", 7, "K1602738")
    phyllod.proc.wait_log(r"usb:1-3 .*plugged in")
    request = _settled(phyllod)
    (first,) = _targets(request)["request_paths"]
    _ok(phyllod, "Answer", "sb", "", "true", path=first, interface=REQUEST)
    _plug_key(phyllod, "1-4", 8, "K2519044")
    phyllod.proc.wait_log(r"usb:1-4 .*plugged in")
    deadline = time.monotonic() + 15
    while not _targets(before := _settled(phyllod))["request_paths"]:
        assert time.monotonic() < deadline, "the second key was never asked about"
    state = before["state"]
    assert '"identity": "usb:1-2"' in state.get("overrides.json", ""), state
    assert "usb:1050:0407:K1602738" in state.get("answers.json", ""), state
    targets = _targets(before)
    assert len(targets["request_paths"]) == 1 and len(targets["device_ids"]) == 3

    mark = phyllod.proc.mark()
    nobody = _client(["batch", phyllod.bus.address, "--seed", "2", "--count",
                      str(total - half), "--targets", json.dumps(targets)], nobody=True,
                     timeout=600)
    _check_batch(nobody, total - half)
    assert nobody["mutating_returned"] == [], nobody["mutating_returned"][:10]
    after = _snapshot(phyllod)
    assert after == before, "nobody's calls changed what phyllod shows or keeps"
    # polkit is not running: phyllod refused nobody itself, it was not the bus.
    assert nobody["error_names"].get(PHYLLOD_ERROR + "NotAuthorized", 0) > 0
    nobody_log = phyllod.proc.log().splitlines()[mark:]
    assert not [ln for ln in nobody_log if "override" in ln.lower() or "policy:" in ln]

    # Alive, answering, and no traceback in its log.
    assert phyllod.proc.alive
    assert _ok(phyllod, "GetDevice", "s", "usb:1-2") == f'o "{ROOT}/devices/usb_1_2"'
    log = phyllod.proc.log()
    assert "Traceback" not in log and "raised an exception" not in log, log[-5000:]

    # Root's calls reached phyllod's own dispatch: it answered the odd ones itself.
    assert {DBUS_ERROR + e for e in ("UnknownInterface", "UnknownMethod", "UnknownObject",
                                     "PropertyReadOnly", "UnknownProperty")} <= set(
        root["error_names"]), root["error_names"]
    seconds = root["seconds"] + nobody["seconds"]
    denied_by_bus = nobody["error_names"].get(DBUS_ERROR + "AccessDenied", 0)
    reliability.record(
        "hostile D-Bus calls", calls=root["calls"] + nobody["calls"],
        by_caller=f"root {root['calls']}, nobody {nobody['calls']}",
        returns=root["returns"] + nobody["returns"],
        no_reply_expected=root["no_reply_expected"] + nobody["no_reply_expected"],
        error_names=_compact(_histogram(root, nobody)),
        error_names_nobody=_compact(_histogram(nobody)),
        nobody_calls_past_the_bus=nobody["calls"] - nobody["no_reply_expected"] - denied_by_bus,
        replies_per_second=round((root["calls"] + nobody["calls"]) / seconds),
        nobody_mutating_calls_refused=nobody["mutating_calls"], nobody_state_changes=0,
        daemon_alive="yes")


@pytest.mark.reliability
def test_nobody_cannot_stand_in_for_phyllod(system_bus: private_bus.PrivateSystemBus,
                                            reliability):
    """phyllod not running: nobody can neither take its name nor pass for it."""

    async def scenario() -> tuple[dict[str, Any], list[Message], list[Message]]:
        listener = await MessageBus(bus_address=system_bus.address).connect()
        as_phyllod: list[Message] = []  # signals the bus says come from the name
        under_root: list[Message] = []  # any signal under phyllod's root path

        def collect(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.path and msg.path.startswith(ROOT):
                under_root.append(msg)

        listener.add_message_handler(collect)
        for rule in (f"type='signal',sender='{NAME}'", f"type='signal',path_namespace='{ROOT}'"):
            await listener.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="AddMatch", signature="s", body=[rule]))
        try:
            result = await asyncio.to_thread(
                _client, ["impersonate", system_bus.address, listener.unique_name],
                True, 60)
            await listener.call(Message(destination="org.freedesktop.DBus",
                                        path="/org/freedesktop/DBus",
                                        interface="org.freedesktop.DBus", member="GetId"))
            await asyncio.sleep(0.3)
            as_phyllod = [m for m in under_root if m.sender in (NAME, ":1.0")]
        finally:
            listener.disconnect()
        return result, as_phyllod, under_root

    result, as_phyllod, under_root = asyncio.run(scenario())
    # Owning the name: refused, whatever the flags.
    assert set(result["request_name"]) == {"org.freedesktop.DBus.Error.AccessDenied"}, result
    assert result["owner_after"] == "org.freedesktop.DBus.Error.NameHasNoOwner"
    # A mutating call to the unowned name reaches no one (nothing to activate here).
    assert set(result["mutating_calls"]) <= {"org.freedesktop.DBus.Error.ServiceUnknown",
                                             "org.freedesktop.DBus.Error.NameHasNoOwner"}, result
    # Forged sender headers: the bus wrote nobody's own name over each of them.
    assert as_phyllod == []
    assert under_root and {m.sender for m in under_root} == {result["unique_name"]}
    # Forged replies: the bus refused every one (no call was waiting for them).
    assert len(result["forged_replies_refused"]) == 20, result
    assert set(result["forged_replies_refused"]) == {"org.freedesktop.DBus.Error.AccessDenied"}
    reliability.record(
        "impersonating phyllod while it is down",
        name_requests_refused=len(result["request_name"]),
        mutating_calls_refused=len(result["mutating_calls"]),
        forged_signals_seen_as_phyllod=len(as_phyllod),
        forged_signals_delivered_under_own_name=len(under_root),
        forged_replies_refused=len(result["forged_replies_refused"]),
        answers=", ".join(sorted({e.removeprefix(DBUS_ERROR) for e in
                                  result["request_name"] + result["mutating_calls"]
                                  + result["forged_replies_refused"]})),
        outcome="refused")


def test_found_failing_calls_expecting_no_reply_log_no_traceback(phyllod: Phyllod):
    """dbus-fast logs "Unexpected error processing message" and a traceback, at
    ERROR, for each call flagged NO_REPLY_EXPECTED whose handler fails: any
    client could fill the journal with them. phyllod now drops the calls nobody
    waits for that it does not serve itself (all of them only read)."""
    phyllod.start()
    assert phyllod.proc is not None
    result = _client(["fire-and-forget", phyllod.bus.address, "--count", "60"], nobody=True,
                     timeout=60)
    assert result == {"sent": 60, "ping": "METHOD_RETURN"}
    # A mutating call whose caller waits for no reply is still served (root's: no polkit).
    result = _client(["fire-and-forget", phyllod.bus.address, "--count", "0",
                      "--detach", "usb:1-2"], nobody=False, timeout=60)
    assert result == {"sent": 0, "ping": "METHOD_RETURN"}
    phyllod.proc.wait_log(r"manual override for usb:1-2", timeout=10)
    log = phyllod.proc.log()
    assert "Traceback" not in log and "Unexpected error" not in log, log[-3000:]
    assert phyllod.proc.alive


#: 9 Mi characters: 9 MiB on the bus, 36 MiB once repr() escapes each one, past the
#: system bus's 32 MiB message limit (an error echoing it got phyllod disconnected).
HUGE_SIZE = 9 << 20
INVALID_ARGS = DBUS_ERROR + "InvalidArgs"


@pytest.mark.reliability
def test_multi_megabyte_arguments_get_invalid_args_and_phyllod_stays(phyllod: Phyllod,
                                                                      reliability):
    """Found: Explain or GetDevice with a multi-megabyte string got an error echoing
    it (repr), past the bus's message limit; the bus dropped phyllod, which exited.
    Every string argument and object path over 4 KiB is now refused in the gate with
    InvalidArgs before any work, and no error text repeats an argument whole."""
    phyllod.start()
    assert phyllod.proc is not None
    counts, longest = {}, 0
    for who, nobody in (("nobody", True), ("root", False)):
        if not nobody:
            _let_root_send_anything(phyllod.bus)
        result = _client(["huge", phyllod.bus.address, "--size", str(HUGE_SIZE)],
                         nobody=nobody, timeout=900)
        assert phyllod.proc.alive, phyllod.proc.log()[-3000:]
        assert result["failures"] == [], result["failures"]
        assert result["calls"] == len(HUGE_CALLS) * len(HUGE_CHARS)
        # The bus itself refuses some of nobody's calls (Properties.Set): its own error.
        assert set(result["replies"]) <= {INVALID_ARGS, DBUS_ERROR + "AccessDenied"}, result
        assert result["replies"].get(INVALID_ARGS, 0) > 0
        # No reply repeats an argument: phyllod's ~100 characters, the bus's refusal ~400.
        assert result["longest_reply_text"] <= 1024, result
        counts[who] = result["replies"]
        longest = max(longest, result["longest_reply_text"])
        assert _ok(phyllod, "GetDevice", "s", "usb:1-2") == f'o "{ROOT}/devices/usb_1_2"'
    log = phyllod.proc.log()
    assert "Traceback" not in log and "lost the connection" not in log, log[-3000:]
    reliability.record("multi-megabyte D-Bus arguments", size_characters=HUGE_SIZE,
                       calls=len(HUGE_CALLS) * len(HUGE_CHARS) * 2,
                       replies_nobody=_compact(Counter(counts["nobody"])),
                       replies_root=_compact(Counter(counts["root"])),
                       longest_reply_characters=longest, daemon_alive="yes")
