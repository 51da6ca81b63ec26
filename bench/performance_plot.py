"""The latency plot of docs/performance.md, as SVG text (no plotting library).

Two panels, plug → live and unplug → released; in each, the udev + virsh
script and phyllod side by side: every sample a dot (spread sideways so
equal values stay visible), the median a bar with its value, the middle
half a box. People would rather look than read: the distributions show
what a median hides (a slow tail, two modes).
"""

from __future__ import annotations

import statistics
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 400
TOP, BOTTOM, LEFT = 50, 60, 60
PANEL = (WIDTH - LEFT - 20) / 2
TOOLS = (("baseline", "udev + virsh", "#d95f02"), ("phyllod", "phyllod", "#1b6ac9"))


def _ticks(top_ms: float) -> list[float]:
    """Round steps (1, 2 or 5 times a power of ten) giving four to eight lines up to ``top_ms``."""
    step = 1.0
    while top_ms / step > 8:
        for factor in (2, 2.5, 2):
            step *= factor
            if top_ms / step <= 8:
                break
    return [i * step for i in range(int(top_ms // step) + 1)]


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def latency_svg(lab: dict) -> str:
    """The plot for bench/lab_latency.py's JSON (``samples``: add_s/del_s per tool)."""
    panels = (("plug → live in L2", lab["samples"]["add_s"]),
              ("unplug → released", lab["samples"]["del_s"]))
    every = [v * 1e3 for _, by in panels for values in by.values() for v in values]
    top_ms = max(every, default=1.0) * 1.1
    plot_h = HEIGHT - TOP - BOTTOM

    def y(ms: float) -> float:
        return TOP + plot_h * (1 - ms / top_ms)

    title = f"Lab latency, every sample ({lab['plugs']} plugs of each tool, one L1)"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15">'
           f'{escape(title)}</text>']
    for ms in _ticks(top_ms):
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - 20}" y1="{y(ms):.1f}" y2="{y(ms):.1f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y(ms) + 4:.1f}" text-anchor="end">{ms:.0f}</text>')
    out.append(f'<text x="16" y="{TOP + plot_h / 2}" transform="rotate(-90 16 '
               f'{TOP + plot_h / 2})" text-anchor="middle">ms</text>')
    for p, (title, by_tool) in enumerate(panels):
        x0 = LEFT + p * PANEL
        out.append(f'<text x="{x0 + PANEL / 2:.1f}" y="{HEIGHT - 18}" text-anchor="middle" '
                   f'font-size="13">{escape(title)}</text>')
        for t, (key, label, colour) in enumerate(TOOLS):
            values = sorted(v * 1e3 for v in by_tool.get(key, []))
            cx = x0 + PANEL * (0.3 + 0.4 * t)
            out.append(f'<text x="{cx:.1f}" y="{HEIGHT - 38}" text-anchor="middle" '
                       f'fill="{colour}">{escape(label)}</text>')
            if not values:
                continue
            low, high = _quartiles(values)
            out.append(f'<rect x="{cx - 28:.1f}" y="{y(high):.1f}" width="56" '
                       f'height="{max(y(low) - y(high), 1):.1f}" fill="{colour}" '
                       'fill-opacity="0.12" stroke="none"/>')
            for i, v in enumerate(values):
                dx = ((i * 7) % 11 - 5) * 4  # a fixed spread: the same plot for the same data
                out.append(f'<circle cx="{cx + dx:.1f}" cy="{y(v):.1f}" r="3.2" '
                           f'fill="{colour}" fill-opacity="0.7"/>')
            m = statistics.median(values)
            out.append(f'<line x1="{cx - 30:.1f}" x2="{cx + 30:.1f}" y1="{y(m):.1f}" '
                       f'y2="{y(m):.1f}" stroke="{colour}" stroke-width="2.5"/>')
            out.append(f'<text x="{cx + 34:.1f}" y="{y(m) + 4:.1f}" fill="{colour}">'
                       f'{m:.0f}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
