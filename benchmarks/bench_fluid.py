"""Benchmark of the Navier–Stokes numerics against PhiFlow 3.4 (torch backend), same run.

Measures (torch pinned to one thread, medians over repeats):
  1. one step of the coarse 2D wake at 64x32 and 128x64 (float32);
  2. one SOL-4 training iteration (batch 3): 4 unrolled steps, a ResNet correction after each,
     L2 loss, backward, Adam step;
  3. 100 steps of the 3D wake on 64x32x32 cells;
  4. peak memory of SOL-32 (gradient checkpointing every 4 steps) vs SOL-4 (torch profiler).
The peer is PhiFlow 3.4 with ``Solve('CG', 1e-3, 1e-3)`` (Um et al., 2020, used PhiFlow); where
it is not installed, the figures quoted in docs/REFERENCES.md are printed, labelled as quoted.

Run: ``python benchmarks/bench_fluid.py [--no-phiflow] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import subprocess
import sys
import time
from functools import partial

import torch
from torch import nn

torch.set_num_threads(1)

from hybridsim.nn.resnet import ResNet  # noqa: E402
from hybridsim.numerics.grid import stack_staggered, unstack_staggered  # noqa: E402
from hybridsim.numerics.rollout import GradientMode, rollout  # noqa: E402
from hybridsim.numerics.scenarios import wake, wake3d  # noqa: E402

QUOTED = {"step64": 0.034, "step128": 0.087, "sol4": 0.74, "step3d": 0.28}
REYNOLDS = [97.7, 390.6, 1562.5]


def make_resnet(kernel: int = 3, dim: int = 2) -> nn.Module:
    """The project's correction, as PhiFlow's ``res_net(dim + 1, dim, [32, 32, 32])``: ~47k
    parameters with 3x3 kernels in 2D (the pbdl book's network). Input (velocity, Re)."""
    return ResNet(dim + 1, dim, (32, 32, 32), kernel, dim=dim)


def _median_time(fn, repeats: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


# ---- hybridsim ------------------------------------------------------------------------------
def ours_step(resolution, repeats):
    sc = wake(resolution, 200.0, cfl_warn=None)
    state = [sc.state]
    for _ in range(20):  # let the flow develop past the start-up transient
        state[0] = sc.solver.step(state[0], sc.dt)

    def run():
        with torch.no_grad():
            state[0] = sc.solver.step(state[0], sc.dt)

    return _median_time(run, repeats)


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
def phiflow_step(resolution, repeats):
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

    return _median_time(run, repeats)


def phiflow_sol4(kernel: int, repeats: int) -> float:
    """PhiFlow SOL-4 iteration, eager torch backend (its CG has an implicit gradient too)."""
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
        math,
        spatial,
        vec,
    )

    boundary = {"x-": vec(x=1, y=0), "x+": ZERO_GRADIENT, "y-": 0, "y+": 0}
    obstacle = Obstacle(Sphere(x=50, y=50, radius=10))
    nus = math.tensor([20 / r for r in REYNOLDS], batch("b"))
    v = StaggeredGrid(vec(x=1, y=0), boundary, x=64, y=32, bounds=Box(x=200, y=100))
    v, p = fluid.make_incompressible(v * math.ones(batch(b=3)), obstacle, Solve("CG", 1e-3, 1e-3))

    def step(v, p):
        v = diffuse.explicit(v, nus, 1.0)
        v = advect.semi_lagrangian(v, v, 1.0)
        return fluid.make_incompressible(v, obstacle, Solve("CG", 1e-3, 1e-3, x0=p))

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
            v, p = step(v, p)
        targets, vt, pt = [], v, p
        for _ in range(4):
            vt, pt = step(vt, pt)
            targets.append(native(vt))

    def run():
        opt.zero_grad()
        vv, pp, loss = v, p, 0.0
        for t in targets:
            vv, pp = step(vv, pp)
            vv = correct(vv)
            loss = loss + ((native(vv) - t) ** 2).mean()
        (loss / 4).backward()
        opt.step()

    return _median_time(run, repeats, warmup=1)[0]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-phiflow", action="store_true")
    parser.add_argument("--kernel", type=int, default=3, help="ResNet kernel size (3: ~47k)")
    parser.add_argument("--mem-child", nargs=3, type=int, help=argparse.SUPPRESS)
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
    peer = "PhiFlow 3.4 (measured)" if phi else "PhiFlow 3.4 (QUOTED from REFERENCES.md)"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32; peer: {peer}")

    for res, key in (((64, 32), "step64"), ((128, 64), "step128")):
        med, best = ours_step(res, args.repeats)
        other = phiflow_step(res, args.repeats)[0] if phi else QUOTED[key]
        print(
            f"wake step {res[0]}x{res[1]}: hybridsim {med * 1e3:6.2f} ms (min {best * 1e3:.2f})"
            f" | peer {other * 1e3:6.1f} ms | ratio {other / med:5.1f}x"
        )

    run, n_params = ours_sol(4, args.repeats, args.kernel)
    med, best = _median_time(run, max(5, args.repeats // 2))
    zero_net, _ = ours_sol(4, 1, args.kernel, network=False)
    solver_med, _ = _median_time(zero_net, max(5, args.repeats // 2))
    print(
        f"SOL-4 iteration (batch 3, ResNet {n_params} params, {args.kernel}x{args.kernel}): "
        f"hybridsim {med:.3f} s (min {best:.3f}; solver part {solver_med:.3f} s)"
    )
    if phi:
        other = phiflow_sol4(args.kernel, max(3, args.repeats // 4))
        print(
            f"  peer PhiFlow eager (no JIT), same torch ResNet: {other:.3f} s | ratio "
            f"{other / med:.1f}x"
        )
    print(f"  peer PhiFlow JIT {QUOTED['sol4']:.2f} s (QUOTED) | ratio {QUOTED['sol4'] / med:.1f}x")

    m4 = peak_memory(4, 0, args.kernel)
    m32 = peak_memory(32, 4, args.kernel)
    m32f = peak_memory(32, 0, args.kernel)
    print(
        f"peak memory growth of one iteration: SOL-4 {m4 / 2**20:.1f} MiB, SOL-32 checkpoint(4)"
        f" {m32 / 2**20:.1f} MiB ({m32 / m4:.2f}x SOL-4), SOL-32 full {m32f / 2**20:.1f} MiB "
        f"({m32f / m4:.2f}x)"
    )

    per_step = ours_3d(100)
    print(
        f"3D wake 64x32x32, 100 steps: hybridsim {per_step * 1e3:.1f} ms/step "
        f"({per_step * 100:.1f} s total) | peer {QUOTED['step3d'] * 1e3:.0f} ms/step (QUOTED) | "
        f"ratio {QUOTED['step3d'] / per_step:.1f}x"
    )
    hybrid_step = ours_3d(10, hybrid=True)  # 10 steps timed; the 3D ResNet dominates
    print(
        f"3D wake 64x32x32 with a 3D ResNet after each step: {hybrid_step * 1e3:.0f} ms/step, "
        f"100 hybrid steps {hybrid_step * 100:.1f} s (the lecture quotes ~15 s per 100 steps)"
    )
    if phi:
        print(f"PhiFlow 3D 64x32x32 (65,536 cells): {phiflow_3d_buildable()}")


if __name__ == "__main__":
    main()
