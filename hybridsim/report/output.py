"""What ``hybridsim report`` prints and writes: rich tables, report.md, report.csv,
report.json and the plots."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hybridsim import __version__
from hybridsim.atomic import atomic_path, write_text_atomic
from hybridsim.report.groups import Report, Stat, group_name
from hybridsim.report.runs import ReportError, setting, show

FIXED_COLUMNS = ("run", "group", "seed", "model", "metric", "type", "value")


def num(x: float | None) -> str:
    """4 significant digits, exponents without padding (1.2e18, 3e-5)."""
    if x is None:
        return "-"
    text = f"{x:.4g}"
    if "e" in text:
        mantissa, exp = text.split("e")
        text = f"{mantissa}e{int(exp)}"
    return text


def _counts(s: Stat) -> str:
    n = f"{s.n}" if s.n == s.n_runs else f"{s.n}/{s.n_runs}"
    return n + (f", {s.nonfinite} non-finite" if s.nonfinite else "")


def cell(s: Stat | None) -> str:
    """Compact: ``median [min, max] (n)``; booleans ``k/n``."""
    if s is None:
        return ""
    if s.kind == "bool":
        return f"{s.true}/{s.n}" + (f" ({_counts(s)})" if s.n != s.n_runs else "")
    if not s.n:
        return f"- ({_counts(s)})"
    spread = "" if s.n == 1 else f" [{num(s.min)}, {num(s.max)}]"
    return f"{num(s.median)}{spread} ({_counts(s)})"


def _mean_std(s: Stat) -> str:
    if s.kind == "bool":
        return f"{s.true / s.n:.2f}" if s.n else "-"
    if s.mean is None:
        return "-"
    return num(s.mean) + (f" ± {num(s.std)}" if s.std is not None else "")


def _full_rows(report: Report) -> list[list[str]]:
    rows = []
    for g in report.groups:
        for model, metrics in g.stats.items():
            for metric, s in metrics.items():
                if s.kind == "bool":
                    median, spread = f"{s.true}/{s.n}", ""
                else:
                    median, spread = num(s.median), f"[{num(s.min)}, {num(s.max)}]"
                rows.append([g.label, model, metric, _counts(s), median, spread, _mean_std(s)])
    return rows


FULL_HEADER = ["group", "model", "metric", "n", "median (rate)", "[min, max]", "mean ± std"]


def _header_lines(report: Report) -> list[str]:
    reasons = Counter(r.status for r in report.unused)
    why = ", ".join(f"{k}: {v}" for k, v in reasons.items())
    lines = [
        f"runs: {len(report.used)} used, {len(report.unused)} not used"
        + (f" ({why})" if why else ""),
        "from: " + ", ".join(report.dirs),
    ]
    if report.common:
        lines.append("common settings: " + group_name(report.common))
    names = {"git_sha": "git SHA", "host": "host", "cpu": "CPU", "device": "device"}
    for key, label in names.items():
        if key in report.provenance:
            items = report.provenance[key].items()
            text = ", ".join(
                f"{v[:10] if key == 'git_sha' else v} ({n} run{'s' * (n != 1)})" for v, n in items
            )
            lines.append(f"{label}: {text}")
    return lines


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def _headline_table(report: Report, spec: str) -> tuple[list[str], list[list[str]]]:
    pairs = report.cells(spec)
    header = ["group", *(m for m, _ in pairs)]
    rows = [[g.label, *(cell(g.stats.get(m, {}).get(k)) for m, k in pairs)] for g in report.groups]
    return header, rows


def _legend(report: Report, spec: str) -> str:
    kinds = {g.stats[m][k].kind for g in report.groups for m, k in report.cells(spec)
             if k in g.stats.get(m, {})}  # fmt: skip
    return "runs where true / runs" if kinds == {"bool"} else "median [min, max] (n)"


def _unused_rows(report: Report) -> list[list[str]]:
    return [[str(r.path), r.label, r.status, r.error or ""] for r in report.unused]


def to_markdown(report: Report) -> str:
    out = ["# hybridsim report", "", f"generated {report.generated} by hybridsim {__version__}", ""]
    out += [f"- {line}" for line in _header_lines(report)]
    out += ["", "Cells: median [min, max] (n runs); booleans: runs where true / runs."]
    for spec in report.headline:
        out += ["", f"## {spec}", "", _md_table(*_headline_table(report, spec))]
    out += ["", "## All metrics", "", _md_table(FULL_HEADER, _full_rows(report))]
    if report.unused:
        header = ["run", "group", "status", "error"]
        rows = [[f"`{p}`", g, s, e] for p, g, s, e in _unused_rows(report)]
        out += ["", "## Runs not used", "", _md_table(header, rows)]
    return "\n".join(out) + "\n"


def to_csv(report: Report) -> str:
    """Tidy: one row per run x model x metric, the grouping keys as columns; booleans 1/0 with
    ``type`` bool; an empty cell for a missing or non-finite value."""
    rename = {k: f"override:{k}" if k in FIXED_COLUMNS else k for k in report.keys}
    header = ["run", "group", *rename.values(), "seed", "model", "metric", "type", "value"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for g in report.groups:
        settings = ["" if g.settings[k] is None else g.settings[k] for k in report.keys]
        for r in g.runs:
            seed = show(setting(r, "seed")) or ""
            for (model, metric), v in r.values.items():
                kind = "bool" if isinstance(v, bool) else "number"
                value = "" if v is None else str(int(v)) if kind == "bool" else repr(v)
                writer.writerow([str(r.path), g.name, *settings, seed, model, metric, kind, value])
    return buf.getvalue()


def to_json(report: Report) -> dict[str, Any]:
    return {
        "generated": report.generated,
        "hybridsim": __version__,
        "dirs": report.dirs,
        "group_keys": report.keys,
        "common": report.common,
        "headline": report.headline,
        "provenance": report.provenance,
        "groups": [
            {
                "name": g.name,
                "label": g.label,
                "settings": g.settings,
                "runs": [str(r.path) for r in g.runs],
                "metrics": {
                    m: {k: s.to_json() for k, s in ms.items()} for m, ms in g.stats.items()
                },
            }
            for g in report.groups
        ],
        "unused": [
            {"run": str(r.path), "group": r.group, "status": r.status, "error": r.error}
            for r in report.unused
        ],
    }


def plot_name(spec: str) -> str:
    return re.sub(r"[^\w.-]+", "-", spec).strip("-") + ".png"


def write_report(report: Report, out_dir: str | Path) -> list[Path]:
    """Write report.md, report.csv, report.json and plots/ into ``out_dir`` (atomically, file by
    file); plots a previous report there listed but this one does not are removed."""
    if not report.groups:
        raise ReportError("no run has an evaluation (eval/metrics.json): nothing to report")
    from hybridsim.report.plots import plot_metric

    out = Path(out_dir)
    old = out / "report.json"
    stale = set()
    if old.is_file():
        try:
            stale = set(json.loads(old.read_text()).get("plots", []))
        except (OSError, ValueError, AttributeError):
            pass
    plots = []
    for spec in report.headline:
        path = out / "plots" / plot_name(spec)
        with atomic_path(path) as tmp:
            plot_metric(report, spec, tmp)
        plots.append(path)
    data = {**to_json(report), "plots": [f"plots/{p.name}" for p in plots]}
    write_text_atomic(out / "report.md", to_markdown(report))
    write_text_atomic(out / "report.csv", to_csv(report))
    write_text_atomic(out / "report.json", json.dumps(data, indent=2, allow_nan=False))
    for rel in stale - set(data["plots"]):
        if re.fullmatch(r"plots/[\w.-]+\.png", rel):
            (out / rel).unlink(missing_ok=True)
    return [out / "report.md", out / "report.csv", out / "report.json", *plots]


def print_report(report: Report, console: Any = None) -> None:
    """The report as rich tables on the terminal (plain text: no markup in names or values)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    def table(title: str, header: list[str], rows: list[list[str]], left: int = 1) -> Table:
        t = Table(title=Text(title), title_justify="left")
        for i, h in enumerate(header):
            t.add_column(Text(h), justify="left" if i < left else "right", overflow="fold")
        for row in rows:
            t.add_row(*map(Text, row))
        return t

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    console.print(Text("hybridsim report", style="bold"))
    for line in _header_lines(report):
        console.print(Text(line))
    for spec in report.headline:
        console.print(table(f"{spec}: {_legend(report, spec)}", *_headline_table(report, spec)))
    if report.groups:
        console.print(table("all metrics", FULL_HEADER, _full_rows(report), left=3))
    if report.unused:
        header = ["run", "group", "status", "error"]
        console.print(table("runs not used", header, _unused_rows(report), left=4))
