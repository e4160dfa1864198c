"""Classical baselines on Adler & Öktem's (2017) setting: FBP per filter/cut-off, TV descent.

128 x 128 modified Shepp-Logan, 30 angles, 5 % Gaussian noise, operator normalised to norm 1,
data simulated with the same operator (as their code does). PSNR with data range max - min of
the true image (= 1). Paper: FBP 19.75 dB, TV 29.83 dB.

    python benchmarks/ct_baselines.py
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from functools import partial

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from hybridsim.numerics.phantoms import shepp_logan  # noqa: E402
from hybridsim.numerics.radon import FILTERS, RayTransform, fbp  # noqa: E402
from hybridsim.numerics.reconstruction import (  # noqa: E402
    AcceleratedGradientDescent,
    LeastSquares,
    gaussian_noise,
    psnr,
    ssim,
)
from hybridsim.numerics.regularizers import TotalVariation  # noqa: E402
from hybridsim.numerics.rollout import rollout  # noqa: E402

SEEDS = (0, 1, 2)
CUTOFFS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    torch.set_num_threads(1)
    x = shepp_logan(128, dtype=torch.float64)
    op = RayTransform(128, angles=30, normalize=True)
    clean = op(x)
    data = [gaussian_noise(clean, 0.05, torch.Generator().manual_seed(s)) for s in SEEDS]
    mean_psnr = lambda recs: sum(float(psnr(r, x)) for r in recs) / len(recs)  # noqa: E731

    print(f"{op}; data range {float(x.max() - x.min()):g}; mean over noise seeds {SEEDS}")
    print("FBP:  filter        cutoff=1.0   best cutoff")
    for name in FILTERS:
        res = {c: mean_psnr([fbp(op, y, name, c) for y in data]) for c in CUTOFFS}
        best = max(res, key=res.get)
        print(f"      {name:12} {res[1.0]:8.2f} dB   {best:.1f}: {res[best]:.2f} dB")

    print("TV (Huber eps, FISTA from FBP-Hann, nonnegative):")
    for eps, lam, n_iter in itertools.product((1e-2, 1e-3), (2e-4, 3e-4, 4e-4), (300, 1000)):
        solver = AcceleratedGradientDescent(
            LeastSquares(op, op_norm=1.0), TotalVariation(eps), lam, nonnegative=True
        )
        t0 = time.perf_counter()
        recs = []
        for y in data:
            step = partial(solver.step, sinogram=y)
            recs.append(
                rollout(step, solver.init(fbp(op, y, "hann")), n_iter, save_every=n_iter)[-1][0]
            )
        secs = (time.perf_counter() - t0) / len(data)
        ssims = sum(float(ssim(r, x)) for r in recs) / len(recs)
        print(
            f"      eps={eps:g} lam={lam:g} iters={n_iter:5d}: {mean_psnr(recs):.2f} dB,"
            f" SSIM {ssims:.3f}, {secs:.1f} s/image"
        )


if __name__ == "__main__":
    main()
