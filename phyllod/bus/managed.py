"""GetManagedObjects' answer, kept marshalled object by object.

The answer with 500 devices is about 450 KiB; marshalled whole, it cost
phyllod some 17 ms (and building every property's Variant first) after each
state that changed anything, however little: a plug, the attach that followed,
each of them. Each object's entry is marshalled when the object comes or
changes, and an answer is the entries joined, kept until one changes.

Joining is exact because of how D-Bus lays out ``a{oa{sa{sv}}}``: the body
is the array's length (4 bytes), padding to 8, then the entries, each
starting on an 8-byte boundary. An entry marshalled alone, at that same
offset, has all its inner alignment right wherever it lands on a boundary
(nothing inside aligns to more than 8): the join pads each entry to 8 and
writes the length. ``tests/unit/bus/test_managed.py`` holds it to dbus-fast's
marshalling of the whole dict, byte for byte.
"""

from __future__ import annotations

from typing import Any

from phyllod.bus.strings import marshal_body
from phyllod.contract import MANAGED_OBJECTS_SIGNATURE

#: Where the first entry starts in the body: the array's length and its padding.
_HEAD = 8


class ManagedObjects:
    """Each exported object's marshalled entry by path, and the answers joined from them."""

    def __init__(self) -> None:
        self._entries: dict[str, bytes] = {}
        #: Answers by the path asked for, until an entry comes, changes or goes.
        self._answers: dict[str, bytes] = {}
        #: How many entries were marshalled (the count guards read it).
        self.marshalled = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def put(self, path: str, interface: str, variants: dict[str, Any]) -> None:
        """The object at ``path`` came or changed: marshal its entry again."""
        entry = marshal_body(MANAGED_OBJECTS_SIGNATURE, {path: {interface: variants}})
        self._entries[path] = entry[_HEAD:]
        self.marshalled += 1
        self._answers.clear()

    def drop(self, path: str) -> None:
        """The object at ``path`` went."""
        if self._entries.pop(path, None) is not None:
            self._answers.clear()

    def answer(self, path: str) -> tuple[bytes, bool]:
        """The marshalled answer for the objects below ``path`` (all for ``/``), and
        whether it was joined now (else it was kept from an earlier call)."""
        kept = self._answers.get(path)
        if kept is not None:
            return kept, False
        below = path + "/"
        body = bytearray(_HEAD)
        for p, entry in self._entries.items():
            if path == "/" or p.startswith(below):
                body += bytes(-len(body) % 8)
                body += entry
        body[:4] = (len(body) - _HEAD).to_bytes(4, "little")
        answer = bytes(body)
        if len(body) > _HEAD or path in self._entries:  # only ancestors: a bounded set
            self._answers[path] = answer
        return answer, True
