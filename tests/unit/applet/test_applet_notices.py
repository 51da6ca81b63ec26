"""Which notification a device change or a request deserves, and the calls behind each button."""

from __future__ import annotations

import time

import pytest

from phyllod.applet.commands import (
    Answer,
    Attach,
    ClearOverride,
    Forget,
    KeepOnHost,
    answer_key,
    call_for,
    describe,
    device_of,
    parse_answer_key,
)
from phyllod.applet.notices import (
    BODY_MARKUP,
    Notice,
    NoticeTracker,
    as_sent,
    error_notice,
    format_deadline,
    markup_escaped,
    request_notice,
)
from phyllod.applet.views import DeviceView, RequestView
from phyllod.contract import DEVICE_IFACE as DEVICE
from phyllod.contract import MANAGER_IFACE as MANAGER
from phyllod.contract import REQUEST_IFACE as REQUEST

KBD = "/me/phyllo/Phyllod1/devices/usb_1_2"
REQ = "/me/phyllo/Phyllod1/requests/3"
UNSAFE = "not safe to pass: IOMMU group 7 also holds 0000:00:1f.2, bound to ahci"


def dev(state: str, guest: str = "", reason: str = "", **kw: object) -> DeviceView:
    return DeviceView(KBD, "usb:1-2", "QEMU USB Keyboard", state=state, guest=guest,
                      reason=reason, **kw)  # type: ignore[arg-type]


def kinds(tracker: NoticeTracker, *states: DeviceView) -> list[str | None]:
    out = []
    for state in states:
        notice = tracker.observe(state)
        out.append(notice.kind if notice else None)
    return out


def test_present_at_start_is_quiet_then_changes_are_told():
    t = NoticeTracker()
    assert t.observe(dev("attached", "work"), quiet=True) is None
    assert kinds(t, dev("attached", "work"), dev("detaching", "work"), dev("host")) == [
        None, None, "detached"]
    notice = t.observe(dev("attached", "test", "rule 'kbd' sends it to test"))
    assert notice is not None and notice.kind == "attached"
    assert notice.summary == "QEMU USB Keyboard is in test"
    assert notice.body == "usb:1-2: rule 'kbd' sends it to test"


def test_a_failure_is_told_once_while_phyllod_retries():
    t = NoticeTracker()
    got = kinds(t, dev("host"), dev("attaching", "test"), dev("failed", "test", "libvirt: no"),
                dev("attaching", "test"), dev("failed", "test", "libvirt: no (retry 2)"),
                dev("host"), dev("attaching", "test"), dev("failed", "test", "libvirt: no"))
    assert got == [None, None, "failed", None, None, None, None, "failed"]
    last = t.observe(dev("failed", "work", "other guest"))
    assert last is not None and last.summary == "QEMU USB Keyboard could not be passed to work"
    assert "other guest" in last.body


def test_a_failed_detach_says_so():
    t = NoticeTracker()
    t.observe(dev("attached", "work"), quiet=True)
    assert t.observe(dev("detaching", "work")) is None
    notice = t.observe(dev("failed", "work", "detach failed: libvirt said no"))
    assert notice is not None
    assert notice.summary == "QEMU USB Keyboard could not be taken back from work"


def test_denied_for_safety_names_the_finding():
    t = NoticeTracker()
    notice = t.observe(dev("denied", reason=UNSAFE))
    assert notice is not None and notice.kind == "denied-safety" and notice.critical
    assert "not safe to pass" in notice.summary and "IOMMU group 7" in notice.body
    assert t.observe(dev("denied", reason=UNSAFE)) is None  # a property change elsewhere
    by_rule = NoticeTracker().observe(dev("denied", reason="rule 'no storage' denies it"))
    assert by_rule is not None and by_rule.kind == "denied"


def test_restart_of_phyllod_is_not_news_but_a_replug_is():
    t = NoticeTracker()
    t.observe(dev("attached", "work"), quiet=True)
    # phyllod restarted: the device comes back as it was (kept by id).
    assert t.observe(dev("attached", "work")) is None
    t.forget("usb:1-2")  # unplugged
    assert kinds(t, dev("host"), dev("attached", "work")) == [None, "attached"]


def test_ask_notice_has_one_action_per_answer_and_lasts_until_the_deadline():
    now = 1_700_000_000_000_000
    req = RequestView.from_properties(REQ, {
        "Device": KBD, "DeviceId": "usb:1-2", "Description": "usb:1-2 (0627:0001 Keyboard)",
        "Candidates": ["work", "test"], "Deadline": now + 30_000_000, "Rule": "ask me"})
    notice = request_notice(req, now_us=now)
    assert notice.summary == "Where should usb:1-2 (0627:0001 Keyboard) go?"
    assert notice.actions == (
        ("send:work", "Send to work"), ("send:test", "Send to test"),
        ("host", "Keep on the host"), ("always-send:work", "Always send to work"),
        ("always-send:test", "Always send to test"), ("always-host", "Always keep on the host"))
    assert notice.timeout_ms == 30_000
    assert format_deadline(now + 30_000_000) in notice.body
    assert "rule 'ask me'" in notice.body and "work, test" in notice.body
    # A deadline already past still gives a positive timeout (0 would mean "never").
    assert request_notice(req, now_us=now + 60_000_000).timeout_ms == 1


def test_format_deadline_is_local_wall_clock():
    us = int(time.mktime((2026, 11, 24, 14, 52, 10, 0, 0, -1)) * 1e6)
    assert format_deadline(us) == "14:52:10"


def test_answer_keys_round_trip():
    for guest in ("work", "", "a:b"):
        for remember in (False, True):
            assert parse_answer_key(answer_key(guest, remember)) == (guest, remember)
    assert parse_answer_key("default") is None
    assert parse_answer_key("send:") is None


def test_each_action_is_one_documented_call():
    assert call_for(Attach(KBD, "work")) == call_for(Attach(KBD, "work"))
    c = call_for(Attach(KBD, "work"))
    assert (c.path, c.interface, c.method, c.signature, c.args) == (
        KBD, DEVICE, "Attach", "(s)", ("work",))
    assert call_for(KeepOnHost(KBD)).method == "Detach"
    assert call_for(ClearOverride(KBD)).method == "ClearOverride"
    f = call_for(Forget("usb:0627:0001:42"))
    assert (f.path, f.interface, f.method, f.args) == (
        "/me/phyllo/Phyllod1", MANAGER, "Forget", ("usb:0627:0001:42",))
    a = call_for(Answer(REQ, "", True))
    assert (a.path, a.interface, a.method, a.signature, a.args) == (
        REQ, REQUEST, "Answer", "(sb)", ("", True))
    assert describe(Answer(REQ, "work", True)) == "always send to work"
    assert describe(Answer(REQ, "")) == "keep on the host"


def test_errors_read_as_sentences():
    n = error_notice("attach to work", "me.phyllo.Phyllod1.Error.NotAuthorized",
                     "polkit denied me.phyllo.phyllod.attach")
    assert n.summary == "Could not attach to work: not authorized"
    assert n.body == "polkit denied me.phyllo.phyllod.attach"
    gone = error_notice("keep on the host", "org.freedesktop.DBus.Error.ServiceUnknown", "")
    assert gone.summary.endswith("phyllod is not running")


def test_a_refusal_goes_where_its_device_was_told_about():
    requests = {REQ: KBD}
    assert device_of(Attach(KBD, "work"), requests) == KBD
    assert device_of(KeepOnHost(KBD), requests) == KBD
    assert device_of(Answer(REQ, "work"), requests) == KBD
    assert device_of(Answer("/me/phyllo/Phyllod1/requests/9", ""), requests) is None
    assert device_of(Forget("usb:1-2"), requests) is None


# Device-controlled text in notifications: bodies escaped for servers that render markup.

HOSTILE = '<b>x</b><a href="file:///">y</a>&amp;'
HOSTILE_ESCAPED = "&lt;b&gt;x&lt;/b&gt;&lt;a href=&quot;file:///&quot;&gt;y&lt;/a&gt;&amp;amp;"


def _hostile_notices() -> list[Notice]:
    """One notice of each kind, with the hostile text wherever a device can put it."""
    def named(state: str, guest: str = "", reason: str = "") -> DeviceView:
        return DeviceView(KBD, "usb:1-2", HOSTILE, state=state, guest=guest, reason=reason)
    notices = []
    for before, after in [
            (named("host"), named("attached", "work", f"rule sends {HOSTILE}")),
            (named("attached", "work"), named("host", reason=HOSTILE)),
            (named("attaching", "work"), named("failed", "work", f"libvirt: {HOSTILE}")),
            (named("host"), named("denied", reason=f"{SAFETY_REASON} {HOSTILE}")),
            (named("host"), named("denied", reason=f"rule {HOSTILE!r}"))]:
        t = NoticeTracker()
        t.observe(before, quiet=True)
        notice = t.observe(after)
        assert notice is not None
        notices.append(notice)
    notices.append(request_notice(RequestView(REQ, KBD, "usb:1-2", f"usb:1-2 ({HOSTILE})",
                                              ("work",), 0, HOSTILE)))
    notices.append(error_notice("attach", "me.phyllo.Phyllod1.Error.Failed", HOSTILE))
    return notices


SAFETY_REASON = "not safe to pass: usb:1-2 (a hub) carries the host's only keyboard,"


@pytest.mark.parametrize(("text", "escaped"), [
    (HOSTILE, HOSTILE_ESCAPED), ("plain", "plain"), ("", ""), ("a & b", "a &amp; b"),
    ("<img src='x'/>", "&lt;img src=&#39;x&#39;/&gt;"), ("&#x41;", "&amp;#x41;"),
    ("<![CDATA[x]]>", "&lt;![CDATA[x]]&gt;"), ("\ufffd<u>", "\ufffd&lt;u&gt;"),
])
def test_markup_escaped(text: str, escaped: str):
    assert markup_escaped(text) == escaped


@pytest.mark.parametrize("notice", _hostile_notices(), ids=lambda n: n.kind)
def test_bodies_are_escaped_for_markup_servers_and_summaries_stay_plain(notice: Notice):
    plain = as_sent(notice, ["actions", "body"])
    marked = as_sent(notice, ["actions", "body", BODY_MARKUP, "body-hyperlinks"])
    assert plain == (notice.summary, notice.body), "a server without markup shows text as is"
    assert marked == (notice.summary, markup_escaped(notice.body))
    assert HOSTILE in notice.body or HOSTILE in notice.summary
    # No tag, no entity of the device's survives in a marked-up body.
    assert "<" not in marked[1] and ">" not in marked[1]
    assert HOSTILE not in marked[1]
    if HOSTILE in notice.body:
        assert HOSTILE_ESCAPED in marked[1]
    # Action labels are plain text (the spec) and hold no device text.
    assert all(HOSTILE not in label for _, label in notice.actions)
