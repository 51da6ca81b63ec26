"""device_text.clean over every class of character a device can put in its strings."""

from __future__ import annotations

import pytest

from phyllod.core.device_text import MAX_TEXT, REPLACEMENT, clean
from phyllod.ctl import output as ctl_format

R = REPLACEMENT

CASES = [
    # (what, raw, kept)
    ("plain ASCII", "YubiKey OTP+FIDO+CCID", "YubiKey OTP+FIDO+CCID"),
    ("markup is text", "<b>x</b>&amp;'\"", "<b>x</b>&amp;'\""),
    ("letters of any script", "Ünïcødé 日本語 ✓ \U0001f600", "Ünïcødé 日本語 ✓ \U0001f600"),
    ("the kernel's newline and padding", "  QEMU  \n", "QEMU"),
    ("C0: BEL, BS, ESC", "a\x07c\x08d\x1b[2J", f"a{R}c{R}d{R}[2J"),
    ("NUL ends it, as a C string", "a\x1bb\x00c\x1b", f"a{R}b"),
    ("NUL in bytes", b"before-nul\x00\x1b[2Jafter", "before-nul"),
    ("C0: tab, CR, LF inside", "a\tb\rc\nd", f"a{R}b{R}c{R}d"),
    ("C0: FS/GS/RS/US", "a\x1cb\x1dc\x1ed\x1fe", f"a{R}b{R}c{R}d{R}e"),
    ("DEL", "a\x7fb", f"a{R}b"),
    ("C1: CSI, OSC, NEL, ST", "a\x9b31m\x9d0;t\x9c\x85z", f"a{R}31m{R}0;t{R}{R}z"),
    ("bidi: ALM, LRM, RLM", "a\u061cb\u200ec\u200fd", f"a{R}b{R}c{R}d"),
    ("bidi: embeddings and overrides", "\u202ax\u202by\u202cz\u202dw\u202ev",
     f"{R}x{R}y{R}z{R}w{R}v"),
    ("bidi: isolates", "a\u2066b\u2067c\u2068d\u2069e", f"a{R}b{R}c{R}d{R}e"),
    ("line and paragraph separators", "a\u2028b\u2029c", f"a{R}b{R}c"),
    ("zero-width space, joiners, word joiner, BOM", "a\u200bb\u200cc\u200dd\u2060e\ufefff",
     f"a{R}b{R}c{R}d{R}e{R}f"),
    ("soft hyphen, Mongolian vowel separator", "a\u00adb\u180ec", f"a{R}b{R}c"),
    ("tag characters", "flag\U000e0067\U000e0062", f"flag{R}{R}"),
    ("lone surrogates (surrogateescape)", "bad\udcff\udcfe!", f"bad{R}{R}!"),
    ("private use and unassigned", "a\ue000b\U0010fffdc\u0378d", f"a{R}b{R}c{R}d"),
    ("noncharacters", "a\ufffeb\uffffc", f"a{R}b{R}c"),
    ("other spaces become a space", "a\u00a0b\u2003c\u3000d", "a b c d"),
    ("invalid UTF-8 bytes", b"bad\xff\xfe\xc3\x28<x>", f"bad{R}{R}{R}(<x>"),
    ("UTF-8 encoded surrogate and beyond U+10FFFF", b"a\xed\xa0\x80b\xf4\x90\x80\x80c",
     f"a{R}{R}{R}b{R}{R}{R}{R}c"),
    ("overlong encoding", b"a\xc0\xafb", f"a{R}{R}b"),
    ("bytes that are UTF-8", "Ünï\u202e".encode(), f"Ünï{R}"),
    ("nothing", "", ""),
    ("None", None, ""),
    ("only controls around", "\x07\x1b", f"{R}{R}"),
]


@pytest.mark.parametrize(("raw", "kept"), [(raw, kept) for _, raw, kept in CASES],
                         ids=[what for what, _, _ in CASES])
def test_each_class_of_character(raw: str | bytes | None, kept: str):
    assert clean(raw) == kept


@pytest.mark.parametrize("raw", [raw for _, raw, _ in CASES], ids=[w for w, _, _ in CASES])
def test_what_is_kept_is_printable_so_phyllodctl_shows_it_as_is(raw: str | bytes | None):
    """One character class for both: phyllodctl escapes only what clean already replaced
    (and the backslash, which is printable and kept)."""
    text = clean(raw)
    assert text.isprintable()
    assert ctl_format.escape(text) == text


@pytest.mark.parametrize("raw", [
    "x" * 65536, b"x" * 65536, "\u202e" * 65536, b"\xff" * 65536,
    "\U0001f600" * 65536, ("\U0001f600" * 300).encode(), "a" * 255 + "\U0001f600" * 3,
], ids=["ascii", "ascii bytes", "bidi", "invalid bytes", "astral", "astral bytes", "edge"])
def test_over_long_input_is_cut_to_max_text_characters(raw: str | bytes):
    assert len(clean(raw)) == MAX_TEXT


def test_a_cut_inside_a_multibyte_character_adds_no_replacement():
    raw = ("é" * MAX_TEXT).encode()  # 2 bytes each: the byte window is cut mid-character
    assert clean(raw) == "é" * MAX_TEXT
    assert clean(raw, limit=10) == "é" * 10


def test_limit():
    assert clean("abcdef", limit=3) == "abc"
    assert clean(" a\u202e ", limit=1) == "a"
