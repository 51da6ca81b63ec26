"""packaging/completion/phyllodctl, run by a real bash with a stand-in ``phyllodctl``.

Each case gives a command line as typed (cursor at the end); the test splits it
the way bash fills COMP_WORDS (blanks separate words, and runs of ``:`` and
``=`` from COMP_WORDBREAKS are words of their own), calls the completion
function and reads COMPREPLY back.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[3] / "packaging" / "completion" / "phyllodctl"

# The stand-in logs its arguments (to check --bus is passed on) and answers like
# `phyllodctl list --ids` / `phyllodctl guests --names` would.
STAND_IN = r"""
phyllodctl() {
    printf '%s\n' "$*" >> "$CALLS"
    case $* in
        *"list --ids"*) printf '%s\n' usb:1-2 usb:1-10 pci:0000:03:00.0 ;;
        *"guests --names"*) printf '%s\n' work 'other vm' '$(touch "$PWNED")' ;;
        *"requests --ids"*) printf '%s\n' 3 12 ;;
    esac
}
"""

WORDBREAKS = " \t\n\"'><=;|&(:"  # bash's default

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def bash_words(line: str) -> list[str]:
    """COMP_WORDS for ``line``: bash splits at blanks and around word-break characters."""
    words = re.findall(r"[:=]+|[^\s:=]+", line)
    return [*words, ""] if line.endswith(" ") else words


def complete(line: str, tmp_path: Path) -> tuple[list[str], list[str]]:
    """COMPREPLY for ``line``, and the stand-in's calls."""
    calls = tmp_path / "calls"
    words = bash_words(line)
    program = "\n".join([
        f"source {shlex.quote(str(SCRIPT))}",
        STAND_IN,
        f"COMP_WORDBREAKS={shlex.quote(WORDBREAKS)}",
        f"COMP_LINE={shlex.quote(line)}; COMP_POINT={len(line)}",
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}",
        "_phyllodctl",
        "printf '%s\\n' \"${COMPREPLY[@]}\"",
    ])
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "CALLS": str(calls), "PWNED": str(tmp_path / "pwned")},
        check=True, timeout=30)
    assert done.stderr == ""
    replies = [r for r in done.stdout.split("\n") if r]
    return replies, calls.read_text().splitlines() if calls.exists() else []


def test_bash_words_matches_how_bash_splits():
    assert bash_words("phyllodctl show usb:1-2") == ["phyllodctl", "show", "usb", ":", "1-2"]
    assert bash_words("phyllodctl ") == ["phyllodctl", ""]


@pytest.mark.parametrize(("line", "expected"), [
    ("phyllodctl ", ["list", "guests", "show", "explain", "status", "iommu", "attach", "detach",
                     "clear", "reload", "monitor", "requests", "answer", "forget"]),
    ("phyllodctl s", ["show", "status"]),
    ("phyllodctl --json g", ["guests"]),
    ("phyllodctl --", ["--bus", "--no-ask-password", "--help", "--json", "--no-legend",
                       "--version"]),
    ("phyllodctl list --", ["--bus", "--no-ask-password", "--help", "--json", "--no-legend",
                            "--ids"]),
    ("phyllodctl guests --n", ["--no-ask-password", "--no-legend", "--names"]),
    ("phyllodctl attach --", ["--bus", "--no-ask-password", "--help"]),
    ("phyllodctl --bus ", ["system", "session"]),
    ("phyllodctl --bus=se", ["session"]),
    ("phyllodctl reload ", []),
    ("phyllodctl answer 3 --", ["--bus", "--no-ask-password", "--help", "--host", "--remember"]),
    ("phyllodctl requests --i", ["--ids"]),
])
def test_commands_and_options(line, expected, tmp_path):
    replies, calls = complete(line, tmp_path)
    assert replies == expected
    assert calls == []  # nothing asks the daemon for these


@pytest.mark.parametrize("command", ["show", "explain", "detach", "clear", "attach", "forget"])
def test_device_ids_from_the_daemon(command, tmp_path):
    replies, calls = complete(f"phyllodctl {command} ", tmp_path)
    assert replies == ["usb:1-2", "usb:1-10", "pci:0000:03:00.0"]
    assert calls == ["list --ids"]


def test_request_numbers_then_guests_for_answer(tmp_path):
    assert complete("phyllodctl answer ", tmp_path) == (["3", "12"], ["requests --ids"])
    replies, _ = complete("phyllodctl answer 3 w", tmp_path)
    assert replies == ["work"]


def test_ids_after_a_colon_complete_the_rest_only(tmp_path):
    # readline replaces the text after the last ':', so COMPREPLY must hold that part.
    assert complete("phyllodctl show usb:1-1", tmp_path)[0] == ["1-10"]
    assert complete("phyllodctl show usb:", tmp_path)[0] == ["1-2", "1-10"]
    assert complete("phyllodctl show pci:0000:0", tmp_path)[0] == ["03:00.0"]


def test_guest_names_after_the_device_quoted_and_never_evaluated(tmp_path):
    replies, calls = complete("phyllodctl attach usb:1-2 ", tmp_path)
    assert replies == ["work", "other\\ vm", "\\$\\(touch\\ \\\"\\$PWNED\\\"\\)"]
    assert calls == ["guests --names"]
    assert complete("phyllodctl attach usb:1-2 o", tmp_path)[0] == ["other\\ vm"]
    assert not (tmp_path / "pwned").exists()


def test_no_more_arguments_after_the_guest(tmp_path):
    assert complete("phyllodctl attach usb:1-2 work ", tmp_path) == ([], [])
    assert complete("phyllodctl show usb:1-2 ", tmp_path) == ([], [])


def test_the_bus_of_the_command_line_is_asked(tmp_path):
    replies, calls = complete("phyllodctl --bus unix:path=/tmp/x/bus attach usb:1-2 w", tmp_path)
    assert replies == ["work"]
    assert calls == ["--bus unix:path=/tmp/x/bus guests --names"]
    _, calls = complete("phyllodctl --bus=session show ", tmp_path)
    assert calls[-1] == "--bus=session list --ids"


def test_a_daemon_that_is_down_completes_nothing(tmp_path):
    script = SCRIPT.read_text()
    assert "2>/dev/null" in script  # its error line must not land in the prompt
    line = "phyllodctl show "
    program = (f"source {shlex.quote(str(SCRIPT))}\nphyllodctl() {{ echo oops >&2; return 5; }}\n"
               f"COMP_LINE={shlex.quote(line)}; COMP_POINT={len(line)}\n"
               "COMP_WORDS=(phyllodctl show ''); COMP_CWORD=2\n_phyllodctl\n"
               "echo ${#COMPREPLY[@]}")
    done = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True,
                          check=True, timeout=30)
    assert (done.stdout, done.stderr) == ("0\n", "")
