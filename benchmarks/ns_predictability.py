"""Predictability of a periodic NS scenario's reference: how fast do two reference runs that
differ by a tiny perturbation drift apart, against the coarse solver alone (SRC)?

From the test split's start (the reference after ``warmup`` steps, the scenario's test Reynolds
numbers and seed), the fine reference runs ``steps`` steps twice: as is, and with a random
large-scale perturbation (Gaussian noise low-pass filtered to wavenumbers ``|k| <= 8``, scaled to
``eps`` times the rms velocity) added once (then projected): an error the coarse grid resolves,
unlike white noise, which viscosity removes within a few steps. Both are restricted to the coarse
grid (``grid.downsample``); SRC starts from the restricted unperturbed state. Reported per
perturbation seed (median [min, max] over ``--seeds``), at steps 100 and ``steps``: the relative
L2 velocity difference and the vorticity correlation against the unperturbed reference, and the
kinetic energy relative to it. If the perturbed reference stays close where SRC is already far,
the horizon is not past the flow's predictability time: the error is the model's, not chaos.

    OMP_NUM_THREADS=1 python benchmarks/ns_predictability.py --scenario kolmogorov \
        --out docs/results/ns-kolmogorov/predictability.md
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from hybridsim.config import NS_SCENARIO_DEFAULTS, FluidSolverConfig, NoCorrectionConfig, NSConfig
from hybridsim.numerics.fluid import vorticity, vorticity_correlation
from hybridsim.numerics.grid import downsample
from hybridsim.problems.base import SplitData
from hybridsim.problems.navier_stokes import NavierStokes

KMAX = 8  # the perturbation's wavenumbers: |k| <= 8 (resolved on the coarse 32^2 grid)


def _large_scale(x: torch.Tensor, kmax: int) -> torch.Tensor:
    """``x (batch, n, n)`` (periodic) low-pass filtered to integer wavenumbers ``|k| <= kmax``."""
    n = x.shape[-1]
    k = torch.fft.fftfreq(n, 1.0 / n)
    keep = (k[:, None] ** 2 + k[None, :] ** 2) <= kmax**2
    return torch.fft.ifft2(torch.fft.fft2(x) * keep).real


def measure(scenario: str, steps: int, eps: float, seed: int) -> tuple[dict, list[float]]:
    fields = {f.name for f in dataclasses.fields(NSConfig)}
    row = NS_SCENARIO_DEFAULTS[scenario]
    cfg = NSConfig(scenario=scenario, **{k: v for k, v in row.items() if k in fields})
    problem = NavierStokes(cfg)
    reynolds = list(cfg.reynolds_test)
    fine = problem._scenario(
        [n * cfg.factor for n in cfg.resolution],
        reynolds,
        cfg.seed_test,
        cfg.reference_advection,
        torch.float32,
    )
    coarse, dim = problem.coarse_grid, problem.dim
    train_like = SplitData(arrays={"reynolds": np.asarray(cfg.reynolds_train)}, coords={}, attrs={})
    src = problem.build_model(FluidSolverConfig(), NoCorrectionConfig(), "after_step", train_like)
    re = torch.tensor(reynolds, dtype=torch.float32)
    src_solver, re_channel = src.solver(re), src.re_channel(re)
    open_ = coarse.consts(torch.float32, "cpu")["open"]

    def sq(v):
        return sum((x**2 * m).flatten(1).sum(1) for x, m in zip(v, open_, strict=True))

    gen = torch.Generator().manual_seed(seed)
    checks = sorted({min(100, steps), steps})
    out: dict[str, dict] = {}
    with torch.no_grad():
        state = fine.state
        for _ in range(cfg.warmup):
            state = fine.solver.step(state, fine.dt)
        vel = tuple(state[:dim])
        rms = torch.sqrt(sum(v.pow(2).mean() for v in vel) / dim)
        noise = tuple(_large_scale(torch.randn(v.shape, generator=gen), KMAX) for v in vel)
        n_rms = torch.sqrt(sum(n.pow(2).mean() for n in noise) / dim)
        noisy = tuple(v + eps * rms / n_rms * n for v, n in zip(vel, noise, strict=True))
        noisy, p = fine.solver.project(noisy, state[dim], fine.dt)
        perturbed = (*noisy, p)
        coarse_src = downsample(fine.grid, coarse, state)
        for k in range(1, steps + 1):
            state = fine.solver.step(state, fine.dt)
            perturbed = fine.solver.step(perturbed, fine.dt)
            coarse_src = src.step(src_solver, coarse_src, re_channel)
            if k not in checks:
                continue
            ref = downsample(fine.grid, coarse, state)[:dim]
            models = {"perturbed reference": downsample(fine.grid, coarse, perturbed)[:dim]}
            models["SRC"] = tuple(coarse_src[:dim])
            w_ref = vorticity(coarse, ref)
            for name, v in models.items():
                diff = tuple(a - b for a, b in zip(v, ref, strict=True))
                rec = out.setdefault(name, {})
                rec[("rel_l2", k)] = (sq(diff) / sq(ref)).sqrt().numpy()
                rec[("vort_corr", k)] = vorticity_correlation(vorticity(coarse, v), w_ref).numpy()
                rec[("energy_ratio", k)] = (sq(v) / sq(ref)).numpy()
    return out, reynolds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="kolmogorov", choices=["kolmogorov"])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--eps", type=float, default=1e-2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    runs = [measure(args.scenario, args.steps, args.eps, s) for s in range(1, args.seeds + 1)]
    reynolds = runs[0][1]
    lines = [
        f"# Predictability of `problem.scenario={args.scenario}` (test split, its defaults)",
        "",
        f"`python benchmarks/ns_predictability.py --scenario {args.scenario} --steps "
        f"{args.steps} --eps {args.eps:g} --seeds {args.seeds}`: the fine reference against "
        f"itself with a large-scale (|k| <= {KMAX}) perturbation of {args.eps:g} times the rms "
        "velocity at the test start, and SRC, "
        f"restricted to the coarse grid. Cells: median [min, max] over the {args.seeds} "
        "perturbation seeds (SRC is deterministic), per test Reynolds number.",
        "",
        "| model | Re | quantity | "
        + " | ".join(f"step {k}" for k in sorted({100, args.steps}))
        + " |",
        "|---|---|---|" + "---|" * len(sorted({100, args.steps})),
    ]
    for name in runs[0][0]:
        for i, r in enumerate(reynolds):
            for q in ("rel_l2", "vort_corr", "energy_ratio"):
                cells = []
                for k in sorted({min(100, args.steps), args.steps}):
                    vals = np.array([run[0][name][(q, k)][i] for run in runs])
                    cells.append(
                        f"{np.median(vals):.3g} [{vals.min():.3g}, {vals.max():.3g}] ({len(vals)})"
                    )
                lines.append(f"| {name} | {r:g} | {q} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
