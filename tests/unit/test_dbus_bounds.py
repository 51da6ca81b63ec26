"""The bus's last line of defence, as tables: what a call may carry, what a reply may say,
and which values fit the D-Bus type they are published as."""

from __future__ import annotations

import pytest
from dbus_fast import Variant

from phyllod.dbus_strings import MAX_ARGUMENT, MAX_TEXT, MAX_VALUES, bounded, fit, oversized
from phyllod.errors import excerpt

BIG = "x" * (MAX_ARGUMENT + 1)


@pytest.mark.parametrize(("path", "body", "why"), [
    ("/me/phyllo/Phyllod1", ["usb:1-2", "work"], ""),
    ("/me/phyllo/Phyllod1", ["x" * MAX_ARGUMENT], ""),
    ("/me/phyllo/Phyllod1", ["usb:1-2", True], ""),
    (None, [], ""),
    ("/me/phyllo/Phyllod1", [BIG], "an argument has 4097 characters (at most 4096)"),
    ("/me/phyllo/Phyllod1", ["ok", BIG], "an argument has 4097"),
    ("/" + "p" * MAX_ARGUMENT, [], "the object path has 4097 characters (at most 4096)"),
    ("/a", [b"\x00" * (MAX_ARGUMENT + 1)], "an argument has 4097"),
    ("/a", [Variant("s", BIG)], "an argument has 4097"),
    ("/a", [Variant("v", Variant("as", [BIG]))], "an argument has 4097"),
    ("/a", [{"k": BIG}], "an argument has 4097"),
    ("/a", [{BIG: "v"}], "an argument has 4097"),
    ("/a", [[["deep", [BIG]]]], "an argument has 4097"),
    ("/a", [["s"] * (MAX_VALUES + 1)], "more than 64 values"),
    ("/a", [dict.fromkeys(range(MAX_VALUES + 1), 0)], "more than 64 values"),
    ("/a", [[1] * 40, [2] * 40], "more than 64 values"),
    ("/a", [list(range(1_000_000))], "more than 64 values"),
])
def test_calls_over_a_bound_are_named(path, body, why):
    assert why in oversized(path, body) if why else oversized(path, body) == ""


@pytest.mark.parametrize(("value", "shown"), [
    ("usb:9-9", "'usb:9-9'"),
    ("", "''"),
    ("\x1b[2J", "'\\x1b[2J'"),
    ("\u202eevil", "'\\u202eevil'"),
    ("a\nb", "'a\\nb'"),
    ("x" * 70_000, "'" + "x" * 64 + "'… (70000 characters)"),
])
def test_an_error_quotes_an_argument_escaped_and_never_whole(value, shown):
    assert excerpt(value) == shown


def test_an_excerpt_is_short_whatever_the_argument():
    for char in ("x", "\x01", "\U000e0001", "é"):
        assert len(excerpt(char * 1_000_000)) <= 700


def test_texts_sent_are_bounded_and_say_so():
    assert bounded("short") == "short"
    assert bounded("x" * MAX_TEXT) == "x" * MAX_TEXT
    cut = bounded("x" * 100_000)
    assert len(cut) <= MAX_TEXT
    kept = cut.index("…")
    assert cut.endswith(f"… ({100_000 - kept} more characters not shown; the journal has them)")
    assert len(bounded("y" * 1000, 100)) <= 100


@pytest.mark.parametrize(("signature", "value", "fitted"), [
    ("u", 0, 0), ("u", 2**32 - 1, 2**32 - 1), ("u", 2**32, None), ("u", -1, None),
    ("u", 2**40, None), ("u", True, None), ("u", "5", None),
    ("i", -1, -1), ("i", 2**31, None), ("i", -(2**31), -(2**31)), ("i", -(2**31) - 1, None),
    ("t", 2**64 - 1, 2**64 - 1), ("t", 2**64, None),
    ("b", True, True), ("b", 1, None),
    ("s", "text", "text"), ("s", None, None), ("s", 5, None),
    ("o", "/a/b", "/a/b"),
    ("as", ["03", "e0"], ["03", "e0"]), ("as", ("a",), ["a"]), ("as", [1], None),
    ("a{ss}", {"k": "v"}, {"k": "v"}), ("a{ss}", {"k": 1}, None),
    ("ao", ["/a"], ["/a"]),
])
def test_values_fit_their_dbus_type_or_are_refused(signature, value, fitted):
    assert fit(signature, value) == fitted


def test_published_text_is_bounded():
    assert len(fit("s", "z" * 100_000)) <= MAX_TEXT
    assert all(len(v) <= MAX_TEXT for v in fit("as", ["z" * 100_000]))
