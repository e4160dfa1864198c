"""The coarse Burgers solver alone against the spectral reference: the tables of
docs/burgers-numerics.md.

At the defaults (``numerics.burgers.DEFAULTS``: [0, 2 pi), 32 cells against 1024 spectral points,
dt 0.05, k_max 5, amplitude 1) for each viscosity: the relative L2 error of the coarse rollout
against the cell-averaged reference after 1, 10, 25, 50 and 100 steps, median [min, max] over
every initial condition of ``--seeds`` seeds x ``--batch`` ICs (a deterministic numerics table;
no training). Also the reference's own error (against 2x finer in space at the same time step,
and against half the time step on the same grid) and the other coarse schemes at 100 steps.

    OMP_NUM_THREADS=1 python benchmarks/burgers_coarse_error.py [--seeds 0 1 2] [--batch 8]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from hybridsim.numerics.burgers import (  # noqa: E402
    DEFAULTS,
    random_initial_conditions,
    reference_substeps,
    reference_trajectory,
    relative_l2,
)
from hybridsim.numerics.burgers_fv import CoarseBurgers  # noqa: E402

STEPS = (1, 10, 25, 50, 100)
SCHEMES = (
    ("first_order", "rusanov"),
    ("first_order", "godunov"),
    ("minmod", "rusanov"),
    ("van_leer", "rusanov"),
    ("van_leer", "godunov"),
)


def cell(values: torch.Tensor, fmt: str = ".3f") -> str:
    v = values.flatten()
    return f"{v.median():{fmt}} [{v.min():{fmt}}, {v.max():{fmt}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    d = DEFAULTS
    f64 = torch.float64
    u0 = torch.cat(
        [
            random_initial_conditions(
                args.batch,
                d.n_fine,
                torch.Generator().manual_seed(s),
                k_max=d.k_max,
                amplitude=d.amplitude,
                length=d.length,
                dtype=f64,
            )
            for s in args.seeds
        ]
    )
    n_ic = u0.shape[0]
    nus = sorted({*d.nu_train, *d.nu_test})
    sub = reference_substeps(d.amplitude, d.dt, d.n_fine, d.length)
    common = {"n_coarse": d.n_coarse, "u_max": d.amplitude, "length": d.length}
    errors, accuracy = {}, []
    for nu in nus:
        ref = reference_trajectory(u0, nu, d.dt, d.n_steps, d.n_fine, **common)
        finer_x = reference_trajectory(
            u0, nu, d.dt, d.n_steps, 2 * d.n_fine, substeps=sub, **common
        )
        finer_t = reference_trajectory(
            u0, nu, d.dt, d.n_steps, d.n_fine, substeps=2 * sub, **common
        )
        accuracy.append(
            (
                nu,
                (ref - finer_x).abs().amax((1, 2)),
                (ref - finer_t).abs().amax((1, 2)),
            )
        )
        for limiter, flux in SCHEMES:
            solver = CoarseBurgers(d.n_coarse, d.length, limiter, flux)
            errors[nu, limiter, flux] = relative_l2(
                solver.trajectory(ref[:, 0], nu, d.dt, d.n_steps), ref
            )

    seeds = ",".join(map(str, args.seeds))
    print(f"n = {n_ic} initial conditions (seeds {seeds} x {args.batch}); median [min, max]\n")
    print("Reference accuracy (max |difference| over space and the 100 frames):\n")
    print(f"| nu | space: vs {2 * d.n_fine} points | time: vs {2 * sub} substeps (dt_fine / 2) |")
    print("|---|---|---|")
    for nu, ex, et in accuracy:
        print(f"| {nu:g} | {cell(ex, '.1e')} | {cell(et, '.1e')} |")
    scheme = (d.limiter, d.flux)
    print(f"\nCoarse {scheme[0]}/{scheme[1]} (the default): relative L2 error vs steps\n")
    print("| nu | " + " | ".join(f"step {s}" for s in STEPS) + " |")
    print("|---|" + "---|" * len(STEPS))
    for nu in nus:
        e = errors[(nu, *scheme)]
        tag = " (train)" if nu in d.nu_train else " (test)"
        print(f"| {nu:g}{tag} | " + " | ".join(cell(e[:, s]) for s in STEPS) + " |")
    print(f"\nAll coarse schemes: relative L2 error at step {d.n_steps}\n")
    print("| nu | " + " | ".join(f"{lim}/{fl}" for lim, fl in SCHEMES) + " |")
    print("|---|" + "---|" * len(SCHEMES))
    for nu in nus:
        row = [cell(errors[nu, lim, fl][:, d.n_steps]) for lim, fl in SCHEMES]
        print(f"| {nu:g} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
