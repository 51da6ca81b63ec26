"""Hostile strings made safe and short to show: one home for the three ways phyllod cuts.

Anything phyllod shows may come from someone who wants it to hurt: a caller's
argument, a policy file's key or name, a device's own strings. Each way out has
its own shape, so there are three, each asserted by the tests:

- :func:`excerpt` quotes a caller's argument in an error (repr: quoted, every
  unprintable character escaped; a long one cut and its length said);
- :func:`one_line` shows a policy problem's text unquoted on one line, keeping
  its start and its end (where a message names what is allowed);
- :func:`bounded` cuts a text phyllod sends on the bus to a fixed size, saying
  how much the journal has that the reply does not.
"""

from __future__ import annotations

#: How many characters of a caller's argument an error message quotes.
EXCERPT = 64
#: Characters of an error message, a property's text or a plain reply string.
MAX_TEXT = 16384


def excerpt(value: str, limit: int = EXCERPT) -> str:
    """A caller's argument as an error message quotes it: never whole if long.

    repr() escapes control, bidi and other unprintable characters, so the
    quote can neither reorder nor split a terminal or journal line; a long
    argument is cut, and its length said, so an error never repeats megabytes
    a caller sent (the bus drops a connection whose message is too large).
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def one_line(text: str, most: int) -> str:
    """``text`` made safe to print on one line and cut to about ``most`` characters.

    Every character ``str.isprintable`` refuses (controls, newlines, bidi
    overrides, lone surrogates from a file name that is not UTF-8) is shown as
    its escape; a long text keeps its start and its end (where a message names
    what is allowed) and says how much was left out.
    """
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) <= most:
        return text
    tail = most // 3
    head = most - tail
    return f"{text[:head]}…[{len(text) - head - tail} characters left out]…{text[-tail:]}"


def bounded(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    note = "… ({} more characters not shown; the journal has them)"
    keep = max(0, limit - len(note.format(len(text))))
    return text[:keep] + note.format(len(text) - keep)
