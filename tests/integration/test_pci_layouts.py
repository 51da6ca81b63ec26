"""Real machines' IOMMU layouts (tests/data/pci, each naming its source), built as
umockdev sysfs trees, read by the sysfs adapter and judged: every function gets
the verdict its owner would meet (the kernel's own viability rule), with the
reason naming the function that blocks."""

from __future__ import annotations

from pathlib import Path

import pci_tree
import pytest
import testbed
from gi.repository import UMockdev

from phyllod.core.safety.pci import group_members, iommu_table, pci_verdict, safety
from phyllod.core.safety.verdict import Level
from phyllod.host.sysfs import read_host_facts

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(testbed.available()), reason=testbed.available())]

LAYOUTS = sorted((Path(__file__).parents[1] / "data" / "pci").glob("*.toml"))


@pytest.fixture
def tb() -> UMockdev.Testbed:
    return testbed.new_testbed()


def test_there_is_a_handful_of_layouts_each_with_its_source():
    assert len(LAYOUTS) >= 6
    for path in LAYOUTS:
        layout = pci_tree.load_layout(path)
        assert layout.source.startswith("https://"), path.name
        assert layout.expect, path.name


@pytest.mark.parametrize("path", LAYOUTS, ids=[p.stem for p in LAYOUTS])
def test_each_function_of_a_real_layout_gets_its_verdict(tb, path):
    layout = pci_tree.load_layout(path)
    pci_tree.build(tb, layout.functions)
    facts = read_host_facts(Path("/sys"), cmdline="", mounts="", swaps="",
                            proc_root=Path("/nonexistent-proc"))
    assert set(facts.functions) == {f.address for f in layout.functions}
    rows = [row for _, group in iommu_table(facts) for row in group]
    assert len(rows) == len(layout.functions)
    for e in layout.expect:
        function = facts.functions[e.address]
        verdict = pci_verdict(e.address, facts,
                              together=e.together & frozenset(group_members(e.address, facts)),
                              along=e.together)
        level = Level.BRIDGE if function.is_bridge else verdict.level
        reason = verdict.reason()
        if not e.together:
            assert (level, "" if function.is_bridge else reason) == safety(e.address, facts)
        where = f"{path.stem} {e.address} with {sorted(e.together)}: {reason}"
        assert level == e.verdict, where
        if e.risks is not None:
            assert [f.risk.value for f in verdict.blocking] == list(e.risks), where
        for name in e.names:
            assert name in reason, where
        for name in e.unnamed:
            assert name not in reason, where


def test_a_gpu_without_reset_files_on_a_real_layout_needs_its_whole_bus(tb):
    """The GTX 1660 layout, varied: no function behind 00:01.0 shows a reset file (the
    listing does not say; NVIDIA GPUs often lack FLR). All four going together is one
    bus reset; leaving the UCSI function behind keeps no-reset (and the group)."""
    layout = pci_tree.load_layout(
        next(p for p in LAYOUTS if p.stem == "coopydood-ultimate-macos-kvm-213"))
    behind = [f for f in layout.functions if f.parent == "0000:00:01.0"]
    pci_tree.build(tb, [pci_tree.Fn(**{**f.__dict__, "resettable": False}) if f in behind
                        else f for f in layout.functions])
    facts = read_host_facts(Path("/sys"), cmdline="", mounts="", swaps="",
                            proc_root=Path("/nonexistent-proc"))
    gpu, *mates = (f.address for f in behind)
    assert pci_verdict(gpu, facts, together=frozenset(mates), along=frozenset(mates)).ok
    three = frozenset(mates[:2])
    short = pci_verdict(gpu, facts, together=three, along=three)
    assert [f.risk.value for f in short.blocking] == ["group", "no-reset"]
    assert "resets it only together with 0000:01:00.1, 0000:01:00.2 and 0000:01:00.3" in (
        short.reason())
