"""The precedence ladder as a table: for every pair of rungs that can speak for one
device at once, which one decides (deny > override > answer > remembered > rule)."""

from __future__ import annotations

import pytest
from factories import policy, usb

from phyllod.core.decide import Rung, decide, policy_note
from phyllod.core.model import Ask, AskOutcome, Override, OverrideKind

KBD = usb(vendor="0627")
DENY = policy('[[rule]]\nname="never"\nmatch={vendor="0627"}\naction="deny"\n')
ATTACH = policy('[[rule]]\nname="kbd"\nmatch={vendor="0627"}\nguest="work"\n')
IGNORE = policy('[[rule]]\nname="leave"\nmatch={vendor="0627"}\naction="ignore"\n')
ASK = policy('[[rule]]\nname="which"\nmatch={vendor="0627"}\naction="ask"\n')
NONE = policy('[[rule]]\nname="other"\nmatch={vendor="1050"}\nguest="work"\n')
UNMATCHED_ASK = policy('[settings]\nunmatched="ask"\n')

TO_GAMES = Override(kind=OverrideKind.ATTACH, guest="games")
TO_HOST = Override(kind=OverrideKind.HOST)
ANSWERED_DESK = Ask(outcome=AskOutcome.ANSWERED, guest="desk")
ANSWERED_HOST = Ask(outcome=AskOutcome.ANSWERED, guest="")
PENDING = Ask(outcome=AskOutcome.PENDING, candidates=("desk",))

LADDER = [
    # (what, policy, override, ask, remembered, deciding rung, the guest it says)
    ("deny alone", DENY, None, None, None, Rung.DENY, None),
    ("deny over an override", DENY, TO_GAMES, None, None, Rung.DENY, None),
    ("deny over an answer", DENY, None, ANSWERED_DESK, None, Rung.DENY, None),
    ("deny over a remembered answer", DENY, None, None, "desk", Rung.DENY, None),
    ("override over an attach rule", ATTACH, TO_GAMES, None, None, Rung.OVERRIDE, "games"),
    ("override to the host over an attach rule", ATTACH, TO_HOST, None, None, Rung.OVERRIDE,
     ""),
    ("override over an ignore rule", IGNORE, TO_GAMES, None, None, Rung.OVERRIDE, "games"),
    ("override over no rule", NONE, TO_GAMES, None, None, Rung.OVERRIDE, "games"),
    ("override over an answer", ASK, TO_HOST, ANSWERED_DESK, None, Rung.OVERRIDE, ""),
    ("override over a remembered answer", ASK, TO_GAMES, None, "desk", Rung.OVERRIDE, "games"),
    ("answer over a remembered answer", ASK, None, ANSWERED_HOST, "desk", Rung.ANSWER, ""),
    ("answer alone", ASK, None, ANSWERED_DESK, None, Rung.ANSWER, "desk"),
    ("remembered over an open question", ASK, None, PENDING, "desk", Rung.REMEMBERED, "desk"),
    ("remembered: the host", ASK, None, None, "", Rung.REMEMBERED, ""),
    ("an ask rule nobody answered", ASK, None, PENDING, None, Rung.ASK, None),
    ("unmatched asked: the answer", UNMATCHED_ASK, None, ANSWERED_DESK, None, Rung.ANSWER,
     "desk"),
    ("unmatched asked: remembered", UNMATCHED_ASK, None, None, "desk", Rung.REMEMBERED, "desk"),
    ("unmatched asked, no answer", UNMATCHED_ASK, None, None, None, Rung.ASK, None),
    # Answers count only where the rule asks: a rule that does not ask wins over them.
    ("attach rule over a remembered answer", ATTACH, None, None, "desk", Rung.RULE, "work"),
    ("attach rule over an answer", ATTACH, None, ANSWERED_DESK, None, Rung.RULE, "work"),
    ("ignore rule over a remembered answer", IGNORE, None, None, "desk", Rung.RULE, None),
    ("no rule over a remembered answer", NONE, None, None, "desk", Rung.UNMATCHED, None),
    ("no rule over an answer", NONE, None, ANSWERED_DESK, None, Rung.UNMATCHED, None),
]


@pytest.mark.parametrize(("p", "override", "ask", "remembered", "rung", "guest"),
                         [row[1:] for row in LADDER], ids=[row[0] for row in LADDER])
def test_the_ladder(p, override, ask, remembered, rung, guest):
    decision = decide(p, KBD, override=override, ask=ask, remembered=remembered)
    assert (decision.rung, decision.guest) == (rung, guest)
    assert decision.override == override
    assert decision.rule == p.match(KBD)


NOTES = [
    # (what, policy, override, the note on the override)
    ("attach rule to the same guest", ATTACH, Override(kind=OverrideKind.ATTACH, guest="work"),
     ""),
    ("attach rule elsewhere", ATTACH, TO_GAMES, "rule 'kbd' would send it to 'work'"),
    ("attach rule, kept on the host", ATTACH, TO_HOST, "rule 'kbd' would send it to 'work'"),
    ("ignore rule", IGNORE, TO_GAMES, "rule 'leave' would ignore it"),
    ("no rule, attached", NONE, TO_GAMES, "no rule matches it"),
    ("no rule, kept on the host", NONE, TO_HOST, ""),
    ("ask rule", ASK, TO_GAMES, ""),
]


@pytest.mark.parametrize(("p", "override", "note"), [row[1:] for row in NOTES],
                         ids=[row[0] for row in NOTES])
def test_what_the_policy_would_do_under_an_override(p, override, note):
    assert policy_note(p.match(KBD), override) == note
