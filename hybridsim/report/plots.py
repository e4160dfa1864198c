"""Plots of ``hybridsim report``: one headline metric across the groups of a report.

Numbers: every run's value as a point and the group's median as a line, per group and model; a
log axis when the values are positive and span more than a decade. Booleans: the rate as a bar,
labelled ``k/n``. Non-finite values cannot be drawn; the title says how many were left out.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hybridsim.report.groups import Report


def plot_metric(report: Report, spec: str, path: Path) -> None:
    """Write the plot of headline entry ``spec`` (``metric`` or ``model/metric``) to ``path``
    as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = report.cells(spec)
    groups = report.groups
    width = 0.8 / max(len(pairs), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(groups) + 2.5), 4.2))
    values, nonfinite, kinds = [], 0, set()
    for j, (model, metric) in enumerate(pairs):
        colour = f"C{j % 10}"
        for i, g in enumerate(groups):
            s = g.stats.get(model, {}).get(metric)
            if s is None:
                continue
            kinds.add(s.kind)
            nonfinite += s.nonfinite
            x = i + (j - (len(pairs) - 1) / 2) * width
            if s.kind == "bool":
                rate = s.true / s.n if s.n else 0.0
                ax.bar(x, rate, width * 0.9, color=colour, label=model if i == 0 else None)
                ax.text(x, rate + 0.02, f"{s.true}/{s.n}", ha="center", va="bottom", fontsize=8)
                continue
            ys = [v for _, v in s.values if v is not None]
            values += ys
            # A deterministic spread of the points inside the slot, so equal values stay visible.
            spread = [x + width * 0.3 * (k / max(len(ys) - 1, 1) - 0.5) for k in range(len(ys))]
            ax.plot(
                spread, ys, "o", color=colour, ms=4, alpha=0.75, label=model if i == 0 else None
            )
            if s.median is not None:
                ax.hlines(s.median, x - width * 0.4, x + width * 0.4, color="k", lw=2)
    if kinds == {"bool"}:
        ax.set_ylim(0, 1.12)
        ax.set_ylabel("rate (runs where true)")
    else:
        positive = [v for v in values if v > 0]
        if positive and len(positive) == len(values) and max(values) > 10 * min(values):
            ax.set_yscale("log")
        ax.set_ylabel(spec.split("/")[-1] + "  (points: runs, line: median)")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([textwrap.fill(g.label, 24) for g in groups], fontsize=8)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    title = spec + (f"  ({nonfinite} non-finite values not shown)" if nonfinite else "")
    ax.set_title(title, fontsize=10)
    if len(pairs) > 1 or pairs and pairs[0][0] != spec.split("/")[0]:
        ax.legend(fontsize=8, title="model", title_fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
