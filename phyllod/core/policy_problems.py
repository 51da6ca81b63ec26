"""Policy problems: each mistake in a policy file, located and bounded for showing.

A problem names the file, the line and the rule; its text quotes what the
file said, which may be megabytes of anything, so every part is bounded and
made one printable line when the problem is made (:func:`shown`,
:func:`~phyllod.core.bounds.one_line`). A :class:`PolicyError` carries them all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from phyllod.core.bounds import excerpt, one_line

#: What a problem shows of a message, a rule name and a file name, in characters:
#: the input they quote (a key, a value, a name) may be megabytes long, and every
#: problem goes to the journal, to check-policy's output and onto the bus.
MAX_MESSAGE = 400
MAX_SHOWN_NAME = 80
MAX_SHOWN_FILE = 240
#: Problems a PolicyError keeps; the rest are counted in one last problem.
MAX_PROBLEMS = 50


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a policy file, located as precisely as we can.

    The message and the rule name are bounded when the problem is made, so no
    input can make one problem large; the file name is bounded where it is shown.
    """

    file: str
    line: int
    message: str
    rule: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", one_line(self.message, MAX_MESSAGE))
        object.__setattr__(self, "rule", one_line(self.rule, MAX_SHOWN_NAME))

    def __str__(self) -> str:
        file = one_line(self.file, MAX_SHOWN_FILE)
        where = f"{file}:{self.line}" if self.line else file
        who = f" rule '{self.rule}':" if self.rule else ""
        return f"{where}:{who} {self.message}"


class PolicyError(Exception):
    """A policy that cannot be used; carries the problems found.

    At most MAX_PROBLEMS are kept, and one more that counts the rest: a
    directory of broken files must not make a message too large for the bus.
    ``total`` is how many were found.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        found = tuple(problems)
        self.total = len(found)
        kept = found[:MAX_PROBLEMS]
        if self.total > MAX_PROBLEMS:
            rest = found[MAX_PROBLEMS:]
            kept += (Problem(rest[0].file, rest[0].line, f"and {len(rest)} more problems "
                             "(not shown: fix these and check again)"),)
        self.problems = kept
        super().__init__("\n".join(str(p) for p in self.problems))


class Locator:
    """Finds the line of a rule or key in a file tomllib has already parsed.

    tomllib reports positions only for syntax errors; for the semantic errors
    we find the n-th ``[[rule]]`` header and search the key within its lines.
    """

    _HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]")
    _TABLE = re.compile(r"^\s*\[")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.starts = [i for i, ln in enumerate(self.lines) if self._HEADER.match(ln)]

    def rule_line(self, index: int) -> int:
        return self.starts[index] + 1 if index < len(self.starts) else 0

    def key_line(self, index: int, key: str) -> int:
        if index >= len(self.starts):
            return 0
        end = self.starts[index + 1] if index + 1 < len(self.starts) else len(self.lines)
        pattern = re.compile(rf"(^|[\s{{,.]){re.escape(key)}\s*=")
        for i in range(self.starts[index], end):
            if pattern.search(self.lines[i]):
                return i + 1
        return self.rule_line(index)

    def top_key_line(self, key: str) -> int:
        pattern = re.compile(rf"^\s*(\[+\s*)?{re.escape(key)}\b")
        for i, ln in enumerate(self.lines):
            if pattern.match(ln):
                return i + 1
        return 0


def shown(value: Any) -> str:
    """``value`` for a message, cut short; a huge TOML integer has no decimal repr at all."""
    if isinstance(value, str) and len(value) > 100:
        return excerpt(value, 60)
    try:
        text = repr(value)
    except ValueError:  # int()'s limit on a number's digits
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 120 else text[:117] + "..."
