"""The host's keyboards, from /sys/class/input (a part of the sysfs adapter).

A hub or controller that carries every keyboard the host has must not be
passed without saying so (core/safety); this finds them. An input device's
verdict is kept across reads by its link's inode (see :func:`host_keyboards`):
in a slow VM following every input link cost most of a plug's turn, and a
USB keyboard is itself a new input device on every plug.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from phyllod.core.device_text import clean
from phyllod.host.sysfs_paths import SYS, links, read_attribute, resolved_root

_INPUT = re.compile(r"input[0-9]+")
_HEX_WORD = re.compile(r"[0-9a-f]{1,16}")
_EV_KEY = 1  # linux/input-event-codes.h
#: ESC, the digits and Q to D: KEY_ESC (1) … KEY_D (32) minus KEY_RESERVED (0).
_KEYBOARD_KEYS = 0xFFFFFFFE


#: An input device's keyboard verdict by (``inputN``, inode of its link): what
#: :func:`host_keyboards` found of it, its path and name, or None (no keyboard).
KeyboardsSeen = dict[tuple[str, int], tuple[str, str] | None]


def host_keyboards(sys_root: Path = SYS, seen: KeyboardsSeen | None = None) -> dict[str, str]:
    """/sys/devices path of each of the host's keyboards (``inputN``) → its name.

    A keyboard is what udev's input_id builtin calls one (``ID_INPUT_KEYBOARD``):
    EV_KEY and all of ESC, the digits and Q to D; a mouse or a power button
    is none. Virtual devices (uinput, under /sys/devices/virtual) are skipped:
    no hub or controller can take them away. The name is the device's own
    (attacker-chosen) ``name``, made safe to show.

    ``seen`` keeps each input device's verdict across calls, keyed by its name
    and the inode of its link (a device re-created under a reused name has
    another): its place, capabilities and name are fixed while it lives, so
    only devices new since the last call are looked at (following each link
    is most of the cost). It is left holding the devices present now.
    """
    found: dict[str, str] = {}
    now: KeyboardsSeen = {}
    root = ""  # resolved once, and only if a device is new
    for name, inode in links(sys_root / "class" / "input"):
        if not _INPUT.fullmatch(name):
            continue
        key = (name, inode)
        if seen is not None and key in seen:
            board = seen[key]
        else:
            root = root or str(resolved_root(sys_root))
            board = _keyboard(root, os.path.join(root, "class", "input", name))
        now[key] = board
        if board is not None:
            found[board[0]] = board[1]
    if seen is not None:
        seen.clear()
        seen.update(now)
    return found


def _keyboard(root: str, entry: str) -> tuple[str, str] | None:
    """(its /sys/devices path, its name) if the input device ``entry`` is a host keyboard.

    Plain ``os`` calls on strings: a plugged keyboard is a new input device,
    looked at in its plug's turn, and pathlib's objects cost several times the
    syscalls in a slow VM (2.5 ms of a plug's turn in the lab's L1, issue 18).
    """
    devices = os.path.join(root, "devices", "")
    real = _followed(entry, devices)
    if real is None or real.startswith(os.path.join(devices, "virtual", "")):
        return None
    if not _is_keyboard(os.path.join(real, "capabilities")):
        return None
    return (os.path.join(str(SYS), real[len(root) + 1:]),
            clean(read_attribute(os.path.join(real, "name"))))


def _followed(entry: str, devices: str) -> str | None:
    """Where the class link ``entry`` leads, if under ``devices``.

    The kernel's class links are relative links to the device's own directory,
    and every step of a path under /sys/devices is a directory: the link read
    once and joined gives the place (0.04 ms in L1, against 0.55 ms to follow
    each step). A link of another form is followed step by step.
    """
    try:
        real = os.path.normpath(os.path.join(os.path.dirname(entry), os.readlink(entry)))
    except OSError:  # gone, or not a link
        return None
    if not real.startswith(devices):
        try:
            real = os.path.realpath(entry, strict=True)
        except OSError:  # gone, or a loop
            return None
    return real if real.startswith(devices) else None


def _is_keyboard(capabilities: str) -> bool:
    """udev's test: EV_KEY, and every key bit 1…31 in the lowest word of ``key``.

    The kernel prints a bitmap as hex longs, most significant first, leading
    zero words left out: the lowest word is the last one, 32 or 64 bits wide.
    """
    ev = _lowest_word(os.path.join(capabilities, "ev"))
    key = _lowest_word(os.path.join(capabilities, "key"))
    return bool((ev >> _EV_KEY) & 1) and (key & _KEYBOARD_KEYS) == _KEYBOARD_KEYS


def _lowest_word(path: str) -> int:
    words = read_attribute(path).split()
    return int(words[-1], 16) if words and _HEX_WORD.fullmatch(words[-1]) else 0
