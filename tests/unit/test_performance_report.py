"""bench/performance.py and its plot: the report states what the JSON holds, and says
"not run" for a bench that left none (never a figure typed in)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import performance
from performance_plot import latency_svg

SVG = "{http://www.w3.org/2000/svg}"


def lab(plugs: int = 4) -> dict:
    def tools(p: float, b: float) -> dict[str, list[float]]:
        return {"phyllod": [p + i / 100 for i in range(plugs)],
                "baseline": [b + i / 100 for i in range(plugs)]}
    return {"plugs": plugs, "samples": {
        "add_s": tools(1.0, 1.5), "del_s": tools(0.4, 1.0),
        "phyllod_received_to_issued_s": [0.03] * plugs,
        "phyllod_received_to_returned_s": [0.5] * plugs, "baseline_handler_s": [0.9] * plugs}}


def test_the_plot_has_a_dot_per_sample_and_a_median_per_tool_and_panel():
    root = ET.fromstring(latency_svg(lab(plugs=4)))
    assert len(root.findall(f"{SVG}circle")) == 4 * 2 * 2
    medians = [t.text for t in root.findall(f"{SVG}text") if t.get("fill") and t.text
               and t.text.isdigit()]
    assert medians == ["1515", "1015", "1015", "415"]


def test_ratios_come_from_the_samples_and_missing_benches_say_not_run():
    text = performance.render({"lab": lab()}, {}, shared=False)
    plug = next(line for line in text.splitlines() if line.startswith("| Plug"))
    assert "1015 / 1515 ms = 0.67x" in plug and plug.endswith("| met |")
    unplug = next(line for line in text.splitlines() if line.startswith("| Unplug"))
    assert unplug.endswith("| met |")  # 415 / 1015 = 0.41x ≤ 0.5x
    rows = [line for line in text.splitlines() if line.startswith("| ")][2:]
    assert sum("not run" in row for row in rows) == 6  # share x2, core x2, dbus, memory
    assert "shared" not in text.split("Machine:", 1)[1].split("\n", 1)[0]


def test_a_failed_bench_is_named():
    text = performance.render({}, {"dbus": 1, "core": 0}, shared=True)
    assert "Benches that failed in this run: `dbus` (exit 1)" in text
    assert "was shared with other work" in text


def test_memory_rows_are_this_trees_figures_from_memory_bench():
    def figure(tree: str, case: str, anon_mib: float, events: int = 0) -> dict:
        return {"tree": tree, "case": case, "devices": 550, "guests": 50, "events": events,
                "rss_kib": 50 * 1024, "pss_kib": 30 * 1024, "anon_kib": int(anon_mib * 1024)}
    memory = [figure("main (baseline)", "idle, loaded", 22.0),
              figure("wt (this)", "idle, loaded", 15.0),
              figure("wt (this)", "after warm-up", 15.0, 1000),
              figure("wt (this)", "after churn", 15.5, 11000)]
    rows = performance.memory_rows(memory)
    assert rows[0][2] == "15.0 (30.0, 50.0)" and rows[0][-1] == "met"
    assert rows[1][0].startswith("Memory growth over 10,000 uevents") and rows[1][2] == "+512 kB"
