"""Benchmark of the Navier–Stokes numerics against PhiFlow 3.4 (torch backend), same run.

Measures (torch pinned to one thread, medians [min, max] over repeats):
  1. one step of the coarse 2D wake at 64x32 and 128x64 (float32), against PhiFlow's
     ``jit_compile``d step;
  2. one SOL-4 and one SOL-16 training iteration (batch 3): n unrolled steps, a ResNet correction
     after each, L2 loss, backward, Adam step; against PhiFlow eager and PhiFlow with its physics
     step under ``jit_compile`` (torch backend), the same torch ResNet in all three;
  3. the 3D wake on 64x32x32 cells (65,536), plain and with a 3D ResNet after every step;
  4. peak memory of SOL-32 (gradient checkpointing every 4 steps) vs SOL-4.
The peer is PhiFlow 3.4 with ``Solve('CG', 1e-3, 1e-3)`` (Um et al., 2020, used PhiFlow), measured
in the same run; no figure is quoted. Without PhiFlow only hybridsim's times are recorded.

Run: ``python benchmarks/bench_fluid.py [--no-phiflow] [--repeats N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Results, measure, measure_interleaved, print_item  # noqa: E402

from hybridsim.nn.resnet import ResNet  # noqa: E402
from hybridsim.numerics.grid import stack_staggered, unstack_staggered  # noqa: E402
from hybridsim.numerics.rollout import GradientMode, rollout  # noqa: E402
from hybridsim.numerics.scenarios import wake, wake3d  # noqa: E402

REYNOLDS = [97.7, 390.6, 1562.5]
STEP_BLOCK = 10  # timed wake steps per turn
PARTS = ("step", "sol", "memory", "3d")


def make_resnet(kernel: int = 3, dim: int = 2) -> nn.Module:
    """The project's correction, as PhiFlow's ``res_net(dim + 1, dim, [32, 32, 32])``: ~47k
    parameters with 3x3 kernels in 2D (the pbdl book's network). Input (velocity, Re)."""
    return ResNet(dim + 1, dim, (32, 32, 32), kernel, dim=dim)


# ---- hybridsim ------------------------------------------------------------------------------
def ours_step(resolution):
    """One no-grad wake step as a function (the flow developed past its start-up first)."""
    sc = wake(resolution, 200.0, cfl_warn=None)
    state = [sc.state]
    for _ in range(20):  # let the flow develop past the start-up transient
        state[0] = sc.solver.step(state[0], sc.dt)

    def run():
        with torch.no_grad():
            state[0] = sc.solver.step(state[0], sc.dt)

    return run


def _sol_setup(kernel: int, network: bool = True):
    torch.manual_seed(0)
    sc = wake((64, 32), REYNOLDS, cfl_warn=None)
    net = make_resnet(kernel)
    scale = nn.Parameter(torch.ones(()))
    opt = torch.optim.Adam([*net.parameters(), scale], lr=1e-3)
    grid, solver = sc.grid, sc.solver
    re = torch.tensor(REYNOLDS).view(-1, 1, 1, 1) / 1000.0
    state = sc.state
    with torch.no_grad():
        for _ in range(10):
            state = solver.step(state, sc.dt)

    def corrected_step(s):
        s = solver.step(s, sc.dt)
        if not network:  # solver-only cost: a learnable scalar keeps a backward pass to run
            return (s[0] * scale, *s[1:])
        packed = stack_staggered(grid, s[:2])
        x = torch.cat([packed, re.expand(-1, 1, *packed.shape[2:])], dim=1)
        du = unstack_staggered(grid, net(x))
        return (*(u + d for u, d in zip(s[:2], du, strict=True)), s[2])

    return sc, net, opt, state, corrected_step


def ours_sol(
    n_unroll: int,
    repeats: int,
    kernel: int,
    gradient: GradientMode | None = None,
    network: bool = True,
):
    sc, net, opt, state, corrected_step = _sol_setup(kernel, network)
    with torch.no_grad():
        targets = rollout(partial(sc.solver.step, dt=sc.dt), state, n_unroll)
        targets = [tuple(t + 0.01 * torch.randn_like(t) for t in s[:2]) for s in targets]

    def run():
        opt.zero_grad()
        states = rollout(corrected_step, state, n_unroll, gradient=gradient)
        loss = (
            sum(
                sum(((a - b) ** 2).mean() for a, b in zip(s[:2], t, strict=True))
                for s, t in zip(states, targets, strict=True)
            )
            / n_unroll
        )
        loss.backward()
        opt.step()

    n_params = sum(p.numel() for p in net.parameters())
    return run, n_params


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_child(n_unroll: int, every: int, kernel: int) -> None:
    """In a fresh process: peak RSS growth over one SOL-n iteration (printed in bytes)."""
    gradient = GradientMode("checkpoint", every) if every else None
    warm, _ = ours_sol(1, 1, kernel)
    warm()  # one-time allocations (kernels, workspaces) happen here, with a small peak
    run, _ = ours_sol(n_unroll, 1, kernel, gradient)
    del warm
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back so RSS is a fair baseline
    before = _rss_bytes()
    run()
    # VmHWM belongs to this address space; ru_maxrss would inherit the parent's across exec
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    print(peak - before)


def peak_memory(n_unroll: int, every: int, kernel: int) -> int:
    """Peak resident-memory growth of one training iteration, measured in a child process
    (the profiler's CPU memory events do not record frees reliably on this torch build)."""
    cmd = [sys.executable, __file__, "--mem-child", str(n_unroll), str(every), str(kernel)]
    # large blocks via mmap and no heap hoarding, so that RSS follows the live tensor bytes
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def ours_3d(n_steps: int, hybrid: bool = False) -> float:
    """Seconds per step of the 3D wake; ``hybrid``: a 3D ResNet correction after each step."""
    sc = wake3d((64, 32, 32), 200.0, cfl_warn=None)
    net = make_resnet(3, dim=3) if hybrid else None
    state = sc.state
    t = time.perf_counter()
    with torch.no_grad():
        for _ in range(n_steps):
            state = sc.solver.step(state, sc.dt)
            if net is not None:
                velocity = state[:-1]
                packed = stack_staggered(sc.grid, velocity)
                x = torch.cat((packed, torch.zeros_like(packed[:, :1])), dim=1)  # Re channel
                du = unstack_staggered(sc.grid, net(x))
                state = (*(a + b for a, b in zip(velocity, du, strict=True)), state[-1])
    return (time.perf_counter() - t) / n_steps


# ---- PhiFlow peer ---------------------------------------------------------------------------
def phiflow_step(resolution):
    from phi.torch.flow import (
        ZERO_GRADIENT,
        Box,
        Obstacle,
        Solve,
        Sphere,
        StaggeredGrid,
        advect,
        diffuse,
        fluid,
        jit_compile,
        vec,
    )

    nx, ny = resolution
    boundary = {"x-": vec(x=1, y=0), "x+": ZERO_GRADIENT, "y-": 0, "y+": 0}
    v = StaggeredGrid(vec(x=1, y=0), boundary, x=nx, y=ny, bounds=Box(x=200, y=100))
    obstacle = Obstacle(Sphere(x=50, y=50, radius=10))

    @jit_compile
    def step(v, p):
        v = diffuse.explicit(v, 0.1, 1.0)
        v = advect.semi_lagrangian(v, v, 1.0)
        return fluid.make_incompressible(v, obstacle, Solve("CG", 1e-3, 1e-3, x0=p))

    v, p = fluid.make_incompressible(v, obstacle, Solve("CG", 1e-3, 1e-3))
    state = [v, p]
    for _ in range(20):
        state = list(step(*state))

    def run():
        state[:] = step(*state)

    return run


def phiflow_sol(n_unroll: int, kernel: int, jit: bool) -> tuple:
    """PhiFlow SOL-n iteration (torch backend; its CG has an implicit gradient too), the physics
    step eager or under ``jit_compile``; returns (the iteration, seconds of its first call, which
    includes tracing under JIT, the network's gradient after that call: eager and JIT must
    agree, or the JIT path would not be training through the physics)."""
    from phi.torch.flow import (
        ZERO_GRADIENT,
        Box,
        Obstacle,
        Solve,
        Sphere,
        StaggeredGrid,
        advect,
        batch,
        diffuse,
        dual,
        fluid,
        jit_compile,
        math,
        spatial,
        vec,
    )

    boundary = {"x-": vec(x=1, y=0), "x+": ZERO_GRADIENT, "y-": 0, "y+": 0}
    obstacle = Obstacle(Sphere(x=50, y=50, radius=10))
    nus = math.tensor([20 / r for r in REYNOLDS], batch("b"))
    v = StaggeredGrid(vec(x=1, y=0), boundary, x=64, y=32, bounds=Box(x=200, y=100))
    v, p = fluid.make_incompressible(v * math.ones(batch(b=3)), obstacle, Solve("CG", 1e-3, 1e-3))

    def eager_step(v, p):
        v = diffuse.explicit(v, nus, 1.0)
        v = advect.semi_lagrangian(v, v, 1.0)
        return fluid.make_incompressible(v, obstacle, Solve("CG", 1e-3, 1e-3, x0=p))

    step = jit_compile(eager_step) if jit else eager_step
    torch.manual_seed(0)
    net = make_resnet(kernel)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    re = torch.tensor(REYNOLDS).view(-1, 1, 1, 1) / 1000.0

    def native(v):
        return v.staggered_tensor().native("b,vector,y,x")

    def correct(v):
        st = native(v)
        d = net(torch.cat([st, re.expand(-1, 1, *st.shape[2:])], 1))
        parts = {}
        for i, c in enumerate("xy"):
            ny, nx = v.values[{"~vector": c}].native("b,y,x").shape[1:]
            parts[c] = math.wrap(d[:, i, :ny, :nx], batch("b"), spatial("y,x"))
        return v.with_values(v.values + math.stack(parts, dual(vector="x,y")))

    with torch.no_grad():
        for _ in range(10):
            v, p = eager_step(v, p)
        targets, vt, pt = [], v, p
        for _ in range(n_unroll):
            vt, pt = eager_step(vt, pt)
            targets.append(native(vt))

    def run():
        opt.zero_grad()
        vv, pp, loss = v, p, 0.0
        for t in targets:
            vv, pp = step(vv, pp)
            vv = correct(vv)
            loss = loss + ((native(vv) - t) ** 2).mean()
        (loss / n_unroll).backward()
        opt.step()

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    grad = torch.cat([q.grad.flatten() for q in net.parameters()])
    return run, first, grad


def phiflow_3d_buildable() -> str:
    try:
        from phi.torch.flow import (
            ZERO_GRADIENT,
            Box,
            Obstacle,
            Solve,
            Sphere,
            StaggeredGrid,
            fluid,
            vec,
        )

        bc = {"x-": vec(x=1, y=0, z=0), "x+": ZERO_GRADIENT, "y": 0, "z": 0}
        v = StaggeredGrid(vec(x=1, y=0, z=0), bc, x=64, y=32, z=32, bounds=Box(x=200, y=100, z=100))
        obs = Obstacle(Sphere(x=50, y=50, z=50, radius=10))
        t = time.perf_counter()
        fluid.make_incompressible(v, obs, Solve("CG", 1e-3, 1e-3))
        return f"one projection took {time.perf_counter() - t:.2f} s"
    except Exception as exc:  # the peer's limitation is the measurement here
        return f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"


def _peer_or_failure(fn):
    """``(result, None)`` or ``(None, "ExcType: first line")``: a peer that cannot run this
    work item is recorded as such, never replaced by a quoted figure."""
    try:
        return fn(), None
    except Exception as exc:  # the peer's limitation is the measurement here
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-phiflow", action="store_true")
    parser.add_argument("--kernel", type=int, default=3, help="ResNet kernel size (3: ~47k)")
    parser.add_argument("--json", help="write the work items here")
    parser.add_argument("--mem-child", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="run these parts only (default: all)",
    )
    args = parser.parse_args()
    if args.mem_child:
        peak_memory_child(*args.mem_child)
        return
    phi = not args.no_phiflow
    if phi:
        try:
            import phi.torch.flow  # noqa: F401
        except ImportError:
            phi = False
            print("bench_fluid: PhiFlow is not installed (pip install -e '.[bench]'): no peer")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32")
    results = Results("fluid")

    for res in ((64, 32), (128, 64)) if "step" in args.parts else ():
        fns = {"ours": ours_step(res)}
        if phi:
            fns["peer"] = phiflow_step(res)
        # repeats / 2 turns, alternating, each STEP_BLOCK steps back to back (as a rollout
        # runs them): single calls between the peer's 20x longer ones time a cold-cache step
        stats = measure_interleaved(fns, max(1, args.repeats // 2), warmup=2, block=STEP_BLOCK)
        print_item(
            results.add(
                f"wake step {res[0]}x{res[1]}",
                stats["ours"],
                stats.get("peer"),
                "PhiFlow 3.4 jit_compile",
                note=f"no_grad; turns of {STEP_BLOCK} steps back to back",
            )
        )

    peer_repeats = max(3, args.repeats // 4)
    for n_unroll in (4, 16) if "sol" in args.parts else ():
        run, n_params = ours_sol(n_unroll, args.repeats, args.kernel)
        zero_net, _ = ours_sol(n_unroll, 1, args.kernel, network=False)
        solver_part = measure(zero_net, max(5, args.repeats // 2), warmup=2)
        name = f"SOL-{n_unroll} iteration, batch 3, ResNet {n_params // 1000}k"
        fns, notes, grads = {"ours": run}, {}, {}
        for jit in (False, True) if phi else ():
            label = "PhiFlow 3.4 jit_compile" if jit else "PhiFlow 3.4 eager"
            got, failure = _peer_or_failure(partial(phiflow_sol, n_unroll, args.kernel, jit))
            if failure:
                notes[label] = f"peer fails: {failure}"
                continue
            fns[label], first, grads[label] = got
            notes[label] = f"peer first call {first:.3g} s"
        # ours and the peers alternate call by call (same load); fewer repeats with PhiFlow
        stats = measure_interleaved(fns, peer_repeats if len(fns) > 1 else args.repeats // 2)
        ours = stats.pop("ours")
        note = f"solver part {solver_part['median']:.3g} s"
        if len(grads) == 2:
            g_eager, g_jit = grads.values()
            rel = float((g_jit - g_eager).norm() / g_eager.norm())
            note += f"; |grad JIT - grad eager| / |grad eager| = {rel:.1e}"
        if not phi:
            print_item(results.add(name, ours, note=note))
        for label, peer_note in notes.items():
            item = results.add(
                f"{name} vs {label}", ours, stats.get(label), label, note=f"{note}; {peer_note}"
            )
            print_item(item)

    if "memory" in args.parts:
        memory(results, args.kernel)
    if "3d" in args.parts:
        three_d(results)
    if phi and "3d" in args.parts:
        print(f"  PhiFlow 3D 64x32x32 (65,536 cells): {phiflow_3d_buildable()}")
    results.write(args.json)


def memory(results: Results, kernel: int) -> None:
    m4 = peak_memory(4, 0, kernel)
    m32 = peak_memory(32, 4, kernel)
    m32f = peak_memory(32, 0, kernel)
    for name, m in (
        ("peak memory growth SOL-4", m4),
        ("peak memory growth SOL-32 checkpoint(4)", m32),
        ("peak memory growth SOL-32 full", m32f),
    ):
        mib = m / 2**20
        print_item(results.add(name, {"median": mib, "min": mib, "max": mib, "n": 1}, unit="MiB"))


def three_d(results: Results) -> None:
    repeats_3d = 3
    plain = [ours_3d(20) for _ in range(repeats_3d)]
    print_item(
        results.add(
            "3D wake 64x32x32 step",
            {"median": sorted(plain)[1], "min": min(plain), "max": max(plain), "n": repeats_3d},
            note="20 steps per repeat, no_grad",
        )
    )
    hybrid = [ours_3d(10, hybrid=True) * 100 for _ in range(repeats_3d)]
    print_item(
        results.add(
            "100 hybrid 3D steps 64x32x32, 3D ResNet",
            {"median": sorted(hybrid)[1], "min": min(hybrid), "max": max(hybrid), "n": repeats_3d},
            note="10 steps per repeat, times 10",
        )
    )
    net3d = make_resnet(3, dim=3)
    x3d = torch.randn(1, 4, 32, 32, 64)
    cl3d = make_resnet(3, dim=3).to(memory_format=torch.channels_last_3d)
    cl3d.load_state_dict(net3d.state_dict())
    x_cl = x3d.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        diff = float((net3d(x3d) - cl3d(x_cl)).abs().max())
        layouts = measure_interleaved({"cl": lambda: cl3d(x_cl), "nc": lambda: net3d(x3d)}, 3)
    print_item(
        results.add(
            "3D ResNet forward 64x32x32, channels_last_3d",
            layouts["cl"],
            layouts["nc"],
            "the same network, NCDHW",
            note=f"max |output difference| {diff:.1e}; a layout the network code could adopt",
        )
    )


if __name__ == "__main__":
    main()
