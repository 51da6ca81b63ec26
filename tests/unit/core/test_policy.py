from pathlib import Path

import pytest
from factories import usb

from phyllod.core.model import Device, Subsystem
from phyllod.core.policy import Action
from phyllod.core.policy_parser import parse_policy_text
from phyllod.core.policy_problems import PolicyError
from phyllod.host.policy_files import load_policy, load_policy_dir, policy_files

DESK = """\
# a comment
[[rule]]
name   = "security key follows the work guest"
match  = { subsystem = "usb", vendor = "1050", product = "0407", serial = "12345678" }
guest  = "work"
action = "attach"

[[rule]]
name   = "any Bluetooth adapter goes to the desktop guest"
match  = { subsystem = "usb", interface_class = "E0" }
guest  = "desktop"

[[rule]]
name = "whatever sits in port 1-4"
match = { port = "1-4" }
guest = "8f1b2a6e-0d8e-4a57-9a1c-7f4bd1f0c2aa"

[[rule]]
name = "no mass storage in guests"
action = "deny"
[rule.match]
interface_class = "08"

[[rule]]
name = "the Wi-Fi card belongs to the router guest"
match = { subsystem = "pci", address = "03:00.0" }
guest = "router"
"""


def parse(text: str):
    content, problems = parse_policy_text(text, "p.toml")
    return list(content.rules), [str(p) for p in problems]


def test_valid_file_parses_with_lines_and_normalised_values():
    rules, problems = parse(DESK)
    assert problems == []
    assert [r.line for r in rules] == [2, 8, 13, 18, 24]
    key, bt, port, deny, wifi = rules
    assert key.action is Action.ATTACH and key.guest == "work"
    assert bt.match.interface_class == ("e0",)
    assert port.targets("other", port.guest.upper())
    assert deny.action is Action.DENY and deny.match.interface_class == ("08",)
    assert wifi.match.address == "0000:03:00.0"


def test_matching_on_identity_fields():
    rules, _ = parse(DESK)
    key, bt, port, deny, wifi = rules
    yubikey = usb(vendor="1050", product="0407", serial="12345678")
    assert key.match.matches(yubikey)
    assert not key.match.matches(usb(vendor="1050", product="0407", serial="other"))
    dongle = usb(port="1-3", vendor="8087", product="0a2b", interfaces=("e00101", "e00101"))
    assert bt.match.matches(dongle) and not bt.match.matches(yubikey)
    assert port.match.matches(usb(port="1-4")) and not port.match.matches(usb(port="1-4.1"))
    stick = usb(interfaces=("080650",))
    assert deny.match.matches(stick)
    nic = Device(subsystem=Subsystem.PCI, sys_path="/sys/devices/pci0000:00/0000:03:00.0",
                 address="0000:03:00.0",
                 vendor="8086", product="2723", device_class="028000")
    assert wifi.match.matches(nic) and not wifi.match.matches(yubikey)
    assert not port.match.matches(nic)


def test_class_is_a_prefix():
    rules, problems = parse('[[rule]]\nname="net"\nmatch={class="0280"}\nguest="r"\n')
    assert not problems
    nic = Device(subsystem=Subsystem.PCI, sys_path="/x", address="0000:03:00.0",
                 device_class="028000")
    audio = Device(subsystem=Subsystem.PCI, sys_path="/y", address="0000:00:1f.3",
                   device_class="040300")
    assert rules[0].match.matches(nic) and not rules[0].match.matches(audio)


def test_first_match_wins_across_files_in_lexical_order(tmp_path: Path):
    (tmp_path / "20-late.toml").write_text(
        '[[rule]]\nname="late"\nmatch={vendor="0627"}\nguest="b"\n')
    (tmp_path / "10-early.toml").write_text(
        '[[rule]]\nname="early"\nmatch={vendor="0627"}\nguest="a"\n')
    (tmp_path / "README").write_text("not a policy")
    assert [p.name for p in policy_files(tmp_path)] == ["10-early.toml", "20-late.toml"]
    rule = load_policy_dir(tmp_path).match(usb())
    assert rule is not None and rule.name == "early"


def test_no_rule_matches_and_missing_dir(tmp_path: Path):
    assert load_policy_dir(tmp_path / "nope").match(usb()) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[rule]]\nname="a"\nmatch={vendr="1050"}\nguest="w"\n',
         "p.toml:3: rule 'a': unknown match key 'vendr'"),
        ('[[rule]]\nname="a"\nmatch={vendor="10z0"}\nguest="w"\n',
         "p.toml:3: rule 'a': vendor must be 4 hex digits"),
        ('[[rule]]\nname="a"\nmatch={vendor="1050"}\n',
         "p.toml:1: rule 'a': an 'attach' rule needs a target"),
        ('[[rule]]\nname="a"\nmatch={vendor="1050"}\nguest="w"\ncolour="red"\n',
         "p.toml:5: rule 'a': unknown key 'colour'"),
        ('[[rule]]\nname="a"\nmatch={vendor="1050"}\nguest="w"\naction="steal"\n',
         "p.toml:5: rule 'a': action must be one of attach, ignore, deny"),
        ('[[rule]]\nname="a"\nmatch={vendor="1050"}\naction="deny"\nguest="w"\n',
         "p.toml:5: rule 'a': a 'deny' rule applies to every guest"),
        ('[[rule]]\nmatch={vendor="1050"}\nguest="w"\n',
         "p.toml:1: rule #1 needs a 'name'"),
        ('[[rule]]\nname="a"\nguest="w"\n', "rule 'a': 'match' must be a non-empty table"),
        ('[[rule]]\nname="a"\nmatch={port="usb1"}\nguest="w"\n',
         "p.toml:3: rule 'a': port must be a USB port path"),
        ('[[rule]]\nname="a"\nmatch={subsystem="pci", port="1-2"}\nguest="w"\n',
         "'port', 'port_below', 'interface_class' and 'not_interface_class' only apply to USB"),
        ('[[rule]]\nname="a"\nmatch={subsystem="pci", not_interface_class="0e"}\nguest="w"\n',
         "'not_interface_class' only apply to USB"),
        ('[[rule]]\nname="a"\nmatch={interface_class="e001010"}\nguest="w"\n',
         "p.toml:3: rule 'a': interface_class must be 2, 4 or 6 hex digits (class, subclass, "
         "protocol: \"e00101\") or a list of them, not 'e001010'"),
        ('[[rule]]\nname="a"\nmatch={interface_class="e"}\nguest="w"\n',
         "interface_class must be 2, 4 or 6 hex digits"),
        ('[[rule]]\nname="a"\nmatch={interface_class=[]}\nguest="w"\n',
         "interface_class must be 2, 4 or 6 hex digits"),
        ('[[rule]]\nname="a"\nmatch={interface_class=["e0", 1]}\nguest="w"\n',
         "interface_class must be 2, 4 or 6 hex digits"),
        ('[[rule]]\nname="a"\nmatch={not_interface_class="e0:*:01"}\nguest="w"\n',
         "not_interface_class must be 2, 4 or 6 hex digits"),
        ('[[rule]]\nname="a"\nmatch={interface_class=' + '"' + "0" * 5000 + '"' + '}\n'
         'guest="w"\n', "or a list of them, not '000"),
        ('[[rule]]\nname="a"\nmatch={subsystem="usb", address="03:00.0"}\nguest="w"\n',
         "'address' only applies to PCI"),
        ('[[rule]]\nname="a"\nmatch={vendor=1050}\nguest="w"\n',
         "match key 'vendor' must be a string, not int"),
        ('[[rule]\nname="a"\n', "p.toml:1: TOML syntax error"),
        ('[[rule]]\nname="a"\nmatch={vendor="1050"\nguest="w"\n', "p.toml:3: TOML syntax error"),
        ('default="ask"\n', "p.toml:1: unknown top-level key 'default'"),
        ('[[rule]]\nname="a"\n\n\nmatch={vendor="1050", serial=""}\nguest="w"\n',
         "p.toml:5: rule 'a': match key 'serial' must not be empty"),
    ],
)
def test_mistakes_are_reported_with_file_line_and_rule(text: str, expected: str):
    rules, problems = parse(text)
    assert any(expected in p for p in problems), problems
    assert rules == [] or all(r.name != "a" for r in rules)


def test_all_problems_of_a_file_are_reported_at_once():
    text = ('[[rule]]\nname="a"\nmatch={vendor="xx"}\nguest="w"\n'
            '[[rule]]\nname="b"\nmatch={product="yy"}\nguest="w"\n'
            '[[rule]]\nname="c"\nmatch={product="0001"}\nguest="w"\n')
    rules, problems = parse(text)
    assert len(problems) == 2 and "p.toml:3" in problems[0] and "p.toml:7" in problems[1]
    assert [r.name for r in rules] == ["c"]


def test_duplicate_rule_names_across_files(tmp_path: Path):
    a = tmp_path / "10-a.toml"
    b = tmp_path / "20-b.toml"
    a.write_text('[[rule]]\nname="same"\nmatch={vendor="0627"}\nguest="a"\n')
    b.write_text('\n[[rule]]\nname="same"\nmatch={vendor="0627"}\nguest="b"\n')
    with pytest.raises(PolicyError) as e:
        load_policy([a, b])
    assert str(e.value) == (f"{b}:2: rule 'same': duplicate rule name (first defined at {a}:1)")


def test_missing_and_non_utf8_files(tmp_path: Path):
    bad = tmp_path / "10-bad.toml"
    bad.write_bytes(b"\xff\xfe[[rule]]")
    with pytest.raises(PolicyError) as e:
        load_policy([bad, tmp_path / "missing.toml"])
    assert [str(p) for p in e.value.problems] == [
        f"{bad}:1: is not UTF-8 text (byte 0xff)", f"{tmp_path}/missing.toml: does not exist"]


def test_allow_risks_names_single_risks_never_all():
    rules, problems = parse(
        '[[rule]]\nname = "gpu"\nmatch = { address = "0000:01:00.0" }\nguest = "g"\n'
        'allow_risks = ["boot-vga"]\n')
    assert problems == [] and rules[0].allow_risks == frozenset({"boot-vga"})
    _, problems = parse(
        '[[rule]]\nname = "gpu"\nmatch = { address = "0000:01:00.0" }\nguest = "g"\n'
        'allow_risks = ["*", "group"]\n')
    assert problems == [
        "p.toml:5: rule 'gpu': '*' cannot be allowed (a rule may accept only: acs-override, "
        "boot-vga, host-keyboard, no-reset; other risks always block)",
        "p.toml:5: rule 'gpu': 'group' cannot be allowed (a rule may accept only: "
        "acs-override, boot-vga, host-keyboard, no-reset; other risks always block)",
    ]


# Interfaces of real devices (class, subclass, protocol per interface), as udev's
# ID_USB_INTERFACES lists them. Class codes: https://www.usb.org/defined-class-codes
BLUETOOTH = ("e00101", "e00101")  # HCI + isochronous (SCO) interfaces
BLUETOOTH_WITH_DFU = ("e00101", "e00101", "fe0101")
RNDIS_PHONE = ("e00103", "0a0000")  # Windows RNDIS control + CDC data
RNDIS_MISC = ("ef0401", "0a0000")  # RNDIS under the Miscellaneous class
WEBCAM_WITH_MIC = ("0e0100", "0e0200", "010100", "010200")
HEADSET = ("010100", "010200", "030000")
STICK = ("080650",)


@pytest.mark.parametrize(("match", "device", "matches"), [
    ('interface_class = "e00101"', BLUETOOTH, True),
    ('interface_class = "e00101"', BLUETOOTH_WITH_DFU, True),
    ('interface_class = "e00101"', RNDIS_PHONE, False),
    ('interface_class = "e0"', RNDIS_PHONE, True),  # why "e0" alone is too wide
    ('interface_class = "e00103"', RNDIS_PHONE, True),
    ('interface_class = ["e00103", "ef0401"]', RNDIS_MISC, True),
    ('interface_class = ["e00103", "ef0401"]', BLUETOOTH, False),
    ('interface_class = "e0", not_interface_class = "e00103"', BLUETOOTH, True),
    ('interface_class = "e0", not_interface_class = "e00103"', RNDIS_PHONE, False),
    ('interface_class = "e0:01:01"', BLUETOOTH, True),  # USBGuard's spelling
    ('interface_class = "e0:01:*"', RNDIS_PHONE, True),
    ('interface_class = "E0:*:*"', RNDIS_PHONE, True),
    ('interface_class = "0xE001"', BLUETOOTH, True),
    ('interface_class = "01"', WEBCAM_WITH_MIC, True),  # why "01" alone is too wide
    ('interface_class = "01", not_interface_class = "0e"', WEBCAM_WITH_MIC, False),
    ('interface_class = "01", not_interface_class = "0e"', HEADSET, True),
    ('interface_class = "0101", not_interface_class = ["0e", "08"]', HEADSET, True),
    ('not_interface_class = "08"', STICK, False),
    ('not_interface_class = "08"', HEADSET, True),
    ('interface_class = "0e"', HEADSET, False),
    ('interface_class = "010100"', HEADSET, True),
    ('interface_class = "010101"', HEADSET, False),
])
def test_interface_class_prefixes_and_exclusions(match: str, device: tuple[str, ...],
                                                 matches: bool):
    rules, problems = parse(f'[[rule]]\nname="r"\nmatch={{ {match} }}\nguest="g"\n')
    assert problems == []
    assert rules[0].match.matches(usb(interfaces=device)) is matches


def test_port_rules_cover_both_halves_of_a_usb3_port():
    """A USB 3 port is a USB 2 port and a SuperSpeed one, linked as peers by the kernel."""
    rules, problems = parse('[[rule]]\nname="exact"\nmatch={port="1-3"}\nguest="g"\n'
                            '[[rule]]\nname="below"\nmatch={port_below="1-3"}\nguest="g"\n')
    assert problems == []
    exact, below = (r.match for r in rules)
    superspeed = usb(port="2-3", peer_ports=("1-3",))
    behind_ss_hub = usb(port="2-3.2", peer_ports=("1-3.2",))
    ss_hub = usb(port="2-3", peer_ports=("1-3",), device_class="09")
    elsewhere = usb(port="2-4", peer_ports=("1-4",))
    assert exact.matches(superspeed) and below.matches(superspeed)
    assert not exact.matches(behind_ss_hub) and below.matches(behind_ss_hub)
    assert not below.matches(ss_hub)  # a hub only routes, on either half
    assert not exact.matches(elsewhere) and not below.matches(elsewhere)
    assert not below.matches(usb(port="2-3"))  # no peer link: another port


@pytest.mark.parametrize(("written", "kept"), [
    ("03:00.0", "0000:03:00.0"),
    ("0000:03:00.0", "0000:03:00.0"),
    ("10000:e1:00.0", "10000:e1:00.0"),  # Intel VMD puts its NVMe functions in domains from 10000
    ("ABCDEF01:00:1f.7", "abcdef01:00:1f.7"),
])
def test_pci_address_takes_every_domain_the_kernel_names(written, kept):
    rules, problems = parse(f'[[rule]]\nname = "n"\nmatch = {{ address = "{written}" }}\n'
                            'guest = "g"\n')
    assert problems == [] and rules[0].match.address == kept


@pytest.mark.parametrize("written", ["000:03:00.0", "123456789:03:00.0", "03:00.8", "3:00.0"])
def test_pci_address_of_no_kernel_shape_is_refused(written):
    _, problems = parse(f'[[rule]]\nname = "n"\nmatch = {{ address = "{written}" }}\nguest = "g"\n')
    assert any("address must be a PCI address" in p for p in problems)
