"""``hybridsim report DIR [DIR ...]``: aggregate training runs into tables and plots.

A DIR is one run, a multirun directory (``outputs/train-multirun/<date>/<time>``) or any folder
above run directories. Runs are grouped by their overrides (``.hydra/overrides.yaml``) minus
the seeds and the keys that do not change results; a key's value is read from each run's own
config (``.hydra/hydra.yaml`` choices, then ``config_resolved.yaml``), so runs of two sweeps with
the same effective settings join one group even if only one sweep spelled a setting out. Per
group, model and metric of ``eval/metrics.json``: n, mean, std, median, min, max (booleans: a
rate ``k/n``); written as ``report.md``, a tidy ``report.csv``, ``report.json`` and one plot per
headline metric. Runs that cannot be used are listed with their status, never dropped.

No Hydra here (plain YAML/JSON reading) and no torch: the command starts in well under a second.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from hybridsim.report.groups import Group, Report, Stat, build_report
from hybridsim.report.output import print_report, to_csv, to_json, to_markdown, write_report
from hybridsim.report.runs import ReportError, Run, UsageError, find_runs, read_run
from hybridsim.report.search import search_markdown, search_results

__all__ = [
    "Group",
    "Report",
    "ReportError",
    "Run",
    "Stat",
    "build_report",
    "find_runs",
    "main",
    "print_report",
    "read_run",
    "to_csv",
    "to_json",
    "to_markdown",
    "write_report",
]

HELP = """\
usage: hybridsim report DIR [DIR ...] [by=KEY,...] [ignore=KEY,...] [out=DIR]

Aggregate training runs into tables and plots. Each DIR is a multirun directory
(outputs/train-multirun/<date>/<time>), a folder holding run directories, or one run.

Runs are grouped by their overrides (.hydra/overrides.yaml) minus the seeds (seed,
problem.seed_*) and the keys that do not change results (hydra.*, progress, data_dir,
evaluate, resume). Each key's value is read from the run's own config, so runs of several
sweeps with the same settings join one group.
  by=KEY,...      group by exactly these keys (e.g. by=correction,problem.noise)
  ignore=KEY,...  leave these keys out of the grouping as well (e.g. ignore=recipe.steps)
  out=DIR         where the files go (default: DIR/report/ for one DIR,
                  else outputs/report/<date>/<time>/)

For every group, model and metric of eval/metrics.json: n, median, min, max, mean, std;
booleans as a rate (9/10). Written: report.md (GitHub markdown), report.csv (tidy: one row per
run x model x metric), report.json, plots/<metric>.png (one per headline metric). Runs that
failed, are incomplete or have no evaluation are listed with their status. A directory of an
Optuna search (optimization_results.yaml) adds its best value and parameters and every trial's
objective, best first (also when the trials were not evaluated).

examples:
  hybridsim report outputs/train-multirun/2026-11-28/13-00-00.123456
  hybridsim report sweep_a sweep_b by=correction out=results/lv
"""


def parse_args(argv: list[str]) -> tuple[list[str], list[str] | None, list[str] | None, str | None]:
    """``DIR ... [by=a,b] [ignore=a,b] [out=DIR]`` -> (dirs, by, ignore, out)."""
    dirs, opts = [], {}
    for arg in argv:
        name, eq, value = arg.partition("=")
        if eq and name in ("by", "ignore", "out"):
            if name in opts:
                raise UsageError(f"{name}= given twice")
            if name != "out":
                keys = value.split(",")
                if not all(re.fullmatch(r"\+{0,2}[\w][\w./@-]*", k) for k in keys):
                    raise UsageError(
                        f"{arg!r}: expected {name}=KEY[,KEY...] (e.g. {name}=problem.noise,seed)"
                    )
                opts[name] = keys
            elif not value:
                raise UsageError("out= needs a directory")
            else:
                opts[name] = value
        elif arg.startswith("-"):
            raise UsageError(f"unknown option {arg!r} (see hybridsim report --help)")
        else:
            dirs.append(arg)
    return dirs, opts.get("by"), opts.get("ignore"), opts.get("out")


def default_out(dirs: list[str]) -> Path:
    if len(dirs) == 1:
        return Path(dirs[0]) / "report"
    now = time.time()
    stamp = time.strftime("%Y-%m-%d/%H-%M-%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
    return Path("outputs") / "report" / stamp


def main(argv: list[str]) -> int:
    """``hybridsim report``: 0 when a report was written (also with failed runs, which it lists);
    2 for wrong syntax, 1 for unusable input or when no run has an evaluation."""
    if any(a in ("-h", "--help") for a in argv):
        print(HELP)
        return 0
    try:
        dirs, by, ignore, out = parse_args(argv)
        report = build_report(dirs, by, ignore)
        search = search_markdown(search_results(dirs))
        if not report.groups and search:  # a search whose trials were not evaluated
            print(search)
            return 0
        if not report.groups:
            print_report(report)
            raise ReportError(
                f"none of the {len(report.unused)} runs has an evaluation (eval/metrics.json)"
            )
        target = Path(out) if out else default_out(dirs)
        files = write_report(report, target)
        if search:
            with (target / "report.md").open("a") as f:
                f.write("\n" + search)
    except ReportError as e:
        print(f"hybridsim report: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except OSError as e:
        print(f"hybridsim report: error: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    try:
        print_report(report)
        if search:
            print(search)
        n_plots = len(files) - 3
        print(f"report: {target}/ (report.md, report.csv, report.json, {n_plots} plots in plots/)")
        sys.stdout.flush()
    except BrokenPipeError:  # `hybridsim report DIR | head`: the files are written, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
