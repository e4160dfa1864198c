"""Ray transform speed against scikit-image, per image, one thread.

Peer: ``skimage.transform.radon`` (forward) and ``iradon(filter_name=None)`` (back-projection),
on the same 128 x 128 images. Ours: ``RayTransform`` applied to a batch of 32 in float32.

    python benchmarks/bench_radon.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Results, measure_interleaved, print_item, scaled  # noqa: E402

from hybridsim.numerics.phantoms import random_phantoms  # noqa: E402
from hybridsim.numerics.radon import RayTransform  # noqa: E402

BATCH, N, REPEATS, PEER_IMAGES = 32, 128, 7, 4
BLOCK = 5  # timed calls per turn


def unfiltered_bp(sinogram: np.ndarray, theta: np.ndarray) -> np.ndarray:
    from skimage.transform import iradon

    return iradon(sinogram, theta, filter_name=None, circle=False, output_size=N)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--json", help="write the work items here")
    args = parser.parse_args()
    try:
        from skimage.transform import radon
    except ImportError:
        print("bench_radon: scikit-image is not installed (pip install scikit-image); skipping.")
        return
    torch.set_num_threads(1)
    images = random_phantoms(BATCH, N, np.random.default_rng(0), dtype=torch.float32)
    results = Results("radon")
    print(f"ray transform, {N}x{N}, batch {BATCH} (float32), 1 thread; times per image")
    for n_angles in (30, 180):
        t0 = time.perf_counter()
        op = RayTransform(N, angles=n_angles)
        build = time.perf_counter() - t0
        sino = op(images)
        theta = np.rad2deg(op.angles)
        imgs = images[:PEER_IMAGES].double().numpy()
        sk_sino = [radon(im, theta, circle=False) for im in imgs]
        # ours and the peer take turns (both see the same machine load), each turn a block of
        # BLOCK calls back to back: one batch call of ours is short beside the peer's images
        # and, alone between them, would be timed with cold caches (common.measure_interleaved)
        fwd = measure_interleaved(
            {
                "ours": lambda op=op: op.A(images),
                "peer": lambda t=theta, ims=imgs: [radon(im, t, circle=False) for im in ims],
            },
            args.repeats,
            block=BLOCK,
        )
        adj = measure_interleaved(
            {
                "ours": lambda op=op, s=sino: op.A_adjoint(s),
                "peer": lambda t=theta, ss=sk_sino: [unfiltered_bp(s, t) for s in ss],
            },
            args.repeats,
            block=BLOCK,
        )
        ours_fwd, sk_fwd, ours_adj, sk_adj = fwd["ours"], fwd["peer"], adj["ours"], adj["peer"]
        note = f"per image; turns of {BLOCK} calls; matrix build {build:.2f} s"
        for what, ours, peer, name in (
            ("forward", ours_fwd, sk_fwd, "skimage radon"),
            ("adjoint", ours_adj, sk_adj, "skimage iradon, no filter"),
        ):
            item = results.add(
                f"ray transform {what} {N}^2 {n_angles} angles",
                scaled(ours, BATCH),
                scaled(peer, PEER_IMAGES),
                name,
                note=note,
            )
            print_item(item)
    results.write(args.json)


if __name__ == "__main__":
    main()
