"""One UDE training step (forward + backward, batch of 64 windows of 20 RK4 steps) against
torchdiffeq's and torchode's rk4 on the same networks and step count, in the same run.

    python benchmarks/bench_lv_step.py [--json PATH]   (needs: pip install -e ".[bench]")

Prints medians [min, max] and the ratio peer / hybridsim (> 1: hybridsim is faster). Threads
are pinned to one: on a shared 2-core machine oversubscription distorts timings by 10x or more.
torchode has no classical RK4; it runs the same Butcher tableau through its ``ExplicitRungeKutta``
with a ``FixedStepController`` (dt0 = the output spacing, so every output time is a step end).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Results, measure_interleaved, print_item  # noqa: E402

from hybridsim.config import LVConfig, MLPConfig, ODESolverConfig  # noqa: E402
from hybridsim.nn.accelerate import accelerate_model  # noqa: E402
from hybridsim.problems.lotka_volterra import LotkaVolterra  # noqa: E402

BLOCK = 5  # timed steps per turn


def torchode_rk4(f, u0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``(n_t, batch, 2)`` by torchode with the classical RK4 tableau and fixed steps."""
    import torchode as to
    from torchode.interpolation import ThirdOrderPolynomialInterpolation
    from torchode.single_step_methods.runge_kutta import ButcherTableau, ExplicitRungeKutta

    class RK4(ExplicitRungeKutta):
        TABLEAU = ButcherTableau.from_lists(
            c=[0.0, 0.5, 0.5, 1.0],
            a=[[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
            b=[1 / 6, 1 / 3, 1 / 3, 1 / 6],
            b_low_order=[1 / 6, 1 / 3, 1 / 3, 1 / 6],  # unused: fixed steps
        )

        def __init__(self, term=None):
            super().__init__(term, RK4.TABLEAU)

        def convergence_order(self):
            return 4

        def build_interpolation(self, data):
            return ThirdOrderPolynomialInterpolation.from_k(
                data.t0, data.dt, data.y0, data.y1, data.k
            )

    term = to.ODETerm(f)
    solver = to.AutoDiffAdjoint(RK4(term), to.FixedStepController())
    batch = u0.shape[0]
    t_eval = t.expand(batch, -1)
    dt0 = (t[1] - t[0]).expand(batch)
    sol = solver.solve(to.InitialValueProblem(y0=u0, t_eval=t_eval), dt0=dt0)
    return sol.ys.transpose(0, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per case")
    parser.add_argument("--json", help="write the work items here")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-amp", dest="amp", action="store_false")
    args = parser.parse_args()
    try:
        import torchdiffeq
        import torchode  # noqa: F401
    except ImportError as exc:
        print(f"bench_lv_step: {exc.name} is not installed: pip install -e '.[bench]'")
        return 1

    problem = LotkaVolterra(LVConfig())
    train = problem.generate("train", 1)
    corr = MLPConfig(width=[32, 32])

    def build():
        torch.manual_seed(0)
        return problem.build_model(ODESolverConfig(name="rk4"), corr, "rhs", train)

    model = build()
    st, net = model.stepper, model.correction
    data = train.tensors(torch.device("cpu"), torch.float32)
    batch = problem.batch(data, args.batch, args.steps, torch.Generator().manual_seed(0))
    u0, t, target = batch.inputs["u0"], batch.inputs["t"], batch.targets["u"]
    scale = batch.targets["scale"]

    def unfused(t, u):  # the right-hand side as written: physics + network term, every call
        return st.known(u) + st.term(net, u)

    fused = lambda: model.coupling.rhs(st, net)  # noqa: E731
    compiled = accelerate_model(build(), compile=True) if args.compile else None
    models = {"hybridsim rk4": model}
    if compiled is not None:
        models["hybridsim rk4, compile=true"] = compiled
    if args.amp:  # autocast lowers float32 operations only: a float32 model
        models["hybridsim rk4, amp=bf16"] = accelerate_model(build(), "bf16")

    def loss_step(integrate, m=model) -> None:
        m.zero_grad(set_to_none=True)
        loss = (((integrate() - target) / scale) ** 2).mean()
        loss.backward()

    cases = {
        "hybridsim rk4": lambda: model(u0, t),
        "torchdiffeq rk4": lambda: torchdiffeq.odeint(unfused, u0, t, method="rk4"),
        "torchdiffeq rk4, our fused rhs": lambda: torchdiffeq.odeint(fused(), u0, t, method="rk4"),
        "torchode rk4 tableau": lambda: torchode_rk4(unfused, u0, t),
    }
    notes: dict[str, str] = {}
    if compiled is not None:
        t0 = time.perf_counter()
        loss_step(lambda: compiled(u0, t), compiled)  # the first call compiles fwd and bwd
        notes["hybridsim rk4, compile=true"] = (
            f"compile time (first fwd+bwd) {time.perf_counter() - t0:.1f} s"
        )
    for k, m in models.items():
        if k != "hybridsim rk4":
            cases[k] = lambda m=m: m(u0, t)
    with torch.no_grad():  # same networks, same step count: the solvers must agree
        ref = model(u0, t)
        diffs = {k: float((fn() - ref).abs().max()) for k, fn in cases.items()}

    # The cases take turns (drift in machine load affects all alike), each turn a block of
    # BLOCK steps back to back, as training runs them (common.measure_interleaved).
    owner = {k: models.get(k, model) for k in cases}
    stats = measure_interleaved(
        {k: (lambda fn=fn, m=owner[k]: loss_step(fn, m)) for k, fn in cases.items()},
        max(1, args.repeats // BLOCK),
        warmup=3,
        block=BLOCK,
    )
    print(
        f"UDE training step: batch {args.batch} windows x {args.steps} RK4 steps, fwd+bwd, "
        f"1 thread, torch {torch.__version__}"
    )
    print(
        "  max |difference| to hybridsim's trajectory: "
        + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items() if k != "hybridsim rk4")
        + " (torchdiffeq's rk4 is the 3/8 rule)"
    )
    results = Results("lv_step")
    ours = stats.pop("hybridsim rk4")
    for peer_name, peer in stats.items():
        if peer_name in models:  # an option of hybridsim against its default path
            name = f"UDE step b{args.batch}x{args.steps} {peer_name.split(', ')[1]} vs eager"
            item = results.add(
                name, peer, ours, "hybridsim rk4 eager", note=notes.get(peer_name, "")
            )
            item["note"] = (item["note"] + f"; max |diff| {diffs[peer_name]:.1e}").lstrip("; ")
        else:
            item = results.add(
                f"UDE step b{args.batch}x{args.steps} vs {peer_name}", ours, peer, peer_name
            )
        print_item(item)
    results.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
