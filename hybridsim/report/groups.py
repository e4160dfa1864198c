"""Grouping and aggregation for ``hybridsim report``: runs -> groups -> per model and metric
n, median, min, max, mean, std (booleans: a rate)."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from hybridsim.report.runs import (
    MISSING,
    RUN_MARKERS,
    USED,
    ReportError,
    Run,
    UsageError,
    find_runs,
    key_name,
    read_run,
    setting,
    show,
)

# Keys that never define a group: seeds (a group is a distribution over them) and settings
# that change where or how verbosely a run works, not its results.
SEED_KEYS = ("seed", "problem.seed_*")
NEUTRAL_KEYS = ("hydra", "hydra.*", "hydra/*", "progress", "data_dir", "evaluate", "resume")
MAX_DEFAULT_HEADLINE = 6


@dataclass
class Stat:
    """One model's metric over the used runs of a group; non-finite/null values are counted
    apart (``nonfinite``), runs without the metric are ``n_runs - n - nonfinite``."""

    kind: str  # "number" or "bool"
    n_runs: int
    n: int
    nonfinite: int
    values: list[tuple[str, Any]]  # (run path, value; None when non-finite)
    median: float | None = None
    mean: float | None = None
    std: float | None = None  # sample standard deviation (ddof=1), None for n < 2
    min: float | None = None
    max: float | None = None
    true: int | None = None  # booleans: runs where true

    @property
    def missing(self) -> int:
        return self.n_runs - self.n - self.nonfinite

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "n": self.n, "n_runs": self.n_runs}
        out["nonfinite"], out["missing"] = self.nonfinite, self.missing
        if self.kind == "bool":
            out["true"] = self.true
            out["rate"] = self.true / self.n if self.n else None
        else:
            for k in ("median", "mean", "std", "min", "max"):
                out[k] = getattr(self, k)
        out["values"] = [{"run": r, "value": v} for r, v in self.values]
        return out


@dataclass
class Group:
    name: str  # "problem=lv problem.noise=0.05", "(defaults)" when no key
    label: str  # only the keys that differ between groups ("all runs" when none do)
    settings: dict[str, str | None]  # key -> value as written, None where a run lacks the key
    runs: list[Run]  # the used runs
    stats: dict[str, dict[str, Stat]]  # model -> metric -> Stat


@dataclass
class Report:
    dirs: list[str]
    keys: list[str]  # the grouping keys
    common: dict[str, str | None]  # keys with one value over all runs
    groups: list[Group]
    unused: list[Run]
    headline: list[str]  # "metric" (every model that has it) or "model/metric"
    provenance: dict[str, dict[str, int]]  # e.g. "git_sha" -> {sha: number of runs}
    generated: str

    @property
    def used(self) -> list[Run]:
        return [r for g in self.groups for r in g.runs]

    def cells(self, spec: str) -> list[tuple[str, str]]:
        """The (model, metric) pairs a headline entry names."""
        models = list(dict.fromkeys(m for g in self.groups for m in g.stats))
        model, _, metric = spec.partition("/")
        if metric and model in models:
            pairs = [(model, metric)]
        else:
            pairs = [(m, spec) for m in models]
        return [(m, k) for m, k in pairs if any(k in g.stats.get(m, {}) for g in self.groups)]


def _excluded(key: str) -> bool:
    return any(fnmatchcase(key, p) for p in (*SEED_KEYS, *NEUTRAL_KEYS))


def group_name(settings: dict[str, str | None]) -> str:
    return " ".join(f"{k}={'-' if v is None else v}" for k, v in settings.items()) or "(defaults)"


def _check_keys(runs: list[Run], keys: list[str], option: str) -> None:
    for k in keys:
        if all(setting(r, k) is MISSING for r in runs):
            raise ReportError(f"{option}: no run has the key {k!r} (in its config or overrides)")


# ---------------------------------------------------------------- aggregation


def _stat(values: list[tuple[str, Any]], n_runs: int) -> Stat:
    present = [v for _, v in values if v is not None]
    nonfinite = len(values) - len(present)
    if present and all(isinstance(v, bool) for v in present):
        return Stat("bool", n_runs, len(present), nonfinite, values, true=sum(present))
    xs = [float(v) for v in present]
    s = Stat("number", n_runs, len(xs), nonfinite, values)
    if xs:
        s.median, s.mean = statistics.median(xs), statistics.fmean(xs)
        s.min, s.max = min(xs), max(xs)
        s.std = statistics.stdev(xs) if len(xs) > 1 else None
    return s


def build_report(
    dirs: list[str | Path], by: list[str] | None = None, ignore: list[str] | None = None
) -> Report:
    """Discover, read, group and aggregate the runs in ``dirs``; ReportError on bad input.

    ``by``: group by exactly these keys; ``ignore``: keys left out of the grouping as well.
    """
    if not dirs:
        raise UsageError("give at least one directory (see hybridsim report --help)")
    paths: list[Path] = []
    seen: set[Path] = set()
    for d in map(Path, dirs):
        if not d.exists():
            raise ReportError(f"{d} does not exist")
        if not d.is_dir():
            raise ReportError(f"{d} is not a directory")
        found = find_runs(d)
        if not found:
            raise ReportError(f"{d} holds no run directories (none with {', '.join(RUN_MARKERS)})")
        for p in found:
            if p.resolve() not in seen:  # the same run reached through two DIRs counts once
                seen.add(p.resolve())
                paths.append(p)
    runs = [read_run(p) for p in paths]
    ignore = [key_name(k) for k in ignore or []]
    _check_keys(runs, ignore, "ignore=")
    if by is not None:
        by = [key_name(k) for k in by]
        _check_keys(runs, by, "by=")
        keys = [k for k in by if k not in ignore]
    else:
        keys = [
            k
            for k in dict.fromkeys(k for r in runs for k in r.overrides)
            if not _excluded(k) and k not in ignore
        ]
    shown = {id(r): {k: show(setting(r, k)) for k in keys} for r in runs}
    varying = [k for k in keys if len({shown[id(r)][k] for r in runs}) > 1]
    label_keys = keys if by is not None else varying
    common = {k: shown[id(runs[0])][k] for k in keys if k not in varying}

    groups: dict[str, Group] = {}
    for r in runs:
        r.group = group_name(shown[id(r)])
        # One group: its settings are all common, shown once above the tables.
        r.label = group_name({k: shown[id(r)][k] for k in label_keys}) if label_keys else "all runs"
        if r.status != USED:
            continue
        if r.group not in groups:
            groups[r.group] = Group(r.group, r.label, shown[id(r)], [], {})
        groups[r.group].runs.append(r)
    cells = list(dict.fromkeys(c for g in groups.values() for r in g.runs for c in r.values))
    for g in groups.values():
        for model, metric in cells:
            vals = [
                (str(r.path), r.values[(model, metric)])
                for r in g.runs
                if (model, metric) in r.values
            ]
            if vals:
                g.stats.setdefault(model, {})[metric] = _stat(vals, len(g.runs))

    report = Report(
        dirs=[str(d) for d in dirs],
        keys=keys,
        common=common,
        groups=list(groups.values()),
        unused=[r for r in runs if r.status != USED],
        headline=[],
        provenance=_provenance(runs),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    asked = list(dict.fromkeys(h for r in report.used for h in r.headline))
    report.headline = [h for h in asked if report.cells(h)]
    if not report.headline and cells:
        model = "hybrid" if any(m == "hybrid" for m, _ in cells) else cells[0][0]
        metrics = [k for m, k in cells if m == model][:MAX_DEFAULT_HEADLINE]
        report.headline = [f"{model}/{k}" for k in metrics]
    return report


def _provenance(runs: list[Run]) -> dict[str, dict[str, int]]:
    out = {}
    for key in ("git_sha", "hybridsim", "host", "cpu", "device", "torch"):
        count = Counter(str(r.meta[key]) for r in runs if r.meta.get(key) not in (None, ""))
        if count:
            out[key] = dict(sorted(count.items()))
    return out
