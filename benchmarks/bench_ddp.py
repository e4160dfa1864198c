"""DDP under torchrun (2 gloo processes) against one process: the same tiny CT run, global
batch 4, 20 steps, seeds 1-3, float32 and float64. Prints the largest relative difference of
the training loss per run (median [min, max] over the seeds) and the CPU time of each.

python benchmarks/bench_ddp.py [--out DIR] [--seeds 1 2 3] [--steps 20]   (about 3 minutes)
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from hybridsim.problems import registered

CT = [
    "problem=ct",
    *registered()["ct"].tiny,  # the problem's own tiny settings, as the tests run
    "recipe.batch_size=4",
    "recipe.val_every=5",
    "recipe.log_every=1",
    "recipe.baselines=false",
    "progress=none",
    "evaluate=false",
]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def run(cmd: list[str]) -> float:
    """CPU seconds of ``cmd`` and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def spread(values: list[float], fmt: str) -> str:
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:{fmt}} [{lo:{fmt}}, {hi:{fmt}}] (n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_ddp", help="where the runs go")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    out = Path(args.out).resolve()
    hybridsim = [sys.executable, "-m", "hybridsim", "train"]
    cpu: dict[str, list[float]] = {"ddp": [], "one": []}
    for dtype in ("float32", "float64"):
        dev = []
        for seed in args.seeds:
            run_args = [*CT, f"recipe.steps={args.steps}", f"dtype={dtype}", f"seed={seed}"]
            ddp, one = out / f"ddp_{dtype}_{seed}", out / f"one_{dtype}_{seed}"
            cpu["ddp"].append(
                run([*TORCHRUN, "-m", "hybridsim", "train", *run_args, f"hydra.run.dir={ddp}"])
            )
            cpu["one"].append(run([*hybridsim, *run_args, f"hydra.run.dir={one}"]))
            a, b = losses(ddp), losses(one)
            assert len(a) == len(b) == args.steps, (len(a), len(b))
            dev.append(max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True)))
        print(
            f"{dtype}: largest relative loss difference, DDP vs one process: {spread(dev, '.2g')}"
        )
    for k, name in (("ddp", "torchrun, 2 processes"), ("one", "one process")):
        print(f"CPU s per run, {name}: {spread(cpu[k], '.1f')}")
    ratio = statistics.median(cpu["ddp"]) / statistics.median(cpu["one"])
    print(f"ratio of median CPU time (2 processes / one): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
