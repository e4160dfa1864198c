"""Ray transform speed against scikit-image, per image, one thread.

Peer: ``skimage.transform.radon`` (forward) and ``iradon(filter_name=None)`` (back-projection),
on the same 128 x 128 images. Ours: ``RayTransform`` applied to a batch of 32 in float32.

    python benchmarks/bench_radon.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    from skimage.transform import iradon, radon
except ImportError:
    print("bench_radon: scikit-image is not installed (pip install scikit-image); skipping.")
    sys.exit(0)

from hybridsim.numerics.phantoms import random_phantoms  # noqa: E402
from hybridsim.numerics.radon import RayTransform  # noqa: E402

BATCH, N, REPEATS, PEER_IMAGES = 32, 128, 7, 4


def median_time(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up (caches, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def unfiltered_bp(sinogram: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return iradon(sinogram, theta, filter_name=None, circle=False, output_size=N)


def main() -> None:
    torch.set_num_threads(1)
    images = random_phantoms(BATCH, N, np.random.default_rng(0), dtype=torch.float32)
    rows = []
    for n_angles in (30, 180):
        t0 = time.perf_counter()
        op = RayTransform(N, angles=n_angles)
        build = time.perf_counter() - t0
        sino = op(images)
        ours_fwd = median_time(lambda op=op: op.A(images)) / BATCH
        ours_adj = median_time(lambda op=op, s=sino: op.A_adjoint(s)) / BATCH
        theta = np.rad2deg(op.angles)
        imgs = images[:PEER_IMAGES].double().numpy()
        sk_sino = [radon(im, theta, circle=False) for im in imgs]
        sk_fwd = median_time(
            lambda t=theta, ims=imgs: [radon(im, t, circle=False) for im in ims], 3
        )
        sk_adj = median_time(lambda t=theta, ss=sk_sino: [unfiltered_bp(s, t) for s in ss], 3)
        sk_fwd, sk_adj = sk_fwd / PEER_IMAGES, sk_adj / PEER_IMAGES
        rows.append(("forward", n_angles, ours_fwd, sk_fwd, build))
        rows.append(("adjoint", n_angles, ours_adj, sk_adj, build))

    print(f"ray transform, {N}x{N}, batch {BATCH} (float32), 1 thread; times per image")
    header = ("op", "angles", "ours [ms]", "skimage [ms]", "ratio", "build [s]")
    print("{:8} {:>6} {:>10} {:>13} {:>8} {:>10}".format(*header))
    for name, n_angles, ours, peer, build in rows:
        print(
            f"{name:8} {n_angles:6d} {ours * 1e3:10.3f} {peer * 1e3:13.2f} {peer / ours:7.0f}x"
            f" {build:10.2f}"
        )


if __name__ == "__main__":
    main()
