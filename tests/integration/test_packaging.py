"""The distribution packages: what the .deb installs, and that it runs.

Builds the .deb once per run with ``packaging/build-deb`` (a few seconds), then
looks at it as dpkg and a person would: its file list and Depends, the
programs run from an unpacked copy with the system's own Python, the man
pages render. The source RPM is built too where rpmbuild exists (the binary
RPM needs Fedora's macros).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"

#: Every path the package must install (the unit may be in /lib on bookworm).
EXPECTED = [
    "usr/bin/phyllod",
    "usr/bin/phyllodctl",
    "usr/lib/python3/dist-packages/phyllod/__init__.py",
    "usr/lib/python3/dist-packages/phyllod/service/root.py",
    "usr/lib/python3/dist-packages/phyllod/core/reconcile.py",
    "usr/lib/python3/dist-packages/phyllod/core/safety/pci.py",
    "usr/share/dbus-1/system.d/me.phyllo.Phyllod1.conf",
    "usr/share/dbus-1/system-services/me.phyllo.Phyllod1.service",
    "usr/share/polkit-1/actions/me.phyllo.phyllod.policy",
    "usr/share/dbus-1/interfaces/me.phyllo.Phyllod1.Manager.xml",
    "usr/share/dbus-1/interfaces/me.phyllo.Phyllod1.Device.xml",
    "usr/share/dbus-1/interfaces/me.phyllo.Phyllod1.Guest.xml",
    "usr/share/dbus-1/interfaces/me.phyllo.Phyllod1.Request.xml",
    "usr/share/bash-completion/completions/phyllodctl",
    "usr/share/man/man8/phyllod.8.gz",
    "usr/share/man/man1/phyllodctl.1.gz",
    "usr/share/man/man5/phyllod.policy.5.gz",
    "usr/share/doc/phyllod/examples/10-example.toml",
    "usr/share/doc/phyllod/examples/phyllod.rules.yml",
    "usr/share/doc/phyllod/copyright",
    "etc/phyllod/policy.d/",
]
UNIT = ("lib/systemd/system/phyllod.service", "usr/lib/systemd/system/phyllod.service")
DEPENDS = ["python3-dbus-fast", "python3-pyudev", "python3-libvirt", "python3-systemd",
           "libvirt-daemon-system | libvirt-daemon", "dbus"]
#: What the separate phyllod-applet package installs.
APPLET_EXPECTED = [
    "usr/bin/phyllod-applet",
    "usr/lib/python3/dist-packages/phyllod/applet/__init__.py",
    "usr/lib/python3/dist-packages/phyllod/applet/app.py",
    "etc/xdg/autostart/phyllod-applet.desktop",
    "usr/share/applications/phyllod-applet.desktop",
    "usr/share/icons/hicolor/scalable/apps/phyllod.svg",
    "usr/share/icons/hicolor/scalable/apps/phyllod-offline.svg",
    "usr/share/icons/hicolor/scalable/apps/phyllod-attention.svg",
    "usr/share/man/man1/phyllod-applet.1.gz",
]
APPLET_DEPENDS = ["python3-gi", "gir1.2-gtk-3.0", "gir1.2-ayatanaappindicator3-0.1",
                  "gir1.2-notify-0.7", "phyllod (= 0.1.0-1)"]
MAN_PAGES = {"man8/phyllod.8.gz": ("PHYLLOD", "8"), "man1/phyllodctl.1.gz": ("PHYLLODCTL", "1"),
             "man5/phyllod.policy.5.gz": ("PHYLLOD.POLICY", "5"),
             "man1/phyllod-applet.1.gz": ("PHYLLOD-APPLET", "1")}


def clean_env(**extra: str) -> dict[str, str]:
    """The system's tools, not the venv's or pyenv's, and no umockdev preload."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LD_PRELOAD", "UMOCKDEV_DIR")}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    env.update(extra)
    return env


def run(*args: str | Path, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False,
                          env=env or clean_env(), timeout=timeout)


def deb_build_missing() -> str:
    """Why the .deb cannot be built here, or "" if it can."""
    if not shutil.which("dpkg-buildpackage") or not shutil.which("dpkg-checkbuilddeps"):
        return "dpkg-buildpackage not installed (scripts/bootstrap installs it)"
    check = run("dpkg-checkbuilddeps", "-B", ROOT / "packaging/debian/control")
    if check.returncode != 0:
        return f"build dependencies missing: {check.stderr.strip()}"
    return ""


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = deb_build_missing()
    if why:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("deb")
    build = run(ROOT / "packaging/build-deb", out, timeout=300)
    assert build.returncode == 0, build.stderr
    path = Path(build.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.parent == out
    return path


@pytest.fixture(scope="module")
def applet_deb(deb: Path) -> Path:
    """The phyllod-applet package, built beside phyllod's by the same build-deb call."""
    (path,) = deb.parent.glob("phyllod-applet_*_all.deb")
    return path


@pytest.fixture(scope="module")
def unpacked(deb: Path, applet_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both packages unpacked into one root, as if both were installed."""
    root = tmp_path_factory.mktemp("root")
    for package in (deb, applet_deb):
        done = run("dpkg-deb", "-x", package, root)
        assert done.returncode == 0, done.stderr
    return root


def package_paths(deb: Path) -> set[str]:
    listing = run("dpkg-deb", "-c", deb)
    assert listing.returncode == 0, listing.stderr
    # "drwxr-xr-x root/root 0 2026-01-01 00:00 ./etc/phyllod/policy.d/"
    return {line.split()[5].removeprefix("./") for line in listing.stdout.splitlines()}


def test_installs_every_file(deb: Path):
    paths = package_paths(deb)
    missing = [p for p in EXPECTED if p not in paths]
    assert not missing, f"not in the package: {missing}"
    assert any(u in paths for u in UNIT), "no systemd unit in the package"
    # The applet is a package of its own: the daemon's host needs no Gtk.
    assert not [p for p in paths if "applet" in p], "applet files in phyllod's package"


def test_applet_package(applet_deb: Path):
    paths = package_paths(applet_deb)
    missing = [p for p in APPLET_EXPECTED if p not in paths]
    assert not missing, f"not in phyllod-applet: {missing}"
    assert not [p for p in paths if p.endswith(".py") and "/dist-packages/phyllod/" in p
                and "/phyllod/applet/" not in p], "daemon modules in phyllod-applet"
    fields = run("dpkg-deb", "-f", applet_deb, "Package", "Architecture", "Depends")
    control = dict(line.split(": ", 1) for line in fields.stdout.splitlines())
    assert (control["Package"], control["Architecture"]) == ("phyllod-applet", "all")
    depends = [d.strip() for d in control["Depends"].split(",")]
    assert all(d in depends for d in APPLET_DEPENDS), depends


def test_control_fields(deb: Path):
    fields = run("dpkg-deb", "-f", deb, "Package", "Architecture", "Depends", "Recommends",
                 "Suggests")
    assert fields.returncode == 0, fields.stderr
    control = dict(line.split(": ", 1) for line in fields.stdout.splitlines())
    assert control["Package"] == "phyllod"
    assert control["Architecture"] == "all"
    depends = [d.strip() for d in control["Depends"].split(",")]
    assert all(d in depends for d in DEPENDS), depends
    assert "polkitd" in control["Recommends"]
    assert "prometheus-node-exporter" in control["Suggests"]  # its textfile directory


def test_service_is_enabled_and_restarted_by_maintainer_scripts(deb: Path):
    """dh_installsystemd's snippets: enable + start on install, restart on upgrade."""
    postinst = run("sh", "-c", f"dpkg-deb --ctrl-tarfile '{deb}' | tar -xOf - ./postinst")
    assert "deb-systemd-helper enable 'phyllod.service'" in postinst.stdout
    assert "_dh_action=restart" in postinst.stdout


def test_programs_run_with_the_system_python(unpacked: Path):
    for name in ("phyllod", "phyllodctl"):
        script = unpacked / "usr/bin" / name
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert script.read_text().startswith("#!/usr/bin/python3"), script.read_text()[:80]
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"no {SYSTEM_PYTHON}")
    missing = run(SYSTEM_PYTHON, "-c", "import dbus_fast, pyudev, libvirt, systemd.journal")
    if missing.returncode != 0:
        pytest.skip("the system Python lacks python3-dbus-fast, -pyudev, -libvirt or "
                    f"-systemd: {missing.stderr.strip().splitlines()[-1]}")
    env = clean_env(PYTHONPATH=str(unpacked / "usr/lib/python3/dist-packages"))
    for name in ("phyllod", "phyllodctl"):
        version = run(SYSTEM_PYTHON, unpacked / "usr/bin" / name, "--version", env=env)
        assert version.returncode == 0, version.stderr
        assert version.stdout.strip() == f"{name} 0.1.0"
    # The shipped example is a valid policy for the shipped code.
    example = unpacked / "usr/share/doc/phyllod/examples/10-example.toml"
    check = run(SYSTEM_PYTHON, unpacked / "usr/bin/phyllod", "check-policy", example, env=env)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("policy OK: "), check.stdout


def test_applet_runs_with_the_system_python(unpacked: Path):
    """Debian's python3-gi and typelibs, no venv: the applet imports gi and nothing else."""
    script = unpacked / "usr/bin/phyllod-applet"
    assert script.read_text().startswith("#!/usr/bin/python3"), script.read_text()[:80]
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"no {SYSTEM_PYTHON}")
    env = clean_env(PYTHONPATH=str(unpacked / "usr/lib/python3/dist-packages"))
    version = run(SYSTEM_PYTHON, script, "--version", env=env)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "phyllod-applet 0.1.0"
    typelibs = run(SYSTEM_PYTHON, "-c", "import phyllod.applet.tray, phyllod.applet.notifier",
                   env=env)
    if typelibs.returncode != 0 and "Namespace" in typelibs.stderr:
        pytest.skip("the typelibs are not installed (gir1.2-gtk-3.0, "
                    "gir1.2-ayatanaappindicator3-0.1, gir1.2-notify-0.7)")
    assert typelibs.returncode == 0, typelibs.stderr


def test_man_pages_render(unpacked: Path):
    for page, (title, section) in MAN_PAGES.items():
        path = unpacked / "usr/share/man" / page
        text = gzip.decompress(path.read_bytes()).decode()
        # docutils 0.19 writes `.TH "PHYLLOD" 8 ...`; others quote the section.
        assert re.search(rf'^\.TH "{re.escape(title)}" "?{section}"? ', text, re.M), text[:400]
        assert "System Message" not in text  # a docutils markup error, rendered
        if shutil.which("man"):
            shown = run("man", "-l", path, env=clean_env(MANPAGER="cat", MANWIDTH="80"))
            assert shown.returncode == 0, shown.stderr
            assert "SEE ALSO" in shown.stdout


def test_lintian_finds_no_errors(deb: Path, applet_deb: Path):
    if not shutil.which("lintian"):
        pytest.skip("lintian not installed")
    lint = run("lintian", "--fail-on", "error", deb, applet_deb)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_second_build_reuses_the_package(deb: Path):
    """build-deb is called from lab fixtures: an unchanged tree is not rebuilt."""
    again = run(ROOT / "packaging/build-deb", deb.parent)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stderr
    assert again.stdout.strip().splitlines()[-1] == str(deb)


def test_source_rpm(tmp_path: Path):
    if not shutil.which("rpmbuild"):
        pytest.skip("rpmbuild not installed (apt-get install rpm, or dnf install rpm-build)")
    build = run(ROOT / "packaging/build-srpm", tmp_path)
    assert build.returncode == 0, build.stderr
    srpm = Path(build.stdout.strip().splitlines()[-1])
    assert srpm.name == "phyllod-0.1.0-1.src.rpm"
    files = run("rpm", "-qpl", srpm)
    assert files.stdout.split() == ["phyllod-0.1.0.tar.gz", "phyllod.spec"]
    requires = run("rpm", "-qp", "--requires", srpm).stdout
    assert "systemd-rpm-macros" in requires and "pyproject-rpm-macros" in requires
