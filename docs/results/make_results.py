#!/usr/bin/env python3
"""``make results``: run the sweeps behind every figure the README quotes, report each with
``hybridsim report``, and rewrite the README's generated result blocks from those reports.

    python docs/results/make_results.py                 # every experiment (long: see README)
    python docs/results/make_results.py --only lv       # one experiment
    python docs/results/make_results.py --jobs 2        # 2 jobs at a time (needs .[sweep])
    python docs/results/make_results.py --reuse         # report the last sweeps again, no training
    python docs/results/make_results.py --reuse --reeval   # evaluate their checkpoints anew first

Each experiment is a `hybridsim train -m` sweep over ``seed = problem.seed_train = 1..n`` into
``outputs/results/<name>/<time>/``; its report goes to ``docs/results/<name>/`` (report.md,
report.csv, report.json, plots, and sweep.json: the command, the commit, the wall time). The
blocks between ``<!-- results:<block> -->`` and ``<!-- /results:<block> -->`` in README.md and
docs/*.md are generated from the reports, so no figure in them is typed in.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hybridsim.report import build_report, write_report  # noqa: E402
from hybridsim.report.output import cell  # noqa: E402


@dataclass
class Experiment:
    name: str
    title: str
    overrides: list[str]
    seeds: int = 10
    # rows of its README table: (label, model or "*" or "model@column", metric)
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    # the models (columns) of that table: name in eval/metrics.json -> label
    models: dict[str, str] = field(default_factory=lambda: dict(LV_MODELS))


LV_MODELS = {
    "hybrid": "UDE (network)",
    "discovered": "UDE → discovered equations",
    "blackbox": "black-box neural ODE",
    "physics": "physics only",
}
LV_ROWS = [
    ("relative L2 error, training window (t ≤ t_train)", "*", "rel_l2_window"),
    ("relative L2 error, extrapolation (t_train < t ≤ t_test)", "*", "rel_l2_extrapolation"),
    ("black box's extrapolation error / UDE's", "run@hybrid", "extrapolation_gain_over_blackbox"),
    (
        "black box's extrapolation error / discovered equations'",
        "run@discovered",
        "discovered_gain_over_blackbox",
    ),
    ("learned terms vs −βxy (relative L2)", "hybrid", "term_x_rel_err"),
    ("learned terms vs γxy − δy (relative L2)", "hybrid", "term_y_rel_err"),
    ("structure found (the true terms, only those)", "discovered", "structure_found"),
    ("β relative error", "discovered", "beta_rel_err"),
    ("γ relative error", "discovered", "gamma_rel_err"),
    ("β error, least squares on the learned terms alone", "discovered", "beta_rel_err_regression"),
    ("γ error, least squares on the learned terms alone", "discovered", "gamma_rel_err_regression"),
]
EXPERIMENTS = [
    Experiment("lv", "`hybridsim train problem=lv` (1 % noise)", ["problem=lv"], rows=LV_ROWS),
    Experiment(
        "lv-noise5", "`problem.noise=0.05`", ["problem=lv", "problem.noise=0.05"], rows=LV_ROWS
    ),
    Experiment("lv-noise0", "`problem.noise=0`", ["problem=lv", "problem.noise=0"], rows=LV_ROWS),
    Experiment(
        "lv-unconstrained",
        "`problem.per_capita=false` (the paper's unconstrained NN₁, NN₂)",
        ["problem=lv", "problem.per_capita=false"],
        seeds=3,
        rows=LV_ROWS,
    ),
    Experiment(
        "lv-small-orbit",
        "a small orbit near the equilibrium (4, 2.75): `problem.x0=5 problem.y0=3.5`",
        ["problem=lv", "problem.x0=5", "problem.y0=3.5"],
        seeds=3,
        rows=LV_ROWS,
    ),
    Experiment(
        "lv-paper",
        "the paper's parameters, initial condition, window and noise: `problem.alpha=1.3 "
        "problem.beta=0.9 problem.gamma=0.8 problem.delta=1.8 problem.x0=0.44249296 "
        "problem.y0=4.6280594 problem.t_train=3 problem.t_test=6 problem.noise=0.05`",
        [
            "problem=lv",
            "problem.alpha=1.3",
            "problem.beta=0.9",
            "problem.gamma=0.8",
            "problem.delta=1.8",
            "problem.x0=0.44249296",
            "problem.y0=4.6280594",
            "problem.t_train=3",
            "problem.t_test=6",
            "problem.noise=0.05",
        ],
        seeds=3,
        rows=LV_ROWS,
    ),
]
NS_MODELS = {
    "solver": "SRC (coarse solver alone)",
    "non": "NON (one-step supervised)",
    "hybrid": "SOL (solver in the loop)",
}
NS_ROWS = [
    ("100-step relative L2 error (mean over steps 1–100)", "*", "rel_l2_mean"),
    ("relative L2 error at step 100", "*", "rel_l2_100"),
    ("relative L2 error at step 500", "*", "rel_l2_500"),
    ("rollouts finite over 500 steps (fraction)", "*", "finite_500"),
    ("SRC's 100-step error / the model's", "*", "gain_over_solver"),
    ("time until vorticity correlation < 0.95 (within 100 steps)", "*", "corr_time"),
    ("time until vorticity correlation < 0.8 (within 500 steps)", "*", "decorr_time"),
    ("kinetic energy / the reference's, step 100", "*", "energy_ratio_100"),
    ("kinetic energy / the reference's, step 500", "*", "energy_ratio_500"),
]
# problem=ns, one per scenario a user can name, on that scenario's defaults (3 seeds: CPU-sized)
for _scenario, _what in (
    ("wake", "the 2D cylinder wake"),
    ("taylor_green", "the Taylor–Green vortex (exact reference)"),
    ("kolmogorov", "Kolmogorov flow"),
    ("wake3d", "the 3D sphere wake (CPU-sized grid)"),
):
    EXPERIMENTS.append(
        Experiment(
            f"ns-{_scenario}",
            f"`hybridsim train problem=ns problem.scenario={_scenario}`: {_what}",
            ["problem=ns", f"problem.scenario={_scenario}"],
            seeds=3,
            rows=NS_ROWS,
            models=NS_MODELS,
        )
    )
# Generated blocks: (file, block name) -> the experiments shown in it
BLOCKS = {
    ("README.md", "lv"): ["lv", "lv-noise5", "lv-noise0"],
    ("docs/lv.md", "lv-unconstrained"): ["lv-unconstrained"],
    ("docs/lv.md", "lv-other-cases"): ["lv-small-orbit", "lv-paper"],
    ("docs/ns.md", "ns-kolmogorov"): ["ns-kolmogorov"],
    ("docs/ns.md", "ns-wake3d"): ["ns-wake3d"],
}


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "")
    except OSError:
        return "unknown"


def hybridsim_exe() -> str:
    search = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    exe = shutil.which("hybridsim", path=search)
    if exe is None:
        raise SystemExit("make results: the hybridsim command is not installed (make install)")
    return exe


def run_sweep(exp: Experiment, jobs: int, out_root: Path) -> Path:
    sweep = out_root / exp.name / time.strftime("%Y-%m-%d_%H-%M-%S")
    cmd = [
        hybridsim_exe(),
        "train",
        "-m",
        *exp.overrides,
        f"seed=range(1,{exp.seeds + 1})",
        "problem.seed_train=${seed}",
        "progress=none",
        f"hydra.sweep.dir={sweep}",
    ]
    if jobs > 1:
        cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print(f"[{exp.name}] {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    seconds = time.perf_counter() - t0
    sweep.mkdir(parents=True, exist_ok=True)
    record = {
        "command": cmd[1:],
        "commit": git_sha(),
        "seconds": round(seconds, 1),
        "jobs": jobs,
        "exit_code": proc.returncode,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (sweep / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"[{exp.name}] {seconds / 60:.1f} min, exit {proc.returncode}", flush=True)
    return sweep


def latest_sweep(exp: Experiment, out_root: Path) -> Path:
    sweeps = sorted(p for p in (out_root / exp.name).glob("*") if (p / "sweep.json").exists())
    if not sweeps:
        raise SystemExit(f"make results: no sweep of {exp.name} under {out_root} to reuse")
    return sweeps[-1]


def reevaluate(sweep: Path) -> None:
    """``hybridsim eval`` on every finished run of a sweep (after a change to the evaluation)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for run in sorted(p.parent.parent for p in sweep.glob("*/checkpoints/best.pt")):
        proc = subprocess.run(
            [hybridsim_exe(), "eval", f"run={run}"], cwd=ROOT, env=env, capture_output=True
        )
        print(f"  eval {run}: exit {proc.returncode}", flush=True)


def report_sweep(exp: Experiment, sweep: Path) -> dict:
    report = build_report([str(sweep)])
    dest = ROOT / "docs" / "results" / exp.name
    write_report(report, dest)
    shutil.copy(sweep / "sweep.json", dest / "sweep.json")
    return {"report": report, "sweep": json.loads((sweep / "sweep.json").read_text())}


def table(exp: Experiment, result: dict) -> str:
    report = result["report"]
    if len(report.groups) != 1:
        raise SystemExit(
            f"make results: {exp.name} should give one group, got {len(report.groups)}"
        )
    stats = report.groups[0].stats
    models = [m for m in exp.models if m in stats]
    lines = [
        "| | " + " | ".join(exp.models[m] for m in models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for label, model, metric in exp.rows:
        if model == "*":
            cells = [cell(stats[m].get(metric)) for m in models]
        else:  # "model" or "model@column": a value of one model, shown in one column
            model, _, column = model.partition("@")
            value = cell(stats.get(model, {}).get(metric))
            if not value:
                continue
            column = column or model
            span = models.index(column) if column in models else 0
            cells = [""] * len(models)
            cells[span] = value
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def provenance(result: dict) -> str:
    report, sweep = result["report"], result["sweep"]
    cpus = ", ".join(f"{k} ({v} runs)" for k, v in report.provenance.get("cpu", {}).items())
    shas = ", ".join(f"{k[:10]}" for k in report.provenance.get("git_sha", {}))
    n = len(report.used)
    unused = f", {len(report.unused)} runs not used" if report.unused else ""
    return (
        f"n = {n} runs (seed = problem.seed_train = 1…{n}){unused}; "
        f"commit {shas or sweep['commit']}; "
        f"CPU: {cpus or 'unknown'}; sweep wall time {sweep['seconds'] / 60:.0f} min with "
        f"{sweep['jobs']} job(s) at a time, finished {sweep['finished']}."
    )


def write_block(readme: str, block: str, text: str) -> str:
    start, end = f"<!-- results:{block} -->", f"<!-- /results:{block} -->"
    if start not in readme or end not in readme:
        raise SystemExit(f"make results: no {start} … {end} block to write")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{text}\n{end}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated experiment names")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", "1")))
    parser.add_argument("--reuse", action="store_true", help="report the last sweeps again")
    parser.add_argument(
        "--reeval", action="store_true", help="with --reuse: evaluate the checkpoints anew"
    )
    parser.add_argument("--out", default=str(ROOT / "outputs" / "results"))
    args = parser.parse_args()
    chosen = set(args.only.split(",")) if args.only else {e.name for e in EXPERIMENTS}
    unknown = chosen - {e.name for e in EXPERIMENTS}
    if unknown:
        raise SystemExit(f"make results: unknown experiment(s) {sorted(unknown)}")
    out_root = Path(args.out)
    results = {}
    for exp in EXPERIMENTS:
        if exp.name not in chosen:
            continue
        sweep = latest_sweep(exp, out_root) if args.reuse else run_sweep(exp, args.jobs, out_root)
        if args.reuse and args.reeval:
            reevaluate(sweep)
        results[exp.name] = report_sweep(exp, sweep)
    done = []
    for (file, block), names in BLOCKS.items():
        if not all(n in results for n in names):
            continue  # a block is rewritten only when all its experiments were reported now
        parts = []
        for name in names:
            exp = next(e for e in EXPERIMENTS if e.name == name)
            res = results[name]
            link = os.path.relpath(
                ROOT / "docs" / "results" / name / "report.md", (ROOT / file).parent
            )
            parts.append(
                f"**{exp.title}**, median [min, max] (n): [report]({link})\n\n"
                f"{table(exp, res)}\n\n<sub>{provenance(res)}</sub>\n"
            )
        path = ROOT / file
        path.write_text(write_block(path.read_text(), block, "\n".join(parts)))
        done.append(f"{file}:{block}")
    print("result blocks rewritten:", ", ".join(done) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
