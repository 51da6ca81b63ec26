"""phyllodctl's pure parts: escaping, tables, JSON, exit codes, the command line,
monitor lines, and the thin D-Bus layer against a stand-in bus (no daemon)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from dbus_fast import Message, MessageFlag, MessageType, Variant
from hypothesis import given
from hypothesis import strategies as st

from phyllod.contract import (
    DEVICE_IFACE,
    DEVICE_PROPERTIES,
    GUEST_IFACE,
    MANAGER_IFACE,
    OBJECT_MANAGER,
    ROOT,
)
from phyllod.ctl import main as ctl
from phyllod.ctl.bus import MUTATION_TIMEOUT, Client, unwrap
from phyllod.ctl.errors import CtlError, ExitCode, error_from_dbus, exit_code_for
from phyllod.ctl.monitor import Labels, event_for, human_line, json_line
from phyllod.ctl.output import (
    MAX_CELL_WIDTH,
    device_table,
    devices,
    escape,
    guest_table,
    iommu_records,
    iommu_table,
    key_value,
    one_per_line,
    table,
    to_json,
    truncate,
    width,
)

ESC = "\x1b"
EVIL = f"Yubi{ESC}[31mKey{ESC}]0;pwned\x07\n\u202eevil\x9b2J"


def device(device_id: str = "usb:1-2", **props: object) -> dict[str, object]:
    values: dict[str, object] = {
        "Id": device_id, "Subsystem": device_id.split(":")[0], "Vendor": "1050",
        "Product": "0407", "Serial": "", "Manufacturer": "", "Name": "YubiKey", "Port": "",
        "Address": "", "Bus": 1, "DeviceNumber": 5, "DeviceClass": "00",
        "InterfaceClasses": ["03"], "Driver": "usbhid", "IommuGroup": -1, "State": "host",
        "Guest": "", "Rule": "", "Reason": "",
        "Override": "", "OverrideGuest": "", "Identity": device_id, "Remembered": False,
        "RememberedGuest": "", "VendorFromDatabase": "", "ModelFromDatabase": "",
        "SerialDoubt": "",
    }
    return values | props


def path_of(device_id: str) -> str:
    return f"{ROOT}/devices/" + "".join(c if c.isalnum() else "_" for c in device_id)


def objects(*devs: dict[str, object], guests: tuple[dict[str, object], ...] = ()) -> dict:
    found: dict[str, dict] = {path_of(str(d["Id"])): {DEVICE_IFACE: d} for d in devs}
    for g in guests:
        found[f"{ROOT}/guests/{g['UUID']}"] = {GUEST_IFACE: g}
    return found


# ---------------------------------------------------------------- escaping


def test_escape_leaves_ordinary_text_alone():
    text = "Logitech USB Receiver \u2013 Ünïcödé 日本"
    assert escape(text) == text


@pytest.mark.parametrize(("raw", "shown"), [
    (f"{ESC}[2J", "\\x1b[2J"),  # clear screen
    (f"{ESC}]0;title\x07", "\\x1b]0;title\\x07"),  # OSC: set the window title
    ("\x9b31m", "\\x9b31m"),  # 8-bit CSI
    ("a\nb\rc\td", "a\\x0ab\\x0dc\\x09d"),
    ("\x00\x7f", "\\x00\\x7f"),
    ("\u202eevil", "\\u202eevil"),  # bidi override
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("line\u2028sep", "line\\u2028sep"),
    ("\U000e0001tag", "\\U000e0001tag"),  # astral format character
    ("back\\x1b", "back\\\\x1b"),  # a literal backslash cannot forge an escape
])
def test_escape_renders_non_printables_visibly(raw, shown):
    assert escape(raw) == shown


def test_escape_shows_invalid_utf8_as_the_original_bytes():
    raw = b"bad\xff\xfe name".decode("utf-8", "surrogateescape")
    assert escape(raw) == "bad\\xff\\xfe name"
    assert escape("\ud800") == "\\ud800"  # a lone surrogate of any other kind
    escape(raw).encode("utf-8")  # and the result can be written out


def test_escape_keeps_only_what_it_is_told_to():
    assert escape("a\nb\x1b", keep="\n") == "a\nb\\x1b"


@given(st.text())
def test_escaped_text_is_printable_and_decodes_back(text):
    shown = escape(text)
    assert shown.isprintable()
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        as_ascii = shown.encode("ascii", "backslashreplace")
        assert as_ascii.decode("unicode_escape") == text  # nothing lost, nothing ambiguous


def test_escape_of_64_kib_strings():
    clean = "A" * 65536
    assert escape(clean) is clean
    hostile = (ESC + "[31m") * (65536 // 5)
    shown = escape(hostile)
    assert ESC not in shown and shown.count("\\x1b") == 65536 // 5


# ---------------------------------------------------------------- widths and tables


def test_width_counts_terminal_columns():
    assert width("abc") == 3
    assert width("日本") == 4
    assert width("e\u0301") == 1  # combining accent


def test_truncate_never_cuts_an_escape_in_half():
    shown = escape("x" * 37 + ESC + "yyyy")
    cut = truncate(shown, 40)
    assert cut == "x" * 37 + "…"
    assert width(cut) <= 40
    assert truncate("short") == "short"


def test_truncate_wide_characters_by_columns():
    cut = truncate("日" * 30, 10)
    assert width(cut) <= 10 and cut.endswith("…")


def test_table_aligns_columns_without_trailing_blanks():
    lines = table(["A", "BB", "C"], [["xxx", "y", "z"], ["x", "yyy", ""]])
    assert lines == ["A    BB   C", "xxx  y    z", "x    yyy"]


def test_table_without_legend_and_empty():
    assert table(["A", "B"], [["1", "2"]], legend=False) == ["1  2"]
    assert table(["A", "B"], [], legend=False) == []
    assert table(["A", "B"], []) == ["A  B"]


def test_device_table_sorted_by_id_escaped_and_dashes_for_empty():
    objs = objects(device("usb:1-10", Name="ten"), device("usb:1-9", Name=EVIL, Guest="work",
                                                          State="attached", Rule="r"),
                   device("pci:0000:0a:00.0", Name="gpu"), device("pci:0000:03:00.0", Name="nic"))
    lines = device_table(objs)
    assert lines[0].split() == ["ID", "VID:PID", "NAME", "STATE", "GUEST", "RULE"]
    assert [line.split()[0] for line in lines[1:]] == [
        "pci:0000:03:00.0", "pci:0000:0a:00.0", "usb:1-9", "usb:1-10"]
    assert all(ESC not in line and "\n" not in line and "\x9b" not in line for line in lines)
    assert lines[1].split()[-2:] == ["-", "-"]
    assert "\\x1b[31m" in lines[3]
    header_columns = [lines[0].index(h) for h in ("STATE", "GUEST")]
    assert [lines[4].index("host"), lines[4].index("-", header_columns[1])] == header_columns


def test_a_64_kib_name_does_not_widen_the_table():
    lines = device_table(objects(device(Name="N" * 65536)), legend=False)
    assert width(lines[0]) < 3 * MAX_CELL_WIDTH


def test_guest_table_counts_devices():
    objs = objects(guests=(
        {"Name": "work", "UUID": "u1", "State": "running", "Devices": ["/a", "/b"]},
        {"Name": "alpha", "UUID": "u2", "State": "shutoff", "Devices": []},
    ))
    assert [line.split() for line in guest_table(objs)] == [
        ["NAME", "STATE", "DEVICES", "UUID"], ["alpha", "shutoff", "0", "u2"],
        ["work", "running", "2", "u1"]]


def test_key_value_in_contract_order_then_extra_names():
    lines = key_value({"State": "host", "Id": "usb:1-2", "Zeta": [], "Extra": True,
                       "Name": EVIL}, DEVICE_PROPERTIES)
    assert [line.split(":")[0] for line in lines] == ["Id", "Name", "State", "Extra", "Zeta"]
    assert lines[0] == "Id:    usb:1-2"
    assert lines[3] == "Extra: yes" and lines[4] == "Zeta:"
    assert len(lines) == 5 and ESC not in "".join(lines)


def test_key_value_multiline_continues_under_the_value():
    lines = key_value({"PolicyError": "a:1: x\na:2: y", "Version": "1"}, ("Version",),
                      multiline={"PolicyError"})
    assert lines == ["Version:     1", "PolicyError: a:1: x\n             a:2: y"]


def test_one_per_line_cannot_split_a_name():
    assert one_per_line(["a\nb", "c"]) == ["a\\x0ab", "c"]


# ---------------------------------------------------------------- JSON


def test_json_is_a_list_of_property_objects_and_safe():
    objs = objects(device("usb:1-2", Name=EVIL), device("usb:1-1"))
    text = to_json(devices(objs))
    assert all(c.isprintable() or c == "\n" for c in text)
    data = json.loads(text)
    assert [d["Id"] for d in data] == ["usb:1-1", "usb:1-2"]
    assert set(data[0]) == set(DEVICE_PROPERTIES)
    assert data[1]["Name"] == EVIL


def test_a_device_without_strings_is_named_from_the_hardware_database():
    """PCI functions and many USB devices say nothing; udev's hwdb names them as lspci does."""
    objs = objects(device("pci:0000:03:00.0", Name="", VendorFromDatabase="Intel Corporation",
                          ModelFromDatabase="Wi-Fi 6 AX200"),
                   device("usb:1-2", VendorFromDatabase="Yubico.com", ModelFromDatabase="x"),
                   device("usb:1-3", Name=""))
    names = [re.split(r"\s{2,}", line)[2] for line in device_table(objs, legend=False)]
    assert names == ["Intel Corporation Wi-Fi 6 AX200", "YubiKey", "-"]


def test_json_escapes_surrogates():
    text = to_json({"Serial": "\udcff"})
    assert "\\udcff" in text
    text.encode("utf-8")


def test_unwrap_turns_variants_into_plain_values():
    nested = {"/p": {"i": {"Name": Variant("s", "x"), "L": Variant("as", ["a"])}}}
    assert unwrap(nested) == {"/p": {"i": {"Name": "x", "L": ["a"]}}}


# ---------------------------------------------------------------- exit codes


@pytest.mark.parametrize(("name", "code"), [
    ("me.phyllo.Phyllod1.Error.NoSuchDevice", 3),
    ("me.phyllo.Phyllod1.Error.NoSuchGuest", 3),
    ("me.phyllo.Phyllod1.Error.NotAuthorized", 4),
    ("org.freedesktop.DBus.Error.AccessDenied", 4),
    ("org.freedesktop.DBus.Error.ServiceUnknown", 5),
    ("org.freedesktop.DBus.Error.NameHasNoOwner", 5),
    ("me.phyllo.Phyllod1.Error.Failed", 1),
    ("me.phyllo.Phyllod1.Error.Denied", 1),
    ("me.phyllo.Phyllod1.Error.Busy", 1),
    ("org.freedesktop.DBus.Error.UnknownMethod", 1),
    ("com.example.Whatever", 1),
])
def test_exit_code_for_error_names(name, code):
    assert exit_code_for(name) == code


def test_error_messages():
    assert error_from_dbus("me.phyllo.Phyllod1.Error.Denied", "rule 'x' denies it").message == (
        "rule 'x' denies it")
    down = error_from_dbus("org.freedesktop.DBus.Error.ServiceUnknown", "no .service file")
    assert down.message == "phyllod is not running (nobody owns me.phyllo.Phyllod1 on this bus)"
    gone = error_from_dbus("org.freedesktop.DBus.Error.Disconnected", "bye")
    assert (gone.code, gone.message) == (ExitCode.UNREACHABLE, "cannot reach phyllod: bye")
    denied = error_from_dbus("org.freedesktop.DBus.Error.AccessDenied", "")
    assert denied.message == "not authorized: org.freedesktop.DBus.Error.AccessDenied"


# ---------------------------------------------------------------- the command line


def test_options_before_and_after_the_command():
    for argv in (["--json", "--bus", "session", "list"], ["list", "--json", "--bus", "session"]):
        args = ctl.parse_args(argv)
        assert (args.json, args.bus, args.legend, args.ids) == (True, "session", True, False)
        assert args.run is ctl.list_devices


def test_defaults():
    args = ctl.parse_args(["attach", "usb:1-2", "work"])
    assert (args.bus, args.interactive, args.device, args.guest) == (
        "system", True, "usb:1-2", "work")
    assert ctl.parse_args(["detach", "x", "--no-ask-password"]).interactive is False
    assert ctl.parse_args(["guests", "--names", "--no-legend"]).names is True
    assert ctl.parse_args(["--bus", "unix:path=/tmp/x/bus", "monitor"]).bus == (
        "unix:path=/tmp/x/bus")


@pytest.mark.parametrize("argv", [
    [], ["frobnicate"], ["attach", "usb:1-2"], ["show"], ["list", "extra"],
    ["attach", "d", "g", "--json"],  # output options are for reading commands
    ["--bus"],
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        ctl.parse_args(argv)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as e:
        ctl.parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for line in ("3  no such device, guest or request", "4  not authorized",
                 "5  phyllod is not running"):
        assert line in out
    assert "3  no such device, guest or request" in (ctl.__doc__ or "")


def test_version(capsys):
    with pytest.raises(SystemExit):
        ctl.parse_args(["--version"])
    assert capsys.readouterr().out.startswith("phyllodctl ")


def test_main_prints_one_line_per_message_line_and_returns_the_code(monkeypatch, capsys):
    async def failing(args):
        raise CtlError(ExitCode.NOT_FOUND, f"no present device is named 'x{ESC}[2J'\nsecond")

    monkeypatch.setattr(ctl, "run", failing)
    assert ctl.main(["show", "x"]) == 3
    assert capsys.readouterr().err == (
        "phyllodctl: no present device is named 'x\\x1b[2J'\nphyllodctl: second\n")


def test_main_unreachable_bus(tmp_path, capsys):
    assert ctl.main(["--bus", f"unix:path={tmp_path}/none", "list"]) == 5
    err = capsys.readouterr().err
    assert err.startswith("phyllodctl: cannot connect to bus unix:path=") and err.count("\n") == 1


def test_main_malformed_bus_address(capsys):
    assert ctl.main(["--bus", "nonsense", "list"]) == 2
    assert capsys.readouterr().err.startswith("phyllodctl: invalid address for bus nonsense")


# ---------------------------------------------------------------- monitor lines

NOW = datetime(2025, 1, 2, 11, 2, 3, tzinfo=timezone(timedelta(hours=1)))
PM = "org.freedesktop.DBus.Properties"
OM = "org.freedesktop.DBus.ObjectManager"


def labelled() -> Labels:
    labels = Labels()
    labels.reset(objects(device("usb:1-2"), guests=(
        {"Name": "work", "UUID": "u1", "State": "running", "Devices": []},)))
    return labels


def test_property_change_line():
    labels = labelled()
    event = event_for(labels, NOW, path_of("usb:1-2"), PM, "PropertiesChanged", [
        DEVICE_IFACE, {"State": "attached", "Guest": "work",
                       "Reason": "attached to 'work' by rule 'x'"}, []])
    assert event is not None
    assert human_line(event, labels) == (
        "11:02:03 usb:1-2 state attached guest=work (attached to 'work' by rule 'x')")
    assert json.loads(json_line(event)) == {
        "time": "2025-01-02T11:02:03.000+01:00", "event": "changed", "subject": "usb:1-2",
        "path": path_of("usb:1-2"), "interface": DEVICE_IFACE,
        "properties": {"State": "attached", "Guest": "work",
                       "Reason": "attached to 'work' by rule 'x'"}}


def test_guest_change_names_devices_by_id_and_quotes_blanks():
    labels = labelled()
    event = event_for(labels, NOW, f"{ROOT}/guests/u1", PM, "PropertiesChanged", [
        GUEST_IFACE, {"Devices": [path_of("usb:1-2")], "Name": "my vm"}, []])
    assert event is not None
    assert human_line(event, labels) == "11:02:03 guest my vm devices=usb:1-2 name='my vm'"


def test_plug_and_unplug_lines():
    labels = labelled()
    path = path_of("usb:1-3")
    plugged = event_for(labels, NOW, ROOT, OM, "InterfacesAdded", [
        path, {DEVICE_IFACE: device("usb:1-3", Name=EVIL, Reason="no rule matches")},
        ])
    assert plugged is not None
    line = human_line(plugged, labels)
    assert line.startswith("11:02:03 + usb:1-3 plugged 1050:0407 'Yubi\\x1b[31mKey")
    assert line.endswith("state host (no rule matches)")
    assert ESC not in line and "\n" not in line
    gone = event_for(labels, NOW, ROOT, OM, "InterfacesRemoved", [path, [DEVICE_IFACE]])
    assert gone is not None
    assert human_line(gone, labels) == "11:02:03 - usb:1-3 gone"
    assert path not in labels.by_path


def test_manager_change_and_daemon_restart():
    labels = labelled()
    event = event_for(labels, NOW, ROOT, PM, "PropertiesChanged", [
        MANAGER_IFACE, {"PolicyStatus": "error", "PolicyError": "a:1: x\na:2: y",
                        "PolicyFiles": ["/etc/p/a.toml", "/etc/p/b.toml"]}, []])
    assert event is not None
    assert human_line(event, labels) == (
        "11:02:03 phyllod policy-error='a:1: x\\x0aa:2: y' "
        "policy-files=/etc/p/a.toml,/etc/p/b.toml policy-status=error")
    owner = "org.freedesktop.DBus"
    stopped = event_for(labels, NOW, "/", owner, "NameOwnerChanged",
                        ["me.phyllo.Phyllod1", ":1.5", ""])
    started = event_for(labels, NOW, "/", owner, "NameOwnerChanged",
                        ["me.phyllo.Phyllod1", "", ":1.9"])
    assert stopped is not None and started is not None
    assert human_line(stopped, labels) == "11:02:03 phyllod stopped"
    assert json.loads(json_line(started)) == {
        "time": "2025-01-02T11:02:03.000+01:00", "event": "started", "subject": "phyllod"}


def test_signals_that_are_not_phyllods_are_ignored():
    labels = labelled()
    assert event_for(labels, NOW, ROOT, PM, "PropertiesChanged",
                     ["org.example.Other", {"X": 1}, []]) is None
    assert event_for(labels, NOW, ROOT, "org.example", "Ping", []) is None
    assert event_for(labels, NOW, "/", "org.freedesktop.DBus", "NameOwnerChanged",
                     ["org.example", "", ":1.2"]) is None


def test_unknown_object_is_labelled_by_its_path():
    labels = Labels()
    event = event_for(labels, NOW, path_of("usb:2-1"), PM, "PropertiesChanged",
                      [DEVICE_IFACE, {"State": "host"}, ["Rule"]])
    assert event is not None
    assert human_line(event, labels) == "11:02:03 usb_2_1 state host rule invalidated"


# ---------------------------------------------------------------- the thin D-Bus layer


class StandInBus:
    """Answers calls with a prepared reply, and records what was sent."""

    def __init__(self, reply: Message | None = None, delay: float = 0.0) -> None:
        self.reply = reply
        self.delay = delay
        self.sent: list[Message] = []

    async def call(self, message: Message) -> Message | None:
        self.sent.append(message)
        await asyncio.sleep(self.delay)
        return self.reply


def reply(body: list[object], signature: str) -> Message:
    return Message(message_type=MessageType.METHOD_RETURN, reply_serial=1,
                   signature=signature, body=body)


def error(name: str, text: str) -> Message:
    return Message(message_type=MessageType.ERROR, reply_serial=1, error_name=name,
                   signature="s", body=[text])


async def test_mutations_allow_interactive_authorization():
    bus = StandInBus(reply([], ""))
    await Client(bus).manager("Attach", "usb:1-2", "work", mutation=True)  # type: ignore[arg-type]
    await Client(bus).manager("Explain", "usb:1-2")  # type: ignore[arg-type]
    await Client(bus, interactive=False).manager("Reload", mutation=True)  # type: ignore[arg-type]
    attach, explain_, reload_ = bus.sent
    assert (attach.member, attach.signature, attach.body) == ("Attach", "ss", ["usb:1-2", "work"])
    assert attach.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
    assert not explain_.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
    assert not reload_.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
    assert attach.destination == "me.phyllo.Phyllod1" and attach.path == ROOT


def test_mutations_wait_long_enough():
    assert MUTATION_TIMEOUT >= 120


@pytest.mark.parametrize(("name", "code"), [
    ("me.phyllo.Phyllod1.Error.NoSuchDevice", ExitCode.NOT_FOUND),
    ("me.phyllo.Phyllod1.Error.NotAuthorized", ExitCode.NOT_AUTHORIZED),
    ("org.freedesktop.DBus.Error.ServiceUnknown", ExitCode.UNREACHABLE),
    ("me.phyllo.Phyllod1.Error.Busy", ExitCode.FAILED),
])
async def test_error_replies_become_exit_codes(name, code):
    client = Client(StandInBus(error(name, "why")))  # type: ignore[arg-type]
    with pytest.raises(CtlError) as e:
        await client.manager("GetDevice", "x")
    assert e.value.code == code


async def test_a_closed_connection_is_unreachable():
    with pytest.raises(CtlError) as e:
        await Client(StandInBus(None)).managed_objects()  # type: ignore[arg-type]
    assert e.value.code == ExitCode.UNREACHABLE


async def test_a_stuck_daemon_times_out(monkeypatch):
    monkeypatch.setattr("phyllod.ctl.bus.READ_TIMEOUT", 0.01)
    with pytest.raises(CtlError) as e:
        await Client(StandInBus(reply([{}], "a{oa{sa{sv}}}"), delay=1)).managed_objects()  # type: ignore[arg-type]
    assert e.value.code == ExitCode.FAILED and "no answer" in e.value.message


async def test_managed_objects_are_plain_values():
    body = [{path_of("usb:1-2"): {DEVICE_IFACE: {"Id": Variant("s", "usb:1-2")}}}]
    client = Client(StandInBus(reply(body, "a{oa{sa{sv}}}")))  # type: ignore[arg-type]
    assert await client.managed_objects() == {path_of("usb:1-2"): {DEVICE_IFACE: {"Id": "usb:1-2"}}}


@pytest.mark.parametrize(("argv", "member", "body"), [
    (["attach", "1050:0407", "work"], "Attach", ["1050:0407", "work"]),
    (["detach", "/me/phyllo/Phyllod1/devices/usb_1_2"], "Detach",
     ["/me/phyllo/Phyllod1/devices/usb_1_2"]),
    (["clear", "usb:1-2"], "ClearOverride", ["usb:1-2"]),
    (["reload"], "Reload", []),
])
async def test_commands_pass_names_to_the_daemon_unresolved(argv, member, body):
    bus = StandInBus(reply([], ""))
    args = ctl.parse_args(argv)
    assert list(await args.run(Client(bus), args)) == []  # type: ignore[arg-type]
    (sent,) = bus.sent
    assert (sent.interface, sent.member, sent.body) == (MANAGER_IFACE, member, body)
    assert sent.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION


@pytest.mark.parametrize(("argv", "expected"), [
    (["list", "--ids"], ["usb:1-2", "usb:1-10"]),
    (["list", "--no-legend"], ["usb:1-2   1050:0407  YubiKey  host  -  -",
                               "usb:1-10  1050:0407  YubiKey  host  -  -"]),
])
async def test_list_reads_everything_in_one_call(argv, expected):
    body = {path_of(i): {DEVICE_IFACE: {k: Variant("s", v) if isinstance(v, str) else
                                        Variant("i", v) if isinstance(v, int) else
                                        Variant("as", v) for k, v in device(i).items()}}
            for i in ("usb:1-10", "usb:1-2")}
    bus = StandInBus(reply([body], "a{oa{sa{sv}}}"))
    args = ctl.parse_args(argv)
    assert list(await args.run(Client(bus), args)) == expected  # type: ignore[arg-type]
    assert [m.member for m in bus.sent] == ["GetManagedObjects"]


def test_iommu_table_and_json_keep_the_whole_reason():
    groups = [(2, [("0000:00:1c.0", "8086:a110", "060400", "pcieport", "bridge", ""),
                   ("0000:02:00.0", "8086:2723", "028000", "iwlwifi", "ok", "")]),
              (4, [("0000:00:17.0", "8086:a352", "010601", "ahci", "unsafe",
                    "0000:00:17.0 holds / (sda2) \x1b[31m" + "x" * 60)])]
    lines = iommu_table(groups)
    assert lines[0].split() == ["GROUP", "ADDRESS", "IDS", "CLASS", "DRIVER", "VERDICT", "REASON"]
    assert lines[2].split()[:6] == ["2", "0000:02:00.0", "8086:2723", "028000", "iwlwifi", "ok"]
    assert lines[3].endswith("x" * 60) and "\x1b" not in "".join(lines)
    records = json.loads(to_json(iommu_records(groups)))
    assert records[2] == {"group": 4, "address": "0000:00:17.0", "ids": "8086:a352",
                          "class": "010601", "driver": "ahci", "verdict": "unsafe",
                          "reason": "0000:00:17.0 holds / (sda2) \x1b[31m" + "x" * 60}


# ------------------------------------------------------------ ask mode


def request_objects(*numbers: int) -> dict:
    return {f"{ROOT}/requests/{n}": {"me.phyllo.Phyllod1.Request": {
        "Device": path_of("usb:1-2"), "DeviceId": "usb:1-2",
        "Description": "usb:1-2 (1050:0407 Yubico \x1b[31mKey)", "Candidates": ["work", "media"],
        "Deadline": 1_000_030_000_000, "Rule": "keys"}} for n in numbers}


def test_requests_table_counts_down_and_escapes():
    from phyllod.ctl.output import request_table, requests

    objs = request_objects(10, 2)
    lines = request_table(objs, now=1_000_000.0)
    assert lines[0].split() == ["ID", "DEVICE", "DESCRIPTION", "GUESTS", "LEFT", "RULE"]
    assert lines[1].startswith("2 ") and lines[2].startswith("10")
    assert "30s" in lines[1] and "work media" in lines[1] and "\x1b" not in lines[1]
    assert [r["Id"] for r in requests(objs)] == [2, 10]
    assert request_table(objs, now=2_000_000.0)[1].split()[-2] == "0s"


def test_monitor_shows_requests_opening_and_closing():
    labels = Labels()
    now = datetime(2026, 11, 24, 10, 0, 0)
    path = f"{ROOT}/requests/3"
    (ifaces,) = request_objects(3).values()
    line = human_line(event_for(labels, now, ROOT, OBJECT_MANAGER, "InterfacesAdded",
                                [path, ifaces]), labels)
    assert line == ("10:00:00 + request 3 asks where usb:1-2 goes: work,media,host "
                    "(usb:1-2 (1050:0407 Yubico \\x1b[31mKey))")
    line = human_line(event_for(labels, now, ROOT, OBJECT_MANAGER, "InterfacesRemoved",
                                [path, ["me.phyllo.Phyllod1.Request"]]), labels)
    assert line == "10:00:00 - request 3 closed"


@pytest.mark.parametrize("argv, guest, host, remember", [
    (["answer", "3", "work"], "work", False, False),
    (["answer", "3", "--host", "--remember"], None, True, True),
    (["answer", "--remember", "3", "media"], "media", False, True),
])
def test_answer_arguments(argv, guest, host, remember):
    args = ctl.parse_args(argv)
    assert (args.request, args.guest, args.host, args.remember) == ("3", guest, host, remember)


@pytest.mark.parametrize("argv", [["answer", "3"], ["answer", "3", "work", "--host"],
                                  ["forget"], ["requests", "x"]])
def test_answer_and_forget_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        ctl.parse_args(argv)
    assert e.value.code == 2
