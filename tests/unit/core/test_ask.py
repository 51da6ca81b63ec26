"""The ask mode in the pure core: who is asked, when, and what an answer does."""

from __future__ import annotations

from factories import guest, held, pci, policy, usb

from phyllod.core.model import Ask, AskOutcome, GuestState, Override, OverrideKind, State
from phyllod.core.plan import Attach, Detach, Question, World
from phyllod.core.policy import Action, Unmatched
from phyllod.core.reconcile import reconcile

ASK = policy('[[rule]]\nname="audio"\nmatch={vendor="0627"}\naction="ask"\n'
             'guest=["work", "media"]\n')
ASK_ANY = policy('[[rule]]\nname="any"\nmatch={vendor="0627"}\naction="ask"\n')
UNMATCHED_ASK = policy('[settings]\nunmatched="ask"\nask_timeout=12\n')
DENY_AND_ASK = policy('[[rule]]\nname="no storage"\nmatch={vendor="0627", product="0001"}\n'
                      'action="deny"\n[[rule]]\nname="any"\nmatch={vendor="0627"}\n'
                      'action="ask"\n')


def world(devices=(), guests=(), **kw) -> World:
    return World(devices={d.id: d for d in devices}, guests={g.name: g for g in guests}, **kw)


def answered(guest_name: str) -> Ask:
    return Ask(AskOutcome.ANSWERED, guest_name)


def test_policy_reads_ask_rules_and_settings():
    (rule,) = ASK.rules
    assert rule.action is Action.ASK and rule.candidates == ("work", "media")
    assert ASK_ANY.rules[0].candidates == ()
    one = policy('[[rule]]\nname="x"\nmatch={vendor="0627"}\naction="ask"\nguest="work"\n')
    assert one.rules[0].candidates == ("work",) and one.rules[0].guest == ""
    assert UNMATCHED_ASK.settings.unmatched is Unmatched.ASK
    assert UNMATCHED_ASK.settings.ask_timeout == 12
    assert ASK.settings.unmatched is Unmatched.HOST


def test_inserted_device_is_asked_with_running_candidates_only():
    d = usb()
    guests = [guest("work"), guest("media", GuestState.SHUTOFF), guest("other")]
    plan = reconcile(ASK, world([d], guests, inserted=frozenset({d.id})))
    assert plan.questions == (Question(d.id, "audio", ("work",)),)
    assert plan.steps == ()
    a = plan.assignments[d.id]
    assert a.state is State.ASKING and a.rule == "audio"
    assert "'work' or the host" in a.reason
    any_rule = reconcile(ASK_ANY, world([d], guests, inserted=frozenset({d.id})))
    assert any_rule.questions[0].candidates == ("other", "work")


def test_present_at_start_is_never_asked():
    d = usb()
    plan = reconcile(ASK, world([d], [guest("work")]))
    assert plan.questions == ()
    a = plan.assignments[d.id]
    assert a.state is State.HOST and "present at start" in a.reason


def test_no_candidate_running_means_no_request():
    d = usb()
    plan = reconcile(ASK, world([d], [guest("work", GuestState.SHUTOFF)],
                                inserted=frozenset({d.id})))
    assert plan.questions == (Question(d.id, "audio", ()),)
    assert plan.assignments[d.id].state is State.HOST
    later = reconcile(ASK, world([d], [guest("work")],
                                 asks={d.id: Ask(AskOutcome.UNASKED)}))
    assert later.questions == () and later.steps == ()
    assert "none of its guests was running" in later.assignments[d.id].reason


def test_pending_waits_and_expired_stays_on_host():
    d = usb()
    pending = Ask(AskOutcome.PENDING, candidates=("work",))
    plan = reconcile(ASK, world([d], [guest("work")], asks={d.id: pending}))
    assert plan.questions == () and plan.steps == ()
    assert plan.assignments[d.id].state is State.ASKING
    plan = reconcile(ASK, world([d], [guest("work")], asks={d.id: Ask(AskOutcome.EXPIRED)}))
    assert plan.steps == ()
    a = plan.assignments[d.id]
    assert a.state is State.HOST and "no answer before the deadline" in a.reason


def test_answer_attaches_and_says_so():
    d = usb()
    plan = reconcile(ASK, world([d], [guest("work")], asks={d.id: answered("work")}))
    assert plan.steps == (Attach(slot=d.slot, device=d, guest="work", rule="audio",
                                 decided_by="by your answer"),)
    assert "by your answer" in plan.assignments[d.id].reason
    plan = reconcile(ASK, world([d], [guest("work", hostdevs=(held(d),))],
                                asks={d.id: answered("work")}))
    assert plan.steps == () and plan.assignments[d.id].state is State.ATTACHED


def test_remembered_answer_applies_without_asking_even_at_start():
    d = usb(serial="A1")
    plan = reconcile(ASK, world([d], [guest("work")], remembered={d.identity: "work"},
                                inserted=frozenset({d.id})))
    assert plan.questions == ()
    assert plan.steps == (Attach(slot=d.slot, device=d, guest="work", rule="audio",
                                 decided_by="by a remembered answer"),)
    assert "by a remembered answer" in plan.assignments[d.id].reason
    host = reconcile(ASK, world([d], [guest("work")], remembered={d.identity: ""},
                                inserted=frozenset({d.id})))
    assert host.questions == () and host.steps == ()
    a = host.assignments[d.id]
    assert a.state is State.HOST and a.reason == "kept on the host by a remembered answer"


def test_host_answer_removes_our_hostdev_but_not_a_persons():
    d = usb()
    ours = guest("work", hostdevs=(held(d),))
    plan = reconcile(ASK, world([d], [ours], asks={d.id: answered("")}))
    assert len(plan.steps) == 1 and isinstance(plan.steps[0], Detach)
    theirs = guest("work", hostdevs=(held(d, owned=False),))
    plan = reconcile(ASK, world([d], [theirs], asks={d.id: answered("")}))
    assert plan.steps == ()


def test_unanswered_device_in_a_guest_is_left_there():
    """After a restart an answered (not remembered) device is in a guest: do not pull it."""
    d = usb()
    plan = reconcile(ASK, world([d], [guest("work", hostdevs=(held(d),))]))
    assert plan.steps == ()
    a = plan.assignments[d.id]
    assert a.state is State.ATTACHED and "until someone answers" in a.reason


def test_deny_and_override_win_over_answers():
    d = usb()
    plan = reconcile(DENY_AND_ASK, world([d], [guest("work")], asks={d.id: answered("work")},
                                         inserted=frozenset({d.id})))
    assert plan.steps == () and plan.questions == ()
    assert plan.assignments[d.id].state is State.DENIED
    plan = reconcile(ASK, world([d], [guest("work"), guest("media")],
                                asks={d.id: answered("work")},
                                overrides={d.identity: Override(OverrideKind.ATTACH, "media")}))
    assert plan.steps == (Attach(slot=d.slot, device=d, guest="media", rule=""),)


def test_pci_safety_wins_over_an_answer():
    d = pci()  # in host() facts nothing is known: no IOMMU, so not safe
    plan = reconcile(UNMATCHED_ASK, world([d], [guest("work")], asks={d.id: answered("work")}))
    assert plan.steps == ()
    a = plan.assignments[d.id]
    assert a.state is State.DENIED and a.reason.startswith("not safe to pass")


def test_unmatched_ask_asks_about_inserted_devices_only():
    d, e = usb("1-2"), usb("1-3", devnum=6)
    plan = reconcile(UNMATCHED_ASK, world([d, e], [guest("work")], inserted=frozenset({e.id})))
    assert plan.questions == (Question(e.id, "", ("work",)),)
    assert plan.assignments[d.id].state is State.HOST
    assert "no rule matches and unmatched devices are asked" in plan.assignments[e.id].reason


def test_disconnected_keeps_answers_pending():
    d = usb()
    plan = reconcile(ASK, World(devices={d.id: d}, guests=None, asks={d.id: answered("work")}))
    a = plan.assignments[d.id]
    assert (a.state, a.guest) == (State.PENDING, "work")


def test_policy_mistakes_in_ask_rules_and_settings_are_located(tmp_path):
    from phyllod.core.policy_problems import PolicyError
    from phyllod.host.policy_files import load_policy

    a = tmp_path / "10-a.toml"
    a.write_text('[settings]\nunmatched = "maybe"\nask_timeout = 0\ncolour = 1\n\n'
                 '[[rule]]\nname = "x"\nmatch = { vendor = "0627" }\nguest = ["work", 3]\n'
                 'action = "ask"\n\n[[rule]]\nname = "y"\nmatch = { vendor = "0628" }\n'
                 'guest = ["work"]\n')
    b = tmp_path / "20-b.toml"
    b.write_text('# more\n[settings]\nunmatched = "ask"\n')
    try:
        load_policy([a, b])
    except PolicyError as e:
        problems = [str(p) for p in e.problems]
    else:
        raise AssertionError("policy accepted")
    assert f"{a}:2: unmatched must be 'host' or 'ask', not 'maybe'" in problems
    assert any(p.startswith(f"{a}:3: ask_timeout must be") for p in problems)
    assert any(p.startswith(f"{a}:4: unknown setting 'colour'") for p in problems)
    assert any(p.startswith(f"{a}:9: rule 'x': an 'ask' rule's 'guest' must be a list")
               for p in problems)
    assert any(p.startswith(f"{a}:15: rule 'y': 'guest' must be a guest name")
               and "only for 'ask' rules" in p for p in problems)
    assert any(p.startswith(f"{b}:2: [settings] may appear in only one file") for p in problems)
