"""One learned-gradient-descent training step (forward + backward + RMSProp through 10 unrolled
iterations), one learned primal-dual step, and drawing a batch of fresh phantoms, against the
physics alone in the same run: 10 plain descent iterations (forward only), so the ratio shows
what the networks cost. One profiled step splits the learned-GD step's time into the ray
transform (forward and adjoint, with their backward) and the convolutions.

    OMP_NUM_THREADS=1 python benchmarks/bench_ct_train.py [--size 64 128] [--batch 8 20]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Results, measure, measure_interleaved, print_item  # noqa: E402

from hybridsim.config import ConvNetConfig, CTConfig, CTSolverConfig, NoCorrectionConfig  # noqa: E402
from hybridsim.nn import ConvNet  # noqa: E402
from hybridsim.nn.accelerate import accelerate_model  # noqa: E402
from hybridsim.problems.tomography import Tomography  # noqa: E402


def profile_split(fn) -> dict[str, float]:
    """Fractions of one call's CPU time in the ray transform and in the convolutions."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    # the sparse products are the only users of _SparseApply (forward and its backward)
    radon = sum(e.cpu_time_total for e in events if e.key in ("_SparseApply",))
    radon += sum(e.cpu_time_total for e in events if e.key == "_SparseApplyBackward")
    conv = sum(
        e.self_cpu_time_total
        for e in events
        if "convolution" in e.key and e.key.startswith("aten::")
    )
    return {"ray_transform": radon / total, "convolutions": conv / total}


def bench(size: int, batch: int, repeat: int, results: Results) -> None:
    net = ConvNetConfig(activation="relu")
    none = NoCorrectionConfig()
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

    def descent() -> None:
        with torch.no_grad():
            plain(b.inputs["sinogram"])

    train_step = step_of(model)
    t_step = measure(train_step, repeat)
    t_gd = measure(descent, repeat)
    split = profile_split(train_step)
    note = (
        f"{100 * split['ray_transform']:.0f} % ray transform, "
        f"{100 * split['convolutions']:.0f} % convolutions (one profiled step)"
    )
    tag = f"{size}^2 batch {batch}"
    print_item(results.add(f"learned-GD train step {tag}", t_step, note=note))
    print_item(results.add(f"learned primal-dual train step {tag}", measure(step_of(lpd), repeat)))
    print_item(
        results.add(
            f"fresh phantom batch {tag}",
            measure(lambda: problem.batch(data, batch, -1, gen), repeat),
        )
    )
    print_item(results.add(f"plain GD forward, 10 iterations {tag}", t_gd))
    print(f"  learned-GD step / plain GD forward: {t_step['median'] / t_gd['median']:.0f}x")
    print_item(conv_layout(size, batch, repeat, model.correction, results))


def conv_layout(size: int, batch: int, repeat: int, net: torch.nn.Module, results: Results) -> dict:
    """The CT network alone, forward + backward on one iteration's input: channels_last (ours to
    try) against the default NCHW layout (the peer), the same weights, in the same run."""
    import copy

    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(batch, first.in_channels, size, size)
    # ConvNet computes in channels_last itself (its default); the peer is the same network
    # switched back to NCHW, both fed NCHW as the solver does
    nchw, cl = set_layout(copy.deepcopy(net), False), set_layout(copy.deepcopy(net), True)
    x_cl = x

    def fwd_bwd(n, inp):
        def run() -> None:
            n.zero_grad(set_to_none=True)
            n(inp).square().sum().backward()

        return run

    with torch.no_grad():
        diff = float((nchw(x) - cl(x_cl)).abs().max())
    both = measure_interleaved({"cl": fwd_bwd(cl, x_cl), "nchw": fwd_bwd(nchw, x)}, repeat)
    return results.add(
        f"CT network fwd+bwd {size}^2 batch {batch}, channels_last",
        both["cl"],
        both["nchw"],
        "the same network, NCHW",
        note=f"max |output difference| {diff:.1e}; ConvNet's layout (adopted)",
    )


def set_layout(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, ConvNet):
            m.channels_last = channels_last
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            m.net.to(memory_format=fmt)
    return model


def options(size: int, batch: int, repeat: int, results: Results, compile: bool) -> None:
    """The learned-GD training step of the defaults (Adam) with each speed option against the
    NCHW eager float32 path, the same initial weights, their steps alternating in one run."""
    import time

    net = ConvNetConfig(activation="relu")
    solver = CTSolverConfig(name="gd", n_iter=10)
    problem = Tomography(CTConfig(size=size, n_train=batch, n_ellipses=100))
    train = problem.generate("train", 1)
    data = train.tensors(torch.device("cpu"), torch.float32)
    b = problem.batch(data, batch, -1, torch.Generator().manual_seed(0))

    def build(channels_last: bool):
        torch.manual_seed(0)
        return set_layout(problem.build_model(solver, net, "update", train), channels_last)

    variants = {
        "NCHW": build(False),
        "channels_last": build(True),
        "amp=bf16": accelerate_model(build(False), "bf16"),
        "channels_last, amp=bf16": accelerate_model(build(True), "bf16"),
    }
    if compile:
        variants["compile=true"] = accelerate_model(build(False), compile=True)
    with torch.no_grad():
        ref = float(problem.loss(variants["NCHW"], b))
        rel = {k: abs(float(problem.loss(m, b)) - ref) / ref for k, m in variants.items()}
    opts = {k: torch.optim.Adam(m.parameters(), lr=2e-3) for k, m in variants.items()}

    def step_of(k):
        def train_step() -> None:
            loss = problem.loss(variants[k], b)
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()

        return train_step

    notes = {}
    if compile:
        t0 = time.perf_counter()
        step_of("compile=true")()
        notes["compile=true"] = f"compile time (first step) {time.perf_counter() - t0:.1f} s; "
    stats = measure_interleaved({k: step_of(k) for k in variants}, repeat)
    base = stats.pop("NCHW")
    for k, st in stats.items():
        print_item(
            results.add(
                f"learned-GD train step {size}^2 batch {batch}, {k} vs NCHW eager",
                st,
                base,
                "NCHW eager float32",
                note=notes.get(k, "") + f"|loss - NCHW loss| / loss {rel[k]:.1e} (untrained)",
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 20])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write the work items here")
    parser.add_argument("--options-size", type=int, nargs="*", default=[64, 128], help="A/B sizes")
    parser.add_argument("--options-batch", type=int, nargs="*", default=[8, 20])
    parser.add_argument("--options-repeat", type=int, default=5)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--only-options", action="store_true")
    args = parser.parse_args()
    if len(args.size) != len(args.batch):
        parser.error("--size and --batch need the same number of values")
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, float32, 10 iterations")
    results = Results("ct_train")
    for size, batch in zip(args.options_size, args.options_batch, strict=True):
        options(size, batch, args.options_repeat, results, args.compile)
    for size, batch in zip(args.size, args.batch, strict=True):
        if not args.only_options:
            bench(size, batch, args.repeat, results)
    results.write(args.json)


if __name__ == "__main__":
    main()
