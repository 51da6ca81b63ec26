"""Policy drop-in entries of every file type, and bounded problem messages (issue 16, §2).

A ``*.toml`` entry that is not a readable regular file used to be skipped without
a word: the deny rule it held was gone and an attach rule elsewhere then sent
the device to a guest. Now every such entry is a located problem and the policy
is refused whole; no entry can hang the reader (a FIFO) or fill its memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import bad_entries
import pytest
from factories import usb
from hangs import within

from phyllod.core.policy import Policy
from phyllod.core.policy_parser import parse_policy_text
from phyllod.core.policy_problems import MAX_MESSAGE, MAX_PROBLEMS, PolicyError, Problem
from phyllod.host import policy_files as policy_module
from phyllod.host.policy_files import load_policy, load_policy_dir, policy_files

ATTACH = '[[rule]]\nname = "keyboard to work"\nmatch = { vendor = "0627" }\nguest = "work"\n'
DENY = '[[rule]]\nname = "never the keyboard"\nmatch = { vendor = "0627" }\naction = "deny"\n'


def refused(directory: Path) -> list[str]:
    """The problems of the policy in ``directory`` (the test fails if it loads)."""
    with pytest.raises(PolicyError) as e:
        within(10, lambda: load_policy_dir(directory))
    return [str(p) for p in e.value.problems]


#: Each kind of entry that is not a readable regular file, and the words used for it.
KINDS: dict[str, tuple[Callable[[Path], None], str]] = {
    "dangling symlink": (bad_entries.dangling_symlink, "is a dangling symlink, not a regular file"),
    "symlink loop": (bad_entries.symlink_loop, "is a symlink loop, not a regular file"),
    "FIFO": (bad_entries.fifo, "is a FIFO, not a regular file"),
    "socket": (bad_entries.unix_socket, "is a socket, not a regular file"),
    "directory": (bad_entries.directory, "is a directory, not a regular file"),
    "device node": (bad_entries.device_node, "is a character device, not a regular file"),
    "huge file": (bad_entries.huge, "is too large (4294967296 bytes; at most 1 MiB)"),
    "not UTF-8": (lambda p: p.write_bytes(b"# caf\xe9\n" + DENY.encode()),
                  ":1: is not UTF-8 text (byte 0xe9)"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_deny_rule_in_a_broken_entry_refuses_the_whole_policy(kind: str, tmp_path: Path):
    """The key case: a deny rule in a broken file, an attach rule in a good one.
    Skipped, the device would go to 'work'; refused, nothing moves."""
    (tmp_path / "20-attach.toml").write_text(ATTACH)
    entry = tmp_path / "10-deny.toml"
    make, words = KINDS[kind]
    make(entry)
    assert entry.name in [p.name for p in policy_files(tmp_path)]
    problems = refused(tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(str(entry)) and problems[0].endswith(words), problems
    # check-policy FILE... reads the same way: the entry named alone never hangs either.
    with pytest.raises(PolicyError):
        within(10, lambda: load_policy([entry]))


def test_a_symlink_to_a_regular_file_is_read_as_the_file(tmp_path: Path) -> None:
    """Distributions ship drop-ins as symlinks into /usr/share: they are allowed."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "deny.toml").write_text(DENY)
    policy_dir = tmp_path / "policy.d"
    policy_dir.mkdir()
    (policy_dir / "10-deny.toml").symlink_to(shipped / "deny.toml")
    (policy_dir / "20-attach.toml").write_text(ATTACH)
    policy: Policy = load_policy_dir(policy_dir)
    rule = policy.match(usb())
    assert rule is not None and rule.name == "never the keyboard"
    assert rule.file == str(policy_dir / "10-deny.toml")


def test_hidden_entries_and_backups_are_not_read(tmp_path: Path) -> None:
    """Editors' lock files (Emacs' ``.#x.toml`` is a dangling symlink), swap files and
    backups are not policy: a person editing a file does not break the policy."""
    (tmp_path / "10-attach.toml").write_text(ATTACH)
    (tmp_path / ".#10-attach.toml").symlink_to("root@host.1234:1700000000")
    (tmp_path / ".10-attach.toml.swp").write_bytes(b"\0\xff")
    (tmp_path / ".hidden.toml").write_text(DENY)
    (tmp_path / "10-attach.toml~").write_text(DENY)
    (tmp_path / "10-attach.toml.dpkg-old").write_text(DENY)
    assert [p.name for p in policy_files(tmp_path)] == ["10-attach.toml"]
    rule = load_policy_dir(tmp_path).match(usb())
    assert rule is not None and rule.name == "keyboard to work"


def test_an_unreadable_entry_is_a_problem(tmp_path: Path, monkeypatch) -> None:
    """Root without CAP_DAC_OVERRIDE (the hardened service) cannot read a 0600 file
    of another user: the open fails, and that is a problem, not an empty file."""
    entry = tmp_path / "10-deny.toml"
    entry.write_text(DENY)
    real_open = os.open

    def denied(path, flags, *args):  # type: ignore[no-untyped-def]
        if Path(path) == entry:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", denied)
    assert refused(tmp_path) == [f"{entry}: is unreadable (Permission denied)"]


def test_the_directory_itself(tmp_path: Path) -> None:
    """Missing: an empty policy (the default). There but not a listable directory:
    refused, since the rules it should hold are unknown."""
    assert load_policy_dir(tmp_path / "missing").rules == ()
    a_file = tmp_path / "file"
    a_file.write_text(DENY)
    assert refused(a_file) == [f"{a_file}: the policy directory is not a directory"]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "unmounted")
    assert refused(dangling) == [f"{dangling}: the policy directory is a dangling symlink"]
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert refused(loop) == [f"{loop}: the policy directory is a symlink loop"]
    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path / "real")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "10.toml").write_text(DENY)
    assert [r.name for r in load_policy_dir(linked).rules] == ["never the keyboard"]


def test_file_names_that_are_not_text_are_problems_shown_on_one_line(tmp_path: Path) -> None:
    """A file name goes onto the bus (PolicyFiles) and into every message: one that is
    not UTF-8 or holds a newline is refused, and shown escaped."""
    (tmp_path / "10-a\nb.toml").write_text(DENY)
    os.close(os.open(os.fsencode(tmp_path) + b"/20-\xff.toml", os.O_CREAT | os.O_WRONLY))
    problems = refused(tmp_path)
    assert problems == [
        f"{tmp_path}/10-a\\nb.toml: the file name is not printable UTF-8 text; rename it",
        f"{tmp_path}/20-\\udcff.toml: the file name is not printable UTF-8 text; rename it",
    ]
    assert all(p.isprintable() for p in problems)


def test_size_caps_per_file_and_for_all_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(policy_module, "MAX_FILE_BYTES", 1000)
    monkeypatch.setattr(policy_module, "MAX_TOTAL_BYTES", 2500)
    filler = "# " + "x" * 800 + "\n"
    for n in range(4):
        (tmp_path / f"{n}.toml").write_text(filler)
    (tmp_path / "9-big.toml").write_text(filler * 2)
    problems = refused(tmp_path)
    assert problems == [
        f"{tmp_path}/3.toml: is too large: the policy files together exceed 0 MiB",
        f"{tmp_path}/9-big.toml: is too large: the policy files together exceed 0 MiB",
    ]
    # A file that grows past the cap after its stat is still cut at the cap.
    (tmp_path / "grown.toml").write_text(filler * 2)
    monkeypatch.setattr(os, "fstat", lambda fd, real=os.fstat: os.stat_result(
        (*real(fd)[:6], 10, *real(fd)[7:])))
    with pytest.raises(PolicyError, match=r"grown.toml: is too large \(more than 1000 bytes"):
        load_policy([tmp_path / "grown.toml"])


def test_too_many_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(policy_module, "MAX_FILES", 3)
    for n in range(5):
        (tmp_path / f"{n}.toml").write_text("")
    assert refused(tmp_path) == [f"{tmp_path}/3.toml: more than 3 policy files (5); merge some"]


# ---------------------------------------------------------------- bounded messages

HUGE = "k" * 200_000


@pytest.mark.parametrize(("text", "start"), [
    (ATTACH + f"{HUGE} = 1\n", "p.toml:5: rule 'keyboard to work': unknown key 'kkk"),
    (ATTACH.replace("vendor", HUGE), "p.toml:3: rule 'keyboard to work': unknown match key"),
    (ATTACH.replace('"0627"', f'"{HUGE}"'), "p.toml:3: rule 'keyboard to work': vendor must"),
    (ATTACH.replace("keyboard to work", HUGE), "p.toml:1: rule #1: a name must be one line"),
    (ATTACH.replace("keyboard to work", "a\\u202eb"), "p.toml:1: rule #1: a name must be"),
    (ATTACH.replace('"work"', f'"{HUGE}"'), "p.toml:4: rule 'keyboard to work': a guest name"),
    (ATTACH + f'allow_risks = ["{HUGE}"]\n', "p.toml:5: rule 'keyboard to work': 'kkk"),
    (f"[settings]\n{HUGE} = 1\n", "p.toml:2: unknown setting 'kkk"),
    (f'[settings]\nunmatched = "{HUGE}"\n', "p.toml:2: unmatched must be 'host' or 'ask'"),
    (f"{HUGE} = 1\n", "p.toml:1: unknown top-level key 'kkk"),
    (f'"a\\nb\\u202e{HUGE}" = 1\n', "p.toml:0: unknown top-level key 'a\\nb\\u202ekkk"),
], ids=["rule key", "match key", "match value", "rule name", "bidi rule name", "guest",
        "risk", "setting key", "setting value", "top-level key", "escaped key"])
def test_a_problem_quoting_huge_input_is_bounded_and_on_one_line(text: str, start: str):
    _, problems = parse_policy_text(text, "p.toml")
    assert len(problems) == 1, problems
    shown = str(problems[0])
    assert shown.replace(":0:", ":", 1).startswith(start.replace(":0:", ":", 1)), shown[:300]
    assert len(problems[0].message) <= MAX_MESSAGE + 40 and len(shown) < 600, len(shown)
    assert shown.isprintable()


def test_problem_fields_are_bounded_whoever_builds_them() -> None:
    p = Problem("/etc/" + "d/" * 5000 + "x.toml", 3, "m\n" * 100_000, rule="r\x1b" * 10_000)
    shown = str(p)
    assert shown.isprintable() and len(shown) < 1000
    assert shown.startswith("/etc/d/") and ".toml:3: rule 'r\\x1br" in shown
    assert "characters left out" in shown


def test_a_policy_error_keeps_a_bounded_number_of_problems(tmp_path: Path) -> None:
    bad = "".join(f'[[rule]]\nname = "r{n}"\nmatch = {{ vendor = "x" }}\nguest = "g"\n'
                  for n in range(500))
    (tmp_path / "10.toml").write_text(bad)
    with pytest.raises(PolicyError) as e:
        load_policy_dir(tmp_path)
    assert e.value.total == 500 and len(e.value.problems) == MAX_PROBLEMS + 1
    assert str(e.value.problems[-1]) == (f"{tmp_path}/10.toml:203: and 450 more problems "
                                         "(not shown: fix these and check again)")
    assert len(str(e.value)) < MAX_PROBLEMS * 200
