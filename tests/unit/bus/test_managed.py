"""GetManagedObjects' answer joined from entries marshalled one by one equals dbus-fast's
marshalling of the whole dict, byte for byte (bus/managed.py's alignment argument),
and an entry is marshalled once per change of its object."""

from __future__ import annotations

from typing import Any

import pytest
from dbus_fast import Variant

from phyllod.bus.managed import ManagedObjects
from phyllod.bus.strings import marshal_body
from phyllod.contract import MANAGED_OBJECTS_SIGNATURE

ROOT = "/me/phyllo/Phyllod1"


def _values(n: int) -> dict[str, Variant]:
    """Properties of every alignment, with texts of odd lengths (entries end anywhere)."""
    return {"Id": Variant("s", "x" * n), "Bus": Variant("u", n), "Deadline": Variant("t", n),
            "Flag": Variant("b", n % 2 == 0), "Group": Variant("i", -n),
            "Names": Variant("as", ["a" * k for k in range(n % 4)]),
            "Remembered": Variant("a{ss}", {"k" * n: "v"}), "Byte": Variant("y", n % 256)}


def _tree(count: int) -> dict[str, dict[str, dict[str, Any]]]:
    objects = {f"{ROOT}/devices/d{i}": {"me.phyllo.Phyllod1.Device": _values(i)}
               for i in range(count)}
    objects[ROOT] = {"me.phyllo.Phyllod1.Manager": _values(3)}
    return objects


def _filled(objects: dict[str, dict[str, dict[str, Any]]]) -> ManagedObjects:
    managed = ManagedObjects()
    for path, ifaces in objects.items():
        ((interface, variants),) = ifaces.items()
        managed.put(path, interface, variants)
    return managed


@pytest.mark.parametrize("count", [0, 1, 2, 7, 40])
def test_joined_entries_are_the_whole_dict_marshalled(count: int) -> None:
    objects = _tree(count)
    managed = _filled(objects)
    whole = {p: v for p, v in objects.items() if p != ROOT}
    assert managed.answer("/") == marshal_body(MANAGED_OBJECTS_SIGNATURE, objects)
    assert managed.answer(ROOT) == marshal_body(MANAGED_OBJECTS_SIGNATURE, whole)


def test_nothing_below_a_path_is_an_empty_array() -> None:
    managed = _filled(_tree(3))
    assert managed.answer("/elsewhere") == marshal_body(MANAGED_OBJECTS_SIGNATURE, {})


def test_entries_are_marshalled_once_per_change() -> None:
    objects = _tree(5)
    managed = _filled(objects)
    assert managed.marshalled == 6
    assert managed.answer(ROOT) == managed.answer(ROOT) and managed.marshalled == 6
    path = f"{ROOT}/devices/d2"
    objects[path] = {"me.phyllo.Phyllod1.Device": _values(99)}
    managed.put(path, "me.phyllo.Phyllod1.Device", _values(99))
    assert managed.answer("/") == marshal_body(MANAGED_OBJECTS_SIGNATURE, objects)
    assert managed.entry(path) == marshal_body(MANAGED_OBJECTS_SIGNATURE,
                                               {path: objects[path]})[8:]
    managed.drop(path)
    del objects[path]
    assert managed.answer("/") == marshal_body(MANAGED_OBJECTS_SIGNATURE, objects)
    assert managed.marshalled == 7 and len(managed) == 5 and path not in managed
