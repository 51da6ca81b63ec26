"""Policy texts the tests write, built one way: ``rule(...)`` gives one ``[[rule]]``.

Used by the integration tests and the lab's (tests/lab/support/lab_phyllod.py),
so the keyboard rule the suites lean on is spelled once.
"""

from __future__ import annotations


def rule(name: str, match: str, *, guest: str = "", action: str = "") -> str:
    """One rule: ``match`` is the inline table's inside, e.g. ``vendor = "0627"``."""
    lines = ["[[rule]]", f'name = "{name}"', f"match = {{ {match} }}"]
    if action:
        lines.append(f'action = "{action}"')
    if guest:
        lines.append(f'guest = "{guest}"')
    return "\n".join(lines) + "\n"


#: QEMU's emulated USB keyboard (usb-kbd, 0627:0001) and what umockdev plugs.
KEYBOARD = 'vendor = "0627"'
#: Keyboards go to the guest 'work' by rule 'keyboard'.
KEYBOARD_TO_WORK = rule("keyboard", KEYBOARD, guest="work")
