"""GetManagedObjects' answer, kept marshalled object by object.

The answer with 500 devices is about 450 KiB; marshalled whole, it cost
phyllod some 17 ms (and building every property's Variant first) after each
state that changed anything, however little: a plug, the attach that followed,
each of them. Each object's entry is marshalled when the object comes or
changes; an answer is the entries joined (one ``bytes.join``, some 0.1 ms for
500 devices), made for each call rather than kept: a kept answer is a second
copy of every entry, half a megabyte at that scale.

Joining is exact because of how D-Bus lays out ``a{oa{sa{sv}}}``: the body
is the array's length (4 bytes), padding to 8, then the entries, each
starting on an 8-byte boundary. An entry marshalled alone, at that same
offset, has all its inner alignment right wherever it lands on a boundary
(nothing inside aligns to more than 8): each entry is kept padded to 8, and
the join writes the length and leaves out the last entry's padding.
``tests/unit/bus/test_managed.py`` holds it to dbus-fast's marshalling of the
whole dict, byte for byte.
"""

from __future__ import annotations

from typing import Any

from phyllod.bus.strings import marshal_body
from phyllod.contract import MANAGED_OBJECTS_SIGNATURE

#: Where the first entry starts in the body: the array's length and its padding.
_HEAD = 8
_PADS = [bytes(n) for n in range(8)]


class ManagedObjects:
    """Each exported object's marshalled entry by path, and the answers joined from them."""

    def __init__(self) -> None:
        #: path → (the entry padded to 8 bytes, how many bytes of padding)
        self._entries: dict[str, tuple[bytes, int]] = {}
        #: How many entries were marshalled (the count guards read it).
        self.marshalled = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def entry(self, path: str) -> bytes:
        """The marshalled entry of the object at ``path``, as the answer holds it."""
        padded, pad = self._entries[path]
        return padded[:len(padded) - pad]

    def put(self, path: str, interface: str, variants: dict[str, Any]) -> None:
        """The object at ``path`` came or changed: marshal its entry again."""
        entry = marshal_body(MANAGED_OBJECTS_SIGNATURE, {path: {interface: variants}})[_HEAD:]
        pad = -len(entry) % 8
        self._entries[path] = (entry + _PADS[pad], pad)
        self.marshalled += 1

    def drop(self, path: str) -> None:
        """The object at ``path`` went."""
        self._entries.pop(path, None)

    def answer(self, path: str) -> bytes:
        """The marshalled answer for the objects below ``path`` (all of them for ``/``)."""
        below = path + "/"
        chosen = [e for p, e in self._entries.items() if path == "/" or p.startswith(below)]
        if not chosen:
            return bytes(_HEAD)
        last = chosen[-1][1]
        length = sum(len(padded) for padded, _ in chosen) - last
        body = b"".join([length.to_bytes(4, "little"), _PADS[4],
                         *(padded for padded, _ in chosen)])
        return body[:len(body) - last] if last else body
