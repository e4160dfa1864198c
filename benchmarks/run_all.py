"""Run every benchmark, one after another, each in its own process with one thread; write the
results as JSON (and the printed tables as text) into benchmarks/results/, then compare with the
last committed results file.

    python benchmarks/run_all.py [--only lv_step radon ...] [--quick] [--tolerance 0.3]
    python benchmarks/run_all.py --compare NEW.json [--against OLD.json]     (no run)

(needs: pip install -e ".[bench]"). A work item measured against a peer is compared by its ratio
(peer time / hybridsim time, both from the same run, so a loaded machine shifts both alike); an
item without a peer by its median time, which a loaded machine inflates (printed as a warning
only). A slowdown is a ratio below ``(1 - tolerance)`` times the committed one; ``--strict``
makes it fail the run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt_stats  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
BENCHMARKS = {
    "lv_step": ("bench_lv_step.py", ["--repeats", "5"]),
    "radon": ("bench_radon.py", ["--repeats", "3"]),
    "ct_train": ("bench_ct_train.py", ["--repeat", "1", "--options-repeat", "2"]),
    "fluid": ("bench_fluid.py", ["--repeats", "6"]),
}
PEERS = ("torch", "torchdiffeq", "torchode", "scikit-image", "phiflow", "phiml", "numpy")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine() -> dict:
    versions = {}
    for name in PEERS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": 1,
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit + ("-dirty" if dirty else "") if commit else None,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def run_one(name: str, quick: bool, log: list[str]) -> tuple[list[dict], bool]:
    script, quick_args = BENCHMARKS[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        cmd = [
            sys.executable,
            str(HERE / script),
            "--json",
            str(out),
            *(quick_args if quick else []),
        ]
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if "USDT:" in line:  # the profiler's start/stop chatter
                continue
            print(line, end="", flush=True)
            log.append(line.rstrip("\n"))
        ok = proc.wait() == 0
        items = json.loads(out.read_text())["items"] if out.exists() else []
    for item in items:
        item["bench"] = name
    return items, ok and bool(items)


def load(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    if "items" not in data or "machine" not in data:
        raise ValueError(f"{path}: not a benchmarks results file (needs 'machine' and 'items')")
    return data


def committed_files(exclude: Path | None = None) -> list[tuple[str, Path, dict]]:
    """The committed results files (``git ls-files``), newest first: ``(date, path, data)``."""
    listed = git("ls-files", "--", str(RESULTS.relative_to(ROOT)))
    found = []
    for rel in listed.splitlines():
        path = ROOT / rel
        if path.suffix != ".json" or not path.exists() or path == exclude:
            continue
        try:
            data = load(path)
        except (ValueError, json.JSONDecodeError):
            continue
        found.append((data["machine"].get("date") or "", path, data))
    return sorted(found, key=lambda f: f[0], reverse=True)


def references(new: dict, files: list[tuple[str, Path, dict]]) -> list[tuple[Path, dict]]:
    """For every benchmark in ``new``, the newest of ``files`` (``committed_files()``, newest
    first) that measured it, so that a committed run of ``--only lv_step`` does not hide the
    older file that holds the radon items: ``(path, its data restricted to the benchmarks it
    is the reference for)`` per file used."""
    wanted = {i.get("bench") for i in new["items"]}
    chosen: dict[Path, tuple[dict, set]] = {}
    for _, path, data in files:
        has = {i.get("bench") for i in data["items"]} & wanted
        if has:
            chosen[path] = (data, has)
            wanted -= has
        if not wanted:
            break
    return [
        (path, {**data, "items": [i for i in data["items"] if i.get("bench") in benches]})
        for path, (data, benches) in chosen.items()
    ]


def compare(old: dict, new: dict, tolerance: float) -> tuple[list[str], list[str]]:
    """``(slowdowns, notes)`` of ``new`` against ``old``, item by item (matched by bench and
    name). Ratio items: slower when ``ratio_new < (1 - tolerance) ratio_old``. Items without a
    peer: a median above ``(1 + tolerance)`` times the old one is a note (load-sensitive)."""
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    before = {(i.get("bench"), i["name"]): i for i in old["items"]}
    slow, notes = [], []
    for item in new["items"]:
        key = (item.get("bench"), item["name"])
        ref = before.get(key)
        if ref is None:
            notes.append(f"new item (nothing to compare): {item['name']}")
            continue
        if item.get("ratio") and ref.get("ratio"):
            change = item["ratio"] / ref["ratio"]
            line = (
                f"{item['name']}: ratio to {item['peer_name']} {item['ratio']:.2f}x, was "
                f"{ref['ratio']:.2f}x ({100 * (change - 1):+.0f} %)"
            )
            if change < 1 - tolerance:
                slow.append("SLOWER " + line)
            else:
                notes.append("ok " + line)
        elif item["ours"]["median"] > (1 + tolerance) * ref["ours"]["median"]:
            notes.append(
                f"slower in absolute time (no peer; machine load counts): {item['name']}: "
                f"{item['ours']['median']:.4g} {item['unit']}, was {ref['ours']['median']:.4g}"
            )
    run = {i.get("bench") for i in new["items"]}  # benchmarks left out by --only are not missing
    missing = sorted({k[1] for k in before if k[0] in run} - {i["name"] for i in new["items"]})
    notes += [f"not measured this time: {name}" for name in missing]
    return slow, notes


def report(refs: list[tuple[Path, dict]], new: dict, tolerance: float) -> int:
    """Print the comparison with each reference file; the number of slowdowns."""
    if not refs:
        print("\nno committed results file to compare with (benchmarks/results/*.json)")
        return 0
    n_slow = 0
    for old_path, old in refs:
        shown = old_path.relative_to(ROOT) if old_path.is_relative_to(ROOT) else old_path
        benches = sorted({str(i.get("bench")) for i in old["items"]})
        print(
            f"\ncompared with {shown}"
            f" ({old['machine'].get('commit')}, {old['machine'].get('date')}, "
            f"{old['machine'].get('cpu')}) for {', '.join(benches)}; "
            f"tolerance {100 * tolerance:.0f} %"
        )
        if old["machine"].get("cpu") != new["machine"].get("cpu"):
            print("  note: another CPU model; only the ratios are comparable")
        part = {**new, "items": [i for i in new["items"] if str(i.get("bench")) in benches]}
        slow, notes = compare(old, part, tolerance)
        for line in slow + notes:
            print("  " + line)
        if not slow:
            print("  no ratio slowed down beyond the tolerance")
        n_slow += len(slow)
    compared = {str(i.get("bench")) for _, old in refs for i in old["items"]}
    for bench in sorted({str(i.get("bench")) for i in new["items"]} - compared):
        print(f"\n{bench}: no committed results file has measured it (nothing to compare)")
    return n_slow


def _refs(against: Path | None, new: dict, exclude: Path | None = None) -> list:
    if against is not None:
        return [(against, load(against))]
    return references(new, committed_files(exclude))


def markdown(data: dict) -> str:
    """The results file as a markdown table (what docs/benchmarks.md shows)."""
    m = data["machine"]
    v = m.get("versions", {})
    lines = [
        f"Machine: {m.get('cpu')} ({m.get('cores')} cores, shared; load average at the start "
        f"{', '.join(f'{x:.1f}' for x in m.get('load_average') or [])}), "
        f"{m.get('threads')} thread; "
        f"torch {v.get('torch')}, torchdiffeq {v.get('torchdiffeq')}, torchode "
        f"{v.get('torchode')}, scikit-image {v.get('scikit-image')}, phiflow {v.get('phiflow')}; "
        f"commit {m.get('commit')}; {m.get('date')}" + ("; quick run" if data.get("quick") else ""),
        "",
        "| benchmark | work | hybridsim, median [min, max] (n) | peer in the same run | ratio "
        "| note |",
        "|---|---|---|---|---|---|",
    ]
    for i in data["items"]:
        peer = "" if i["peer"] is None else f"{i['peer_name']}: {fmt_stats(i['peer'], i['unit'])}"
        ratio = "" if i["ratio"] is None else f"{i['ratio']:.2f}x"
        note = (i.get("note") or "").replace("|", "\\|")  # a cell may not hold a bare |
        lines.append(
            f"| {i.get('bench', '')} | {i['name']} | {fmt_stats(i['ours'], i['unit'])} | {peer} "
            f"| {ratio} | {note} |"
        )
    if data.get("failed"):
        lines.append(f"\nfailed: {', '.join(data['failed'])}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run these only")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--tolerance", type=float, default=0.3)
    parser.add_argument("--strict", action="store_true", help="exit non-zero on a slowdown")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument("--compare", type=Path, help="compare this results file; run nothing")
    parser.add_argument("--against", type=Path, help="instead of the last committed file")
    parser.add_argument(
        "--markdown", type=Path, help="print this results file as a table; run nothing"
    )
    args = parser.parse_args()
    if not 0 <= args.tolerance < 1:
        parser.error(f"--tolerance must be in [0, 1), got {args.tolerance}")
    for flag in ("compare", "against", "markdown"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            print(f"run_all: --{flag}: no such file: {path}", file=sys.stderr)
            return 2
    try:
        if args.markdown:
            print(markdown(load(args.markdown)), end="")
            return 0
        if args.compare:
            new = load(args.compare)
            refs = _refs(args.against, new, exclude=args.compare.resolve())
            n_slow = report(refs, new, args.tolerance)
            return 1 if n_slow and args.strict else 0
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"run_all: {exc}", file=sys.stderr)
        return 2

    log: list[str] = []
    new = {"machine": machine(), "items": [], "failed": []}
    for name in args.only or list(BENCHMARKS):
        header = f"\n=== {name} ({BENCHMARKS[name][0]}) ==="
        print(header, flush=True)
        log.append(header)
        items, ok = run_one(name, args.quick, log)
        new["items"] += items
        if not ok:
            new["failed"].append(name)
    new["quick"] = args.quick
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = new["machine"]["date"].replace(":", "").replace("+0000", "Z")
    commit = (new["machine"]["commit"] or "nocommit")[:7]
    stem = args.out / f"{stamp}-{commit}"
    stem.with_suffix(".json").write_text(json.dumps(new, indent=1) + "\n")
    stem.with_suffix(".txt").write_text("\n".join(log) + "\n")
    print(f"\nwrote {stem}.json and {stem.name}.txt")
    n_slow = report(
        _refs(args.against, new, exclude=stem.with_suffix(".json")), new, args.tolerance
    )
    if new["failed"]:
        print(f"\nfailed: {', '.join(new['failed'])}", file=sys.stderr)
        return 1
    return 1 if n_slow and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
