"""One UDE training step (forward + backward, batch of 64 windows of 20 RK4 steps) against
torchdiffeq's rk4 on the same networks and step count, measured in the same run.

    python benchmarks/bench_lv_step.py            (needs: pip install -e ".[bench]")

Prints medians and the ratio torchdiffeq / hybridsim (> 1: hybridsim is faster). Threads are
pinned to one: on a shared 2-core machine oversubscription distorts timings by 10x or more.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

torch.set_num_threads(1)

from hybridsim.config import CorrectionConfig, LVConfig, ODESolverConfig  # noqa: E402
from hybridsim.problems.lotka_volterra import LotkaVolterra  # noqa: E402


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    try:
        import torchdiffeq
    except ImportError:
        print("torchdiffeq is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 1

    problem = LotkaVolterra(LVConfig())
    train = problem.generate("train", 1)
    corr = CorrectionConfig(name="mlp", kind="mlp", width=[32, 32])
    model = problem.build_model(ODESolverConfig(name="rk4"), corr, "rhs", train)
    data = train.tensors(torch.device("cpu"), torch.float32)
    batch = problem.batch(data, args.batch, args.steps, torch.Generator().manual_seed(0))
    u0, t, target = batch.inputs["u0"], batch.inputs["t"], batch.targets["u"]
    scale = batch.targets["scale"]

    def ours() -> None:
        model.zero_grad(set_to_none=True)
        loss = (((model(u0, t) - target) / scale) ** 2).mean()
        loss.backward()

    def peer() -> None:
        model.zero_grad(set_to_none=True)
        pred = torchdiffeq.odeint(model.rhs, u0, t, method="rk4")
        loss = (((pred - target) / scale) ** 2).mean()
        loss.backward()

    def peer_fused() -> None:  # torchdiffeq driving our fused right-hand side
        model.zero_grad(set_to_none=True)
        pred = torchdiffeq.odeint(model.fused_rhs(), u0, t, method="rk4")
        loss = (((pred - target) / scale) ** 2).mean()
        loss.backward()

    with torch.no_grad():  # same networks, same step count: the two must agree
        diff = float(
            (model(u0, t) - torchdiffeq.odeint(model.rhs, u0, t, method="rk4")).abs().max()
        )
    cases = (
        ("hybridsim rk4", ours),
        ("torchdiffeq rk4", peer),
        ("torchdiffeq rk4, our fused rhs", peer_fused),
    )
    # Two interleaved rounds, best median of each: drift in machine load affects all alike.
    rounds = [[median_ms(fn, args.repeats) for _, fn in cases] for _ in range(2)]
    best = [min(r[i] for r in rounds) for i in range(len(cases))]
    print(
        f"UDE training step: batch {args.batch} windows x {args.steps} RK4 steps, fwd+bwd, "
        f"1 thread, torch {torch.__version__}"
    )
    print(
        f"  max |difference| of the two trajectories: {diff:.2e} "
        "(torchdiffeq's rk4 is the 3/8 rule)"
    )
    for (name, _), ms in zip(cases, best, strict=True):
        print(f"  {name:<32}{ms:9.2f} ms   ratio to hybridsim {ms / best[0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
