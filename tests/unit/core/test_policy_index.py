"""The rule index finds what trying every rule in order finds, and tries fewer.

``Policy.match`` looks only at the rules filed under a device's own values
(``phyllod.core.policy``, "the rule index"). The oracle here is the plain
linear first match, kept in this test only: every rule in file then rule
order, the first whose ``Match.matches`` holds. Policies and devices are drawn
from small alphabets so that keys collide, prefixes nest and ports lie behind
one another, with the awkward fields in them: ports and their USB 3 peers,
hubs, interface lists and their exclusions, class prefixes, PCI addresses,
empty strings, upper and lower case, subsystems given as plain strings.
Hypothesis runs derandomized with no example database, so every run sees the
same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from phyllod.core.decide import decide
from phyllod.core.model import Device, Subsystem
from phyllod.core.policy import Action, Match, Policy, Rule, Settings
from tests.unit.support.factories import policy, usb

PORTS = ["1-2", "1-2.3", "1-2.3.1", "1-20", "2-2", "2-2.3", "1-1", "1", "1-2.", "1-2..3", ""]
IDS = ["1050", "0407", "abcd", "ABCD", ""]
SERIALS = ["S1", "s1", "0123456789ABCDEF", ""]
NAMES = ["Yubico", "yubico", "YubiKey", ""]
CLASSES = ["00", "09", "02", "0280", "028000", "e0", "E0", ""]
INTERFACES = ["030101", "e00101", "e00103", "080650", "0e0100", "010100", "e0", "E00101", ""]
PREFIXES = ["e0", "e001", "e00101", "e00103", "03", "08", "0e", "01", "0101", "E0", ""]
ADDRESSES = ["0000:03:00.0", "0000:01:00.0", "0000:03:00.1", ""]
SUBSYSTEMS = [Subsystem.USB, Subsystem.PCI, "usb", "pci", "USB", ""]


def maybe(values: Sequence[object]) -> st.SearchStrategy[object]:
    """Mostly a field not given (so that a rule has two or three conditions, and
    matches), else one of ``values`` (the empty string among them)."""
    return st.sampled_from([""] * 4 * len(values) + list(values))


prefix_lists = st.tuples(st.sampled_from([False] * 4 + [True]),
                         st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=3)).map(
    lambda given_list: tuple(given_list[1]) if given_list[0] else ())

matches = st.builds(
    Match, subsystem=maybe(SUBSYSTEMS), vendor=maybe(IDS), product=maybe(IDS),
    serial=maybe(SERIALS), manufacturer=maybe(NAMES), product_name=maybe(NAMES),
    port=maybe(PORTS), port_below=maybe(PORTS), device_class=maybe(CLASSES),
    interface_class=prefix_lists, not_interface_class=prefix_lists, address=maybe(ADDRESSES))


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """Up to 40 rules, each told apart by its line, some with the same match as another."""
    drawn = draw(st.lists(matches, max_size=40))
    if drawn and draw(st.booleans()):
        drawn += draw(st.lists(st.sampled_from(drawn), max_size=5))
    rules = tuple(Rule(name=f"r{i}", match=m, action=Action.ATTACH, guest="g", file="t.toml",
                       line=i + 1, debounce=float(i)) for i, m in enumerate(drawn))
    return Policy(rules, ("t.toml",), Settings(debounce=99.0))


devices = st.builds(
    Device, subsystem=st.sampled_from([Subsystem.USB, Subsystem.PCI]), sys_path=st.just("/sys/x"),
    port=st.sampled_from(PORTS), peer_ports=st.lists(st.sampled_from(PORTS), max_size=2).map(tuple),
    vendor=st.sampled_from(IDS), product=st.sampled_from(IDS), serial=st.sampled_from(SERIALS),
    manufacturer=st.sampled_from(NAMES), product_name=st.sampled_from(NAMES),
    device_class=st.sampled_from(CLASSES),
    interface_classes=st.lists(st.sampled_from(INTERFACES), max_size=3).map(tuple),
    address=st.sampled_from(ADDRESSES))


def linear(p: Policy, device: Device) -> Rule | None:
    """The oracle: every rule in order, the first that matches."""
    return next((rule for rule in p.rules if rule.match.matches(device)), None)


@settings(max_examples=600, derandomize=True, database=None, deadline=None)
@given(policies(), st.lists(devices, min_size=1, max_size=20))
def test_the_index_finds_the_first_matching_rule(p: Policy, devs: list[Device]) -> None:
    for device in devs:
        want = linear(p, device)
        assert p.match(device) is want, device
        assert decide(p, device).rule is want
        assert p.debounce(device) == (want.debounce if want is not None else 99.0)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.lists(matches, min_size=1, max_size=40), devices)
def test_every_single_rule_is_found_where_it_matches(drawn: list[Match], device: Device) -> None:
    """Each rule alone: the index never leaves out a rule that matches (a narrower
    check than the first match, which a rule earlier in the policy can hide)."""
    for i, m in enumerate(drawn):
        rule = Rule(name=f"r{i}", match=m, action=Action.DENY, guest="", file="t.toml", line=1)
        assert (Policy((rule,)).match(device) is rule) is m.matches(device), m


def documented(m: Match, d: Device) -> bool:
    """Match's docstring, word for word: each condition given holds (the reference for
    Match.matches, whose order of tests is tuned for speed)."""
    ports = [d.port, *d.peer_ports] if d.subsystem is Subsystem.USB else []

    def interface(prefixes: tuple[str, ...]) -> bool:
        return any(c.startswith(p) for c in d.interface_classes for p in prefixes)

    exact = [(m.subsystem, d.subsystem), (m.vendor, d.vendor), (m.product, d.product),
             (m.serial, d.serial), (m.manufacturer, d.manufacturer),
             (m.product_name, d.product_name)]
    return (all(not want or want == have for want, have in exact)
            and (not m.port or m.port in ports)
            and (not m.port_below or (not d.is_hub and any(
                p == m.port_below or p.startswith(m.port_below + ".") for p in ports)))
            and (not m.address or (d.subsystem is Subsystem.PCI and m.address == d.address))
            and d.device_class.startswith(m.device_class)
            and (not m.interface_class or interface(m.interface_class))
            and not (m.not_interface_class and interface(m.not_interface_class)))


@settings(max_examples=2000, derandomize=True, database=None, deadline=None)
@given(matches, devices)
def test_a_match_means_what_its_docstring_says(m: Match, device: Device) -> None:
    assert m.matches(device) is documented(m, device)


def test_a_device_tries_only_the_rules_filed_under_its_own_values(monkeypatch) -> None:
    """Counts, not times: 100 rules on vendor:product, one on a serial, one with no
    exact key; a device tries the rules under its own ids and serial, and the last
    rule only while nothing before it has matched, never the other hundred."""
    tried: list[Match] = []
    plain = Match.matches

    def counting(self: Match, device: Device) -> bool:
        tried.append(self)
        return plain(self, device)

    monkeypatch.setattr(Match, "matches", counting)
    text = "".join(f'[[rule]]\nname = "r{i}"\nmatch = {{ vendor = "{i:04x}", product = "0001" }}\n'
                   'guest = "g"\n' for i in range(100))
    text += ('[[rule]]\nname = "key"\nmatch = { serial = "S1" }\nguest = "g"\n'
             '[[rule]]\nname = "not webcams"\nmatch = { not_interface_class = "0e" }\n'
             'action = "ignore"\n')
    p = policy(text)

    assert p.match(usb(vendor="0005", product="0001", interfaces=("0e0100",))) is p.rules[5]
    assert len(tried) == 1, "its ids' rule; the one with no exact key comes later"
    tried.clear()
    assert p.match(usb(vendor="ffff", product="0001", serial="S1")) is p.rules[100]
    assert len(tried) == 1, "its serial's rule; the one with no exact key comes later"
    tried.clear()
    assert p.match(usb(vendor="ffff", product="0002", interfaces=("0e0100",))) is None
    assert len(tried) == 1, "only the rule with no exact key"
