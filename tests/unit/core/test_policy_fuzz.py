"""Hostile input for the policy parser: whatever a file holds, only PolicyError comes out.

A policy file is written by a person, by a config-management tool or by an
editor that crashed halfway; phyllod reads it at start-up and on every reload.
Whatever it holds, the parser must answer with a Policy or with located
problems (file, line, message), never with another exception: an exception
escaping ``load_policy`` would kill the daemon at start-up, or leave a reload
half done.

The inputs mix random text, random bytes (decoded for ``parse_policy_text``,
written raw for ``load_policy``), policy documents built from strategies
(rules and settings with known and unknown keys, right and wrong types, huge
strings, deep nesting, unicode, NULs, quoted table names) and such documents
with a few characters cut or inserted. Hypothesis runs derandomized with no
example database, so every run (and CI) sees the same inputs.

What it found (each now has its own test at the end): tomllib's
RecursionError on deeply nested arrays or inline tables and int()'s
ValueError on a number of more than 4300 digits escaped as such, and so did
the ValueError of echoing such a number (a hex one tomllib reads) in a
message; and a [settings] table under a quoted name was read and then
silently dropped.
"""

from __future__ import annotations

import math
import random
import re
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from phyllod.core.policy import Policy, Rule
from phyllod.core.policy_parser import FileContent, parse_policy_text
from phyllod.core.policy_problems import PolicyError, Problem
from phyllod.host.policy_files import load_policy

T = TypeVar("T")

# ---------------------------------------------------------------- a TOML writer
# Ours, not a library's: it must be able to write what no library would
# (raw NULs, quoted table names, 5000-digit integers, 2000 nested arrays).

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"\\u{ord(ch):04x}")  # \u0000 is a legal NUL; \ud800 is not legal
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(k: str) -> str:
    return k if _BARE.match(k) else _string(k)


class Raw(str):
    """Text written into the document as is (deep nesting, huge numbers, raw NULs)."""


def _value(v: Any) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _table(header: str, body: dict[str, Any]) -> list[str]:
    lines = [header] if header else []
    lines += [f"{_key(k)} = {_value(v)}" for k, v in body.items()]
    return lines


# ---------------------------------------------------------------- the grammar
# One grammar of policy-shaped documents, driven by either of two sources of
# choices: Hypothesis draws (shrinkable, but ~30 µs a choice and a document
# takes hundreds) or a random.Random seeded by one Hypothesis draw (a hundred
# times faster, so most documents come from it; a failure prints the document).

_RULE_KEYS = ["name", "match", "guest", "action", "allow_risks", "on_sleep", "debounce",
              "reset_before_attach"]
_MATCH_KEYS = ["subsystem", "vendor", "product", "serial", "manufacturer", "product_name",
               "port", "port_below", "class", "interface_class", "not_interface_class",
               "address"]
_SETTINGS_KEYS = ["unmatched", "ask_timeout", "debounce"]

#: Values a person would plausibly write, right and wrong, per key.
_PLAUSIBLE: dict[str, list[Any]] = {
    "subsystem": ["usb", "pci", "USB", "scsi", ""],
    "vendor": ["1050", "0x1050", "10500", "xyzw", "0627"],
    "product": ["0407", "0001", "ABCD", "12"],
    "serial": ["12345678", "", " "],
    "manufacturer": ["Yubico", ""],
    "product_name": ["YubiKey", "\u00e9\u00e8"],
    "port": ["1-2", "1-2.3", "1", "1-2.", "0-0"],
    "port_below": ["1-2", "2-1.4.1", "x"],
    "class": ["e0", "0280", "030000", "0", "zz"],
    "interface_class": ["e0", "08", "E0", "0x08", "123", "e00101", "e0:01:*", ["01", "e0"]],
    "not_interface_class": ["0e", "e00103", [], "0e:*:01"],
    "address": ["0000:03:00.0", "03:00.0", "03:00.8", "3:0.0"],
    "action": ["attach", "attach", "ask", "deny", "ignore", "ATTACH", "", "detach"],
    "guest": ["work", "desktop", ["a", "b"], [], ["", "x"],
              "8f1b2a6e-0d8e-4a57-9a1c-7f4bd1f0c2aa"],
    "allow_risks": [[], ["no-reset"], ["boot-vga", "acs-override"], ["all"], [1], "x"],
    "on_sleep": ["detach", "keep", "sleep"],
    "debounce": [0, 1.5, 60, 61, -1, True, float("nan"), float("inf")],
    "reset_before_attach": [True, False, "yes", 1],
    "unmatched": ["host", "ask", "guest"],
    "ask_timeout": [1, 30, 3600, 0, 3601, 2.5, True],
}
_SPECIAL_TEXT = ["", " ", "\x00", "a\x00b", "\n", "\u202e", "\ufeff", "\U0001f600", "'", '"',
                 "\\", "\u00e9", "\t\r", "a" * 200]
_EXTRA_KEYS = ["Name", "settings", "rule", "match", "vendor"]
_NAMES = ["a", "b", "key", " ", ""]  # few: files share rule names (duplicates)
_MUTATIONS = '[]{}="\'.,#\n \t\\x\x00'
#: 64 KiB or 1 MiB of one character, legal TOML or not: how a corrupted or hostile
#: file looks. (prefix, unit, suffix, 1 MiB allowed): 1 MiB only where tomllib
#: reads it fast (a 1 MiB array of numbers takes it seconds).
_HUGE_FORMS = [('"', "x", '"', True), ('"', "\u00e9", '"', True), ("'", "\x00", "'", True),
               ("", "[", "", True), ('"', "\\u0000", '"', False), ('"""', "\n", '"""', False),
               ('"', "\n", '"', False), ("[", "1,", "]", False)]
_TZ = [None, UTC, timezone(timedelta(hours=-7, minutes=-30))]


class Choices:
    """Where the grammar's choices come from (see the two subclasses)."""

    def pick(self, options: Sequence[T]) -> T:
        raise NotImplementedError

    def number(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError

    def scalar(self) -> Any:
        raise NotImplementedError

    def rarely(self, one_in: int) -> bool:
        return self.number(1, one_in) == one_in


_text = st.one_of(st.text(max_size=8), st.text(st.characters(codec="utf-8"), max_size=8),
                  st.sampled_from(_SPECIAL_TEXT))
_scalar = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.integers(), st.floats(), _text,
    st.datetimes(timezones=st.sampled_from(_TZ)), st.dates(),
    st.integers(0, 2**64).map(lambda n: Raw(hex(n))),
)


class Drawn(Choices):
    """Choices drawn by Hypothesis: a failing document shrinks."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def pick(self, options: Sequence[T]) -> T:
        return self.draw(st.sampled_from(options))

    def number(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def text(self) -> str:
        return self.draw(_text)

    def scalar(self) -> Any:
        return self.draw(_scalar)


class Seeded(Choices):
    """Choices from a seeded random.Random: the same grammar, a hundred times faster."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def number(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def _char(self) -> str:
        r = self.rng
        pool = r.randrange(6)
        if pool == 0:
            return chr(r.randrange(0x20))  # control characters, NUL included
        if pool == 1:
            return chr(r.choice([0x7F, 0x85, 0xA0, 0x2028, 0x202E, 0xFEFF, 0xFFFF]))
        if pool == 2:
            return chr(r.randrange(0x80, 0xD800))
        if pool == 3:
            return chr(r.randrange(0x10000, 0x110000))
        return chr(r.randrange(0x20, 0x7F))

    def text(self) -> str:
        r = self.rng
        if r.randrange(8) == 0:
            return r.choice(_SPECIAL_TEXT)
        return "".join(self._char() for _ in range(r.randrange(12)))

    def scalar(self) -> Any:
        r = self.rng
        kind = r.randrange(9)
        if kind == 0:
            return r.random() < 0.5
        if kind == 1:
            return r.choice([0, 1, -1, 2**63 - 1, -(2**63), 2**64, 10**40, r.randrange(-99, 99)])
        if kind == 2:
            return r.choice([0.0, -0.0, 1.5, 1e308, 5e-324, float("inf"), float("-inf"),
                             float("nan"), r.uniform(-1e6, 1e6)])
        if kind == 3:
            return datetime(r.randrange(1, 10000), r.randrange(1, 13), r.randrange(1, 29),
                            r.randrange(24), r.randrange(60), r.randrange(60),
                            tzinfo=r.choice(_TZ))
        if kind == 4:
            return date(r.randrange(1, 10000), r.randrange(1, 13), r.randrange(1, 29))
        if kind == 5:
            return Raw(r.choice(["0x", "0o", "0b"]) + r.choice(["ff", "7", "1", "_1", "g"]))
        return self.text()


def any_value(c: Choices, depth: int = 0) -> Any:
    """A TOML value of any type: scalars, arrays and tables, a little nested."""
    kind = c.number(0, 5) if depth < 2 else 0
    if kind == 4:
        return [any_value(c, depth + 1) for _ in range(c.number(0, 3))]
    if kind == 5:
        return {c.text(): any_value(c, depth + 1) for _ in range(c.number(0, 3))}
    return c.scalar()


def _deep(depth: int, kind: str) -> Raw:
    if kind == "array":
        return Raw("[" * depth + "1" + "]" * depth)
    if kind == "table":
        return Raw("{a = " * depth + "1" + "}" * depth)
    return Raw("[" * depth + "{a = 1}" + "]" * depth)


def nasty(c: Choices) -> Any:
    """A value past what tomllib or Python handle quietly."""
    kind = c.number(0, 5)
    if kind == 0:
        return _deep(c.pick([10, 100, 500, 1000, 5000]), c.pick(["array", "table", "mixed"]))
    if kind == 1:
        return Raw("9" * c.number(4290, 6000))  # int() reads at most 4300 digits
    if kind == 2:
        return Raw("0x" + "f" * c.number(4000, 6000))  # read, but has no decimal repr
    if kind == 3:
        return Raw('"a\x00b"')  # a raw NUL: illegal in TOML
    if kind == 4:
        return Raw('"\\ud800"')  # an escaped surrogate: illegal in TOML
    return "\x00" * c.number(1, 100)  # escaped NULs: legal


def value_for(c: Choices, key: str) -> Any:
    if c.rarely(25):
        return nasty(c)
    if key in _PLAUSIBLE and c.number(0, 2):
        return c.pick(_PLAUSIBLE[key])
    return any_value(c)


def entries(c: Choices, keys: Sequence[str], extra: int = 2) -> dict[str, Any]:
    """A table with some of ``keys`` (plausible or random values) and maybe unknown keys."""
    out = {k: value_for(c, k) for k in keys if c.number(0, 2) == 0}
    for _ in range(c.number(0, extra) if c.rarely(3) else 0):
        key = c.pick(_EXTRA_KEYS) if c.number(0, 1) else c.text()
        out.setdefault(key, any_value(c))
    return out


def rule_lines(c: Choices) -> list[str]:
    body = entries(c, [k for k in _RULE_KEYS if k not in ("match", "name")])
    name_kind = c.number(0, 5)
    if name_kind < 3:
        body = {"name": c.pick(_NAMES) if name_kind < 2 else c.text(), **body}
    elif name_kind == 3:
        body = {"name": any_value(c), **body}
    if c.number(0, 1):  # attach rules are the common case: give them a guest
        body.setdefault("guest", c.pick(["work", "desktop"]))
    header = c.pick(["[[rule]]", "[[rule]]", "[[ rule ]]", '[["rule"]]', "[[rule]] # c"])
    match = entries(c, _MATCH_KEYS, extra=1)
    form = c.pick(["inline", "inline", "subtable", "none", "wrong"])
    if form == "inline":
        return _table(header, {**body, "match": match})
    if form == "wrong":
        return _table(header, {**body, "match": nasty(c) if c.rarely(10) else any_value(c)})
    lines = _table(header, body)
    if form == "subtable":
        lines += _table(c.pick(["[rule.match]", '[rule."match"]']), match)
    return lines


def settings_lines(c: Choices) -> list[str]:
    body = entries(c, _SETTINGS_KEYS)
    form = c.pick(["[settings]", "[settings]", '["settings"]', "['settings']", "[ settings ]",
                   "inline", "dotted", "wrong"])
    if form == "inline":
        return [f"settings = {_value(body)}"]
    if form == "dotted":
        return [f"settings.{_key(k)} = {_value(v)}" for k, v in body.items()]
    if form == "wrong":
        return [f"settings = {_value(c.scalar())}"]
    return _table(form, body)


def policy_document(c: Choices) -> str:
    """A TOML document shaped like a policy file: rules, settings, stray tables."""
    parts = [rule_lines(c) for _ in range(c.number(0, 3))]
    if c.number(0, 1):
        parts.insert(c.number(0, len(parts)), settings_lines(c))
    if c.rarely(4):
        parts.insert(0, _table("", {c.text(): any_value(c) for _ in range(c.number(1, 2))}))
    if c.rarely(10):
        parts.append(["rule = " + _value(any_value(c))])
    return "\n".join("\n".join(p) for p in parts) + c.pick(["\n", "", "\r\n"])


def mutated(c: Choices) -> str:
    """A policy document with a few characters cut or inserted."""
    text = policy_document(c)
    for _ in range(c.number(1, 3)):
        at = c.number(0, len(text))
        insert = "".join(c.pick(_MUTATIONS) for _ in range(c.number(0, 3)))
        text = text[:at] + insert + text[at + c.number(0, 8):]
    return text


def huge_document(c: Choices) -> str:
    """A plausible rule or settings file with one value (or key, or comment) huge."""
    start, unit, end, mib = c.pick(_HUGE_FORMS)
    value = start + unit * (1 << 20 if mib and c.rarely(8) else 1 << 16) + end
    where = c.pick([*_RULE_KEYS, *_MATCH_KEYS, "settings", "top", "key", "comment"])
    if where in _MATCH_KEYS:
        return f'[[rule]]\nname = "h"\nguest = "g"\nmatch = {{ {where} = {value} }}\n'
    if where == "settings":
        return f"[settings]\n{c.pick(_SETTINGS_KEYS)} = {value}\n"
    if where == "top":
        return f"{value}\n"
    if where == "key":
        return f'[[rule]]\nname = "h"\n{value} = 1\n'
    if where == "comment":
        return f"# {value}\n[[rule]]\n"
    body = {"name": '"h"', "match": '{ vendor = "1050" }', "guest": '"g"', where: value}
    return "[[rule]]\n" + "".join(f"{k} = {v}\n" for k, v in body.items())


# ---------------------------------------------------------------- strategies


def _drawn(grammar: Callable[[Choices], str]) -> st.SearchStrategy[str]:
    return st.composite(lambda draw: grammar(Drawn(draw)))()


def _seeded(grammar: Callable[[Choices], str]) -> st.SearchStrategy[str]:
    return st.integers(0, 2**64 - 1).map(lambda seed: grammar(Seeded(seed)))


_toml_words = st.sampled_from([*'[]{}="\'.,=#\n \t\\-_0123456789abcdef\x00\u00e9',
                               "rule", "settings", "match", "name", "[[rule]]"])
#: What a document is made of, and how often (weights out of 200).
_KINDS: dict[str, tuple[int, st.SearchStrategy[str | bytes]]] = {
    "text": (20, st.text()),  # any text, any unicode
    "soup": (20, st.lists(_toml_words, max_size=60).map("".join)),  # TOML's words, shuffled
    "bytes": (20, st.binary(max_size=300)),  # random bytes (written raw, read decoded)
    "structured": (8, _drawn(policy_document)),
    "mutated": (4, _drawn(mutated)),
    "structured-seeded": (78, _seeded(policy_document)),
    "mutated-seeded": (40, _seeded(mutated)),
    "structured-bytes": (9, _seeded(policy_document).map(
        lambda s: s.encode("utf-8", "surrogatepass"))),
    "huge": (1, _seeded(huge_document)),
}
_kind = st.sampled_from([k for k, (weight, _) in _KINDS.items() for _ in range(weight)])


@st.composite
def document(draw: st.DrawFn) -> tuple[str, str | bytes]:
    """(kind, document): one policy file's content."""
    kind = draw(_kind)
    return kind, draw(_KINDS[kind][1])


# ---------------------------------------------------------------- the claim


def _check_problems(problems: Any, files: set[str]) -> None:
    assert isinstance(problems, list | tuple)
    for p in problems:
        assert isinstance(p, Problem), p
        assert p.file in files, p
        assert isinstance(p.line, int) and p.line >= 0, p
        assert isinstance(p.message, str) and p.message.strip(), p
        assert isinstance(p.rule, str), p
        str(p)  # printable, as the journal and `check-policy` print it


def _declares_settings(text: str) -> bool | None:
    """Whether the document has a top-level ``settings`` key (None: not TOML at all)."""
    try:
        return "settings" in tomllib.loads(text)
    except (ValueError, RecursionError):
        return None


class Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.messages: set[str] = set()
        self.kinds: set[str] = set()

    def problems(self, problems: Any) -> None:
        for p in problems:
            self.messages.add(p.message[:300])
            # The message's kind: quoted values, numbers and positions left out.
            self.kinds.add(re.sub(r"'[^']*'|\"[^\"]*\"|\d+|\(.*", "_", p.message)[:60])


def _as_read(raw: bytes) -> str | None:
    """The text load_policy reads from a file of ``raw`` bytes (None: not UTF-8)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # read_text's newlines


def _parse(text: str, file: str, tally: Tally) -> tuple[FileContent, list[Problem]]:
    content, problems = parse_policy_text(text, file)
    assert isinstance(content, FileContent)
    _check_problems(problems, {file})
    tally.problems(problems)
    assert all(isinstance(r, Rule) for r in content.rules)
    if not problems:
        # A file that declares [settings] (in any TOML spelling) says so, and
        # one that does not never claims a [settings] line.
        declared = _declares_settings(text)
        assert declared is not None
        assert bool(content.settings_line) == declared, text[:500]
    return content, problems


def check_one(docs: list[tuple[str, str | bytes]], directory: Path, tally: Tally) -> None:
    """Every document through parse_policy_text, then all of them through load_policy."""
    tally.counts["inputs"] += 1
    paths = []
    refused = False  # what load_policy must say, from parse_policy_text's answers
    parsed_rules: list[Rule] = []
    for i, (kind, doc) in enumerate(docs):
        tally.counts[f"kind {kind}"] += 1
        path = directory / f"{i:02d}-fuzz.toml"
        raw = doc if isinstance(doc, bytes) else doc.encode("utf-8", "surrogatepass")
        path.write_bytes(raw)
        paths.append(path)
        text = doc.decode("utf-8", "replace") if isinstance(doc, bytes) else doc
        content, problems = _parse(text, str(path), tally)
        as_read = _as_read(raw)
        if as_read is not None and as_read != text:
            content, problems = _parse(as_read, str(path), tally)
        refused |= as_read is None or bool(problems)
        parsed_rules += content.rules
    try:
        policy = load_policy(paths)
    except PolicyError as e:
        assert e.problems, "a PolicyError with no problems"
        _check_problems(e.problems, {str(p) for p in paths})
        tally.problems(e.problems)
        tally.counts["refused"] += 1
        return
    assert isinstance(policy, Policy)
    assert not refused, "load_policy accepted what parse_policy_text refused"
    assert policy.files == tuple(str(p) for p in paths)
    # Without a duplicate name (which refuses), every rule read is in force, in order.
    assert [r.name for r in policy.rules] == [r.name for r in parsed_rules]
    tally.counts["valid"] += 1


@pytest.mark.reliability
def test_policy_parser_refuses_any_input_with_located_problems(reliability, tmp_path):
    examples = reliability.size(10_000, 200_000)
    tally = Tally()
    fuzz_dir = tmp_path / "fuzz"
    fuzz_dir.mkdir()

    # derandomize: the same inputs on every run and in CI; no database: nothing
    # carried over from a previous run (a failure prints its input instead).
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(st.lists(document(), min_size=1, max_size=3))
    def fuzz(docs: list[tuple[str, str | bytes]]) -> None:
        for old in fuzz_dir.iterdir():
            old.unlink()
        for kind, doc in docs:  # shown if it fails (a seeded document shows as its seed)
            note(f"{kind} document: {doc[:3000]!r}")
        check_one(docs, fuzz_dir, tally)

    started = time.monotonic()
    fuzz()
    seconds = time.monotonic() - started
    counts = tally.counts
    # Hypothesis stops short of max_examples only when it runs out of distinct inputs.
    assert counts["inputs"] >= examples * 0.95, counts
    assert counts["valid"] > 0 and counts["refused"] > 0, counts
    files = sum(n for k, n in counts.items() if k.startswith("kind "))
    reliability.record(
        "policy parser fuzz", inputs=counts["inputs"], files=files,
        valid_policies=counts["valid"], refused=counts["refused"],
        distinct_messages=len(tally.messages), message_kinds=len(tally.kinds),
        huge_files=counts["kind huge"], seconds=round(seconds, 1))


# ---------------------------------------------------------------- what the fuzz found


RULE = '[[rule]]\nname = "k"\nmatch = { vendor = "1050" }\nguest = "work"\n'


@pytest.mark.parametrize("text", [
    "a = " + "[" * 5000 + "]" * 5000,
    "[[rule]]\nname = \"k\"\nmatch = " + "{a = " * 3000 + "1" + "}" * 3000,
    "[settings]\nask_timeout = " + "1" * 5000,
    "[settings]\nask_timeout = 0x" + "f" * 5000,
    RULE + "action = 0x" + "f" * 5000,
    RULE + "debounce = 0x" + "f" * 5000,
    RULE + "on_sleep = 0x" + "f" * 5000,
    RULE + "reset_before_attach = 0x" + "f" * 5000,
    "[settings]\nunmatched = 0x" + "f" * 5000,
    "[settings]\ndebounce = 0x" + "f" * 5000,
], ids=["deep-array", "deep-inline-table", "5000-digit-int", "huge-hex-ask_timeout",
        "huge-action", "huge-debounce", "huge-on_sleep", "huge-reset", "huge-unmatched",
        "huge-settings-debounce"])
def test_found_nesting_and_huge_integers_are_problems(text, tmp_path):
    """tomllib's RecursionError and int()'s digit limit used to escape as such."""
    content, problems = parse_policy_text(text, "p.toml")
    assert len(problems) == 1 and content.rules == ()
    _check_problems(problems, {"p.toml"})
    assert len(problems[0].message) < 400
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(PolicyError):
        load_policy([path])


@pytest.mark.parametrize("spelling", ['["settings"]', "['settings']"])
def test_found_settings_under_a_quoted_name_are_applied(spelling, tmp_path):
    """A [settings] table whose name was quoted used to be read, then silently dropped."""
    (tmp_path / "a.toml").write_text(f'{spelling}\nunmatched = "ask"\nask_timeout = 7\n')
    policy = load_policy([tmp_path / "a.toml"])
    assert (policy.settings.unmatched, policy.settings.ask_timeout) == ("ask", 7)
    # And it is still the one [settings] of the policy: a second one is refused.
    (tmp_path / "b.toml").write_text("[settings]\nask_timeout = 9\n")
    with pytest.raises(PolicyError, match="only one file"):
        load_policy([tmp_path / "a.toml", tmp_path / "b.toml"])


def test_found_a_line_starting_with_settings_is_not_a_settings_table(tmp_path):
    """A rule's multi-line string with a line "settings…" made the file claim a
    [settings] table, so another file's real one was refused."""
    (tmp_path / "a.toml").write_text('[[rule]]\nname = "k"\nguest = "work"\n[rule.match]\n'
                                     'vendor = "1050"\nproduct_name = """k\nsettings"""\n')
    (tmp_path / "b.toml").write_text("[settings]\nask_timeout = 9\n")
    policy = load_policy([tmp_path / "a.toml", tmp_path / "b.toml"])
    assert policy.settings.ask_timeout == 9


def test_the_writer_writes_toml():
    """The fuzz's own TOML writer, checked against tomllib on a document it wrote."""
    doc = {"a": [1, 2.5, "x\x00\"\\y", True, {"k k": date(2024, 1, 2)}],
           "b": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1)))}
    assert tomllib.loads("\n".join(_table("", doc))) == doc
