"""Shared timing and result recording for the benchmarks (one thread, medians over repeats).

Every benchmark script measures hybridsim and, where there is one, the named peer in the same
process, and records each work item as

    {"name", "unit", "ours": {median, min, max, n}, "peer": {...} | None, "peer_name",
     "ratio": peer median / ours median (> 1: hybridsim is faster) | None, "note"}

``--json PATH`` on a script writes its items there; ``benchmarks/run_all.py`` collects them,
adds the machine and the commit, and compares with the last committed results file.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def measure(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict:
    """Seconds per call of ``fn``: ``{"median", "min", "max", "n"}`` over ``repeats`` timed
    calls after ``warmup`` untimed ones (caches, allocator, lazily built matrices)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summary(times)


def measure_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, block: int = 1
) -> dict[str, dict]:
    """``measure`` for several functions at once, their turns alternating (a, b, a, b, ...),
    so that a change in machine load hits every one of them alike and their ratio holds even
    on a busy shared machine.

    ``block = 1``: a turn is one timed call. ``block > 1``: a turn is one untimed call and then
    ``block`` timed calls back to back, ``repeats`` turns each (``repeats * block`` timings).
    Use blocks where one side's call is short beside the other's: a 20x longer peer call
    between two of ours evicts our caches, and single alternating calls then time a cold
    call of ours, not a step as a simulation runs it (steps back to back). Both sides are
    measured the same way.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            if block > 1:
                fn()  # the turn starts warm
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {k: summary(v) for k, v in times.items()}


def summary(times: list[float]) -> dict:
    """``{"median", "min", "max", "n"}`` of a list of timings (seconds)."""
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "n": len(times),
    }


def scaled(stats: dict, factor: float) -> dict:
    """The same statistics divided by ``factor`` (e.g. per image of a batch)."""
    return {**stats, **{k: stats[k] / factor for k in ("median", "min", "max")}}


class Results:
    """Work items of one benchmark script, printed as they come and written as JSON."""

    def __init__(self, bench: str) -> None:
        self.bench = bench
        self.items: list[dict] = []

    def add(
        self,
        name: str,
        ours: dict,
        peer: dict | None = None,
        peer_name: str | None = None,
        unit: str = "s",
        note: str | None = None,
    ) -> dict:
        ratio = peer["median"] / ours["median"] if peer is not None else None
        item = {
            "name": name,
            "unit": unit,
            "ours": ours,
            "peer": peer,
            "peer_name": peer_name if peer is not None else None,
            "ratio": ratio,
            "note": note,
        }
        self.items.append(item)
        return item

    def write(self, path: str | Path | None) -> None:
        if path is None:
            return
        Path(path).write_text(json.dumps({"bench": self.bench, "items": self.items}, indent=1))


def fmt_time(seconds: float, unit: str = "s") -> str:
    """``12.3 ms`` style, with the range's unit chosen by magnitude."""
    if unit != "s":
        return f"{seconds:.4g} {unit}"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


def fmt_stats(stats: dict, unit: str = "s") -> str:
    """``median [min, max] (n)``."""
    return (
        f"{fmt_time(stats['median'], unit)} [{fmt_time(stats['min'], unit)}, "
        f"{fmt_time(stats['max'], unit)}] (n={stats['n']})"
    )


def print_item(item: dict) -> None:
    line = f"  {item['name']:<44} {fmt_stats(item['ours'], item['unit'])}"
    if item["peer"] is not None:
        line += (
            f" | {item['peer_name']}: {fmt_stats(item['peer'], item['unit'])}"
            f" | ratio {item['ratio']:.2f}x"
        )
    if item["note"]:
        line += f"  ({item['note']})"
    print(line, flush=True)
