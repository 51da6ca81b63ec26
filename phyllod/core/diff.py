"""Which entries of a mapping changed between two turns, found at C speed.

A turn's inputs and outputs (devices, guests, assignments) are mostly the very
same objects as the last turn's: a plug changes one device of a thousand. Each
consumer (replan, the bus's objects, the journal's decision lines) needs only
the keys whose value is another object that is not equal, and those that came
or went; the scan by identity runs in ``map``/``compress``, not in Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import compress
from operator import is_not
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def changed_keys(old: Mapping[K, V], new: Mapping[K, V]) -> set[K]:
    """The keys whose values differ, or that only one side has (no value is None)."""
    if old is new or old == new:  # equal: compared by identity first, in C
        return set()
    out = set()
    came = 0
    for k in compress(new, map(is_not, map(old.get, new), new.values())):
        if k not in old:
            came += 1
            out.add(k)
        elif old[k] != new[k]:
            out.add(k)
    if len(old) > len(new) - came:  # some went
        out |= old.keys() - new.keys()
    return out
