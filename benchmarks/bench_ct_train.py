"""One learned-gradient-descent training step (forward + backward + RMSProp through 10 unrolled
iterations), one learned primal-dual step, and drawing a batch of fresh phantoms, against the
physics alone in the same run: 10 plain descent iterations (forward only), so the ratio shows
what the networks cost.

    OMP_NUM_THREADS=1 python benchmarks/bench_ct_train.py [--size 64] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from hybridsim.config import CorrectionConfig, CTConfig, CTSolverConfig  # noqa: E402
from hybridsim.problems.tomography import Tomography  # noqa: E402


def best_of(fn, repeat: int) -> float:
    fn()  # warm-up (builds the CSR copies, allocator)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(size: int, batch: int, repeat: int) -> None:
    net = CorrectionConfig(name="convnet", kind="convnet", activation="relu")
    none = CorrectionConfig(name="none", kind="none")
    solver = CTSolverConfig(name="gd", n_iter=10)
    problem = Tomography(CTConfig(size=size, n_train=batch, n_ellipses=100))
    train = problem.generate("train", 1)
    data = train.tensors(torch.device("cpu"), torch.float32)
    model = problem.build_model(solver, net, "update", train)
    lpd = problem.build_model(solver, net, "primal_dual", train)
    plain = problem.build_model(solver, none, "update", train)
    opts = {m: torch.optim.RMSprop(m.parameters(), lr=1e-3) for m in (model, lpd)}
    gen = torch.Generator().manual_seed(0)
    b = problem.batch(data, batch, -1, gen)

    def step_of(m):
        def train_step() -> None:
            loss = problem.loss(m, b)
            opts[m].zero_grad()
            loss.backward()
            opts[m].step()

        return train_step

    train_step = step_of(model)

    def descent() -> None:
        with torch.no_grad():
            plain(b.inputs["sinogram"])

    t_step = best_of(train_step, repeat)
    t_lpd = best_of(step_of(lpd), repeat)
    t_draw = best_of(lambda: problem.batch(data, batch, -1, gen), repeat)
    t_gd = best_of(descent, repeat)
    print(
        f"{size}², batch {batch:3d}: learned-GD train step {1e3 * t_step:8.1f} ms "
        f"({1e3 * t_step / batch:.1f} ms/image); learned primal-dual {1e3 * t_lpd:8.1f} ms; "
        f"fresh batch {1e3 * t_draw:6.1f} ms; plain GD forward {1e3 * t_gd:7.1f} ms; "
        f"ratio {t_step / t_gd:.0f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 20])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, float32, 10 iterations")
    for size, batch in zip(args.size, args.batch, strict=True):
        bench(size, batch, args.repeat)


if __name__ == "__main__":
    main()
