"""Metrics for a fleet: the daemon's file, served by the real node_exporter, read by promtool.

The daemon runs as systemd runs it (umockdev devices, a private libvirtd with
the guest 'work'); it writes its textfile as devices come and go, node_exporter
1.5's textfile collector serves it on a local port, the test scrapes it over
HTTP. Here libvirt answers every USB attach with "cannot open directory
'/sys/bus/usb/devices'", so the failures counted and their durations are real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirtd
import node_exporter
import pytest
import testbed
from daemon_process import DaemonProcess, NotifySocket, child_env
from node_exporter import NodeExporter, promtool, series
from policies import KEYBOARD_TO_WORK

from phyllod import __version__

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "packaging/examples/phyllod.rules.yml"
FAILED_IN_WORK = 'phyllod_devices{guest="work",state="failed",subsystem="usb"}'
ON_HOST = 'phyllod_devices{guest="",state="host",subsystem="usb"}'
FAILURES = 'phyllod_attach_failures_total{subsystem="usb"}'
ATTACHES = 'phyllod_attaches_total{subsystem="usb"}'
FAILED_COUNT = 'phyllod_attach_duration_seconds_count{result="failed",subsystem="usb"}'
FAILED_FAST = 'phyllod_attach_duration_seconds_bucket{result="failed",subsystem="usb",le="+Inf"}'


@pytest.fixture
def tools() -> None:
    why = node_exporter.missing()
    if why:
        pytest.skip(why)


@pytest.fixture
def exporter(tmp_path: Path, tools: None) -> Iterator[NodeExporter]:
    directory = tmp_path / "node-exporter"
    directory.mkdir()
    served = NodeExporter(directory, tmp_path / "node_exporter.log")
    try:
        yield served
    finally:
        served.stop()


def wait_series(exporter: NodeExporter, daemon: DaemonProcess, what: str, test) -> dict:
    """Scrape until ``test(series)`` holds (the file is written after a settle delay)."""
    found: dict[str, float] = {}

    def scraped() -> bool:
        found.clear()
        found.update(series(exporter.scrape()))
        return bool(found) and test(found)
    daemon.wait_for(what, scraped, timeout=30)
    return found


def test_node_exporter_serves_devices_failures_and_their_durations(
        tmp_path: Path, private_libvirtd: libvirtd.PrivateLibvirtd,
        usb_testbed: testbed.UsbTestbed, exporter: NodeExporter):
    libvirtd.start_guest(private_libvirtd.uri, "work")
    usb_testbed.plug("1-2", devnum=5)  # a keyboard: to 'work', where the attach fails
    usb_testbed.plug("1-3", devnum=6, vendor="046d", product="c52b")  # no rule: the host
    policy_dir = tmp_path / "policy.d"
    policy_dir.mkdir()
    (policy_dir / "10-test.toml").write_text(KEYBOARD_TO_WORK)
    path = tmp_path / "node-exporter" / "phyllod.prom"
    notify = NotifySocket(tmp_path / "notify")
    daemon = DaemonProcess(["--policy-dir", str(policy_dir), "--connect", private_libvirtd.uri,
                            "--metrics-file", str(path)],
                           child_env(**usb_testbed.env, NOTIFY_SOCKET=str(notify.path)))
    try:
        notify.wait_for("READY=1")
        daemon.wait_log(r"attach usb:1-2 to work failed: cannot open directory")
        s = wait_series(exporter, daemon, "the failed attach in the scrape",
                        lambda s: s.get(FAILED_IN_WORK) == 1 and s.get(FAILURES, 0) >= 1)
        # node_exporter read the file whole (a parse error or a timestamp sets this to 1)
        assert series(exporter.scrape(), "node_textfile_scrape_error") == {
            "node_textfile_scrape_error": 0}
        assert s[f'phyllod_info{{version="{__version__}"}}'] == 1
        assert s[ON_HOST] == 1
        assert s["phyllod_libvirt_connected"] == 1
        assert s["phyllod_policy_loaded"] == 1 and s["phyllod_policy_errors"] == 0
        assert s["phyllod_requests_open"] == 0
        # Every attach so far failed (retried with backoff), and each has its duration.
        assert s[ATTACHES] == s[FAILURES] == s[FAILED_COUNT] == s[FAILED_FAST]
        assert s['phyllod_attach_duration_seconds_sum{result="failed",subsystem="usb"}'] > 0
        assert s['phyllod_attaches_total{subsystem="pci"}'] == 0
        # No device's strings in any label: not its id, vendor, name or serial.
        labels = " ".join(s)
        assert not any(word in labels for word in ("1-2", "0627", "QEMU", "c52b"))
        # The unplug lands too (a trailing write, after the rate limit).
        usb_testbed.unplug("1-3")
        wait_series(exporter, daemon, "the unplug in the scrape", lambda s: s[ON_HOST] == 0)
        # What node_exporter read is valid for promtool's linter, as is the file itself.
        checked = promtool("check", "metrics", text=path.read_text())
        assert checked.returncode == 0 and checked.stdout + checked.stderr == "", checked
        scraped = "".join(ln + "\n" for ln in exporter.scrape().splitlines()
                          if ln.removeprefix("# HELP ").removeprefix("# TYPE ")
                          .startswith("phyllod_"))
        checked = promtool("check", "metrics", text=scraped)
        assert checked.returncode == 0, checked
        assert "Traceback" not in daemon.log()
        # At stop the file goes: a stopped phyllod's numbers would say all is well.
        assert daemon.stop() == 0
        assert not path.exists()
        assert series(exporter.scrape()) == {}
    finally:
        daemon.stop()
        notify.close()


def test_an_unwritable_directory_costs_one_warning_and_the_daemon_serves_on(
        tmp_path: Path, usb_testbed: testbed.UsbTestbed):
    policy_dir = tmp_path / "policy.d"
    policy_dir.mkdir()
    notify = NotifySocket(tmp_path / "notify")
    missing = tmp_path / "no-such-dir" / "phyllod.prom"
    daemon = DaemonProcess(["--policy-dir", str(policy_dir), "--connect", "test:///default",
                            "--metrics-file", str(missing)],
                           child_env(**usb_testbed.env, NOTIFY_SOCKET=str(notify.path)))
    try:
        notify.wait_for("READY=1")
        daemon.wait_log(rf"metrics: cannot write {missing}: No such file or directory")
        mark = daemon.mark()
        usb_testbed.plug("1-3", devnum=6, vendor="046d", product="c52b")
        daemon.wait_log(r"usb:1-3 .*: host: no rule matches", start=mark)
        usb_testbed.plug("1-4", devnum=7, vendor="046d", product="c52c")
        daemon.wait_log(r"usb:1-4 .*: host: no rule matches", start=mark)
        assert daemon.stop() == 0
        assert daemon.log().count("metrics: cannot write") == 1
    finally:
        daemon.stop()
        notify.close()


def without_annotations(text: str) -> str:
    """The rules file with each rule's ``annotations:`` block left out."""
    out, depth = [], None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if depth is not None and (not line.strip() or indent > depth):
            continue
        depth = indent if line.strip() == "annotations:" else None
        if depth is None:
            out.append(line)
    return "\n".join(out) + "\n"


def test_the_example_alert_rules_are_valid_and_fire(tmp_path: Path, tools: None):
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 5 rules found" in checked.stdout
    # promtool's rule tests: the failures alert fires on a rising counter, the
    # libvirt one after its 5 minutes, the missing one when only node_exporter answers
    # (on the rules without their annotations, which promtool would compare too).
    rules = tmp_path / "phyllod.rules.yml"
    rules.write_text(without_annotations(RULES.read_text()))
    tests = tmp_path / "phyllod.rules.test.yml"
    tests.write_text(f"""
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'phyllod_attach_failures_total{{instance="h1",subsystem="usb"}}'
        values: '0+1x30'
      - series: 'phyllod_libvirt_connected{{instance="h1"}}'
        values: '1 1 0x10'
      - series: 'phyllod_info{{instance="h1",version="0.1.0"}}'
        values: '1x30'
      - series: 'up{{instance="h1",job="node"}}'
        values: '1x30'
      - series: 'up{{instance="h2",job="node"}}'
        values: '1x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: PhyllodAttachFailuresRising
        exp_alerts:
          - exp_labels: {{instance: h1, subsystem: usb, severity: warning}}
      - eval_time: 9m
        alertname: PhyllodLibvirtDisconnected
        exp_alerts:
          - exp_labels: {{instance: h1, severity: warning}}
      - eval_time: 20m
        alertname: PhyllodMetricsMissing
        exp_alerts:
          - exp_labels: {{instance: h2, job: node, severity: warning}}
""")
    tested = promtool("test", "rules", str(tests))
    assert tested.returncode == 0, tested.stdout + tested.stderr
