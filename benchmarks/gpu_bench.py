"""Paper-scale training steps on a GPU: eager against ``torch.compile`` and against bf16
autocast on the networks only (the solvers stay in float32), steps per second and peak memory.

    python benchmarks/gpu_bench.py [--out DIR] [--budget 260] [--part-timeout 90]
    python benchmarks/gpu_bench.py --device cpu --tiny --out /tmp/x      (the code path, on a CPU)

Parts (each in its own process, under its own timeout, so one hang or out-of-memory leaves the
others' results; a part writes its JSON after every mode, so a timeout keeps what it measured;
all parts run eager and bf16 first, then torch.compile with the budget left):
  lv      the UDE training step, batch 64 windows x 20 RK4 steps (fwd + bwd + Adam);
  ct      learned gradient descent, 128^2, batch 20, 10 iterations (fwd + bwd + RMSProp);
  ns      SOL-32 on the 64x32 wake, batch 3, the paper's 5-block 5x5 ResNet, checkpointing every 4;
  wake3d  100 hybrid steps of the 3D wake on 64x32x32 cells with a 3D ResNet (no grad);
  ns256   a 2D Navier-Stokes forward + backward of 100 steps at 256^2 (Kolmogorov flow, FFT
          pressure; no network, eager only).
Modes: ``eager``; ``compile``: ``torch.compile`` on the networks (on the whole forward for lv,
whose network is a tiny MLP called 80 times per step; its first call, the compile time, is
reported apart); ``bf16``: ``torch.autocast(bfloat16)`` around every network call, outputs cast
back to the solver's dtype.

Everything goes into ``DIR`` (default ``$OUT``, else ./gpu-bench-out): ``parts/<part>.json``,
``summary.json`` and ``summary.md``. Without CUDA (and ``--device cuda``) it prints one line and
exits with status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = ("lv", "ct", "ns", "wake3d", "ns256")
MODES = ("eager", "compile", "bf16")
NO_NETWORK = {"ns256"}


# ---- helpers --------------------------------------------------------------------------------
def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_networks(modules, device, dtype_name: str = "bfloat16") -> None:
    """Run every call of each module (and the closures its ``scaled`` builds) under autocast;
    outputs are cast back to the input's dtype, so the solver never sees a bf16 tensor."""
    import torch

    low = getattr(torch, dtype_name)

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            ref = next((a for a in args if isinstance(a, torch.Tensor)), None)
            with torch.autocast(device.type, dtype=low):
                out = fn(*args, **kwargs)
            return out.to(ref.dtype) if ref is not None and out.dtype == low else out

        return run

    from hybridsim.nn import NETWORKS
    from hybridsim.nn.accelerate import accelerate

    amp = {"bfloat16": "bf16", "float16": "fp16"}.get(dtype_name)
    for m in modules:
        if amp and isinstance(m, (*NETWORKS, torch.nn.ModuleList)):
            accelerate(m, amp)  # hybridsim's networks: the code path of the user option amp=
            continue
        m.forward = wrap(m.forward)


def compile_networks(owner, names, device) -> None:
    """Replace ``owner.<name>`` modules by ``torch.compile``d versions (same parameters)."""
    import torch

    for name in names:
        setattr(owner, name, torch.compile(getattr(owner, name)))


def timed(step, device, repeats: int, max_seconds: float) -> dict:
    """First call (compile/caches) apart; then up to ``repeats`` timed calls within
    ``max_seconds``; peak memory over the timed calls (CUDA) or None."""
    import torch

    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t0
    step()  # a second warm-up: autotuning, allocator
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, start = [], time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    med = statistics.median(times)
    return {
        "first_call_s": first,
        "median_s": med,
        "min_s": min(times),
        "max_s": max(times),
        "n": len(times),
        "steps_per_s": 1.0 / med,
        "peak_memory_mib": None if peak is None else peak / 2**20,
    }


# ---- the parts: each returns a zero-argument training step ------------------------------------
def part_lv(device, mode, tiny):
    import torch

    from hybridsim.config import LVConfig, MLPConfig, ODESolverConfig
    from hybridsim.problems.lotka_volterra import LotkaVolterra

    batch_size, steps = (4, 5) if tiny else (64, 20)
    problem = LotkaVolterra(LVConfig())
    train = problem.generate("train", 1)
    corr = MLPConfig(width=[32, 32])
    model = problem.build_model(ODESolverConfig(name="rk4"), corr, "rhs", train).to(device)
    data = train.tensors(device, torch.float32)
    b = problem.batch(data, batch_size, steps, torch.Generator().manual_seed(0))
    u0, t, target, scale = b.inputs["u0"], b.inputs["t"], b.targets["u"], b.targets["scale"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if mode == "bf16":
        autocast_networks([model.correction], device)
    forward = torch.compile(model) if mode == "compile" else model

    def step():
        opt.zero_grad(set_to_none=True)
        loss = (((forward(u0, t) - target) / scale) ** 2).mean()
        loss.backward()
        opt.step()

    return step, f"batch {batch_size} x {steps} RK4 steps, MLP [32, 32]"


def part_ct(device, mode, tiny):
    import torch

    from hybridsim.config import ConvNetConfig, CTConfig, CTSolverConfig
    from hybridsim.problems.tomography import Tomography

    size, batch_size, n_iter = (24, 2, 2) if tiny else (128, 20, 10)
    width = [8, 8] if tiny else [32, 32]
    cfg = CTConfig(size=size, n_angles=12 if tiny else 30, n_train=batch_size, n_ellipses=20)
    problem = Tomography(cfg if tiny else CTConfig(size=size, n_train=batch_size, n_ellipses=100))
    train = problem.generate("train", 1)
    data = train.tensors(device, torch.float32)
    net = ConvNetConfig(activation="relu", width=width)
    model = problem.build_model(CTSolverConfig(name="gd", n_iter=n_iter), net, "update", train)
    model = model.to(device)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    b = problem.batch(data, batch_size, -1, torch.Generator().manual_seed(0))
    if mode == "bf16":
        autocast_networks([model.correction], device)
    elif mode == "compile":
        compile_networks(model, ["correction"], device)

    def step():
        loss = problem.loss(model, b)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, f"{size}^2, batch {batch_size}, {n_iter} iterations, ConvNet {width}"


def _resnet(dim, tiny, paper=True):
    from hybridsim.nn.resnet import ResNet

    if tiny:
        return ResNet(dim + 1, dim, [8], 3, blocks=1, dim=dim)
    if paper:  # Um et al. (2020): input conv + 5 blocks of 5x5x32 (~260k parameters)
        return ResNet(dim + 1, dim, [32], 5, blocks=5, dim=dim)
    return ResNet(dim + 1, dim, (32, 32, 32), 3, dim=dim)


def part_ns(device, mode, tiny):
    import torch

    from hybridsim.numerics.grid import stack_staggered, unstack_staggered
    from hybridsim.numerics.rollout import GradientMode, rollout
    from hybridsim.numerics.scenarios import wake

    n_unroll, res = (2, (32, 16)) if tiny else (32, (64, 32))
    reynolds = [97.7, 390.6, 1562.5]
    torch.manual_seed(0)
    sc = wake(res, reynolds, cfl_warn=None, device=device)
    grid, solver = sc.grid, sc.solver
    holder = torch.nn.Module()
    holder.net = _resnet(2, tiny).to(device)
    opt = torch.optim.Adam(holder.net.parameters(), lr=1e-4)
    re = torch.tensor(reynolds, device=device).view(-1, 1, 1, 1) / 1000.0
    state = sc.state
    with torch.no_grad():
        for _ in range(10):
            state = solver.step(state, sc.dt)
        targets = rollout(lambda s: solver.step(s, sc.dt), state, n_unroll)
        targets = [tuple(u.clone() for u in s[:2]) for s in targets]
    if mode == "bf16":
        autocast_networks([holder.net], device)
    elif mode == "compile":
        compile_networks(holder, ["net"], device)

    def corrected(s):
        s = solver.step(s, sc.dt)
        packed = stack_staggered(grid, s[:2])
        x = torch.cat([packed, re.expand(-1, 1, *packed.shape[2:])], dim=1)
        du = unstack_staggered(grid, holder.net(x))
        return (*(u + d for u, d in zip(s[:2], du, strict=True)), s[2])

    gradient = GradientMode("checkpoint", min(4, n_unroll))

    def step():
        opt.zero_grad()
        states = rollout(corrected, state, n_unroll, gradient=gradient)
        loss = sum(
            sum(((a - b) ** 2).mean() for a, b in zip(s[:2], t, strict=True))
            for s, t in zip(states, targets, strict=True)
        )
        (loss / n_unroll).backward()
        opt.step()

    n_params = sum(p.numel() for p in holder.net.parameters())
    return step, f"SOL-{n_unroll}, {res[0]}x{res[1]}, batch 3, ResNet {n_params} parameters"


def part_wake3d(device, mode, tiny):
    import torch

    from hybridsim.numerics.grid import stack_staggered, unstack_staggered
    from hybridsim.numerics.scenarios import wake3d

    res, n_steps = ((32, 16, 16), 3) if tiny else ((64, 32, 32), 100)
    sc = wake3d(res, 200.0, cfl_warn=None, device=device)
    holder = torch.nn.Module()
    holder.net = _resnet(3, tiny, paper=False).to(device)
    if mode == "bf16":
        autocast_networks([holder.net], device)
    elif mode == "compile":
        compile_networks(holder, ["net"], device)

    def step():
        state = sc.state
        with torch.no_grad():
            for _ in range(n_steps):
                state = sc.solver.step(state, sc.dt)
                velocity = state[:-1]
                packed = stack_staggered(sc.grid, velocity)
                x = torch.cat((packed, torch.zeros_like(packed[:, :1])), dim=1)
                du = unstack_staggered(sc.grid, holder.net(x))
                state = (*(a + b for a, b in zip(velocity, du, strict=True)), state[-1])

    cells = res[0] * res[1] * res[2]
    return step, f"{n_steps} hybrid steps, {res} = {cells} cells, 3D ResNet [32, 32, 32] 3^3"


def part_ns256(device, mode, tiny):
    import torch

    from hybridsim.numerics.scenarios import kolmogorov

    n, n_steps = (32, 3) if tiny else (256, 100)
    sc = kolmogorov(n, device=device)
    u0 = sc.state[0].detach()
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(s.shape, generator=gen).to(s) for s in sc.state[:2]]

    def step():
        u = u0.clone().requires_grad_(True)
        state = (u, *sc.state[1:])
        for _ in range(n_steps):
            state = sc.solver.step(state, sc.dt)
        loss = sum((s * w).sum() for s, w in zip(state[:2], weights, strict=True))
        (grad,) = torch.autograd.grad(loss, u)
        return grad

    return step, f"{n}^2 Kolmogorov flow, {n_steps} steps forward + backward, float32, FFT pressure"


BUILDERS = {
    "lv": part_lv,
    "ct": part_ct,
    "ns": part_ns,
    "wake3d": part_wake3d,
    "ns256": part_ns256,
}


def run_part(name: str, device_name: str, modes, tiny: bool, repeats: int, out: Path) -> int:
    """In this process: every mode of one part, the JSON rewritten after each mode."""
    import torch

    torch.manual_seed(0)
    device = torch.device(device_name)
    path = out / "parts" / f"{name}.json"
    record = {"part": name, "device": str(device), "modes": {}}
    if path.exists():  # a second pass adds its modes
        record = json.loads(path.read_text())
    for mode in modes if name not in NO_NETWORK else ("eager",):
        try:
            step, what = BUILDERS[name](device, mode, tiny)
            record["what"] = what
            record["modes"][mode] = timed(step, device, repeats, max_seconds=20.0)
        except Exception as exc:  # a mode that cannot run is a result, not a crash
            record["modes"][mode] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        path.write_text(json.dumps(record, indent=1))
        print(f"{name} {mode}: {record['modes'][mode]}", flush=True)
    return 0


def environment(device_name: str) -> dict:
    import torch

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "device": device_name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        env["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        env["commit"] = None
    if device_name.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            gpu_memory_gib=props.total_memory / 2**30,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return env


def summarize(out: Path, env: dict, parts, status: dict) -> None:
    rows, summary = [], {"environment": env, "parts": {}}
    for name in parts:
        path = out / "parts" / f"{name}.json"
        rec = json.loads(path.read_text()) if path.exists() else {"modes": {}}
        rec["status"] = status.get(name, "not run")
        summary["parts"][name] = rec
        eager = rec["modes"].get("eager", {}).get("median_s")
        for mode, m in rec["modes"].items():
            if "error" in m:
                rows.append(f"| {name} | {mode} | failed: {m['error'][:80]} | | | | |")
                continue
            speedup = f"{eager / m['median_s']:.2f}x" if eager else ""
            mem = "" if m["peak_memory_mib"] is None else f"{m['peak_memory_mib']:.0f}"
            rows.append(
                f"| {name} | {mode} | {m['median_s'] * 1e3:.2f} [{m['min_s'] * 1e3:.2f}, "
                f"{m['max_s'] * 1e3:.2f}] (n={m['n']}) | {m['steps_per_s']:.2f} | {speedup} | "
                f"{mem} | {m['first_call_s']:.1f} |"
            )
        if rec["status"] != "ok":
            rows.append(f"| {name} | | {rec['status']} | | | | |")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    head = [
        f"GPU step benchmark: {env.get('gpu', env['device'])}, torch {env['torch']}, "
        f"commit {env.get('commit')}, {env['date']}",
        "",
        "| part | mode | step ms, median [min, max] | steps/s | vs eager | peak MiB | first s |",
        "|---|---|---|---|---|---|---|",
    ]
    what = [f"- {n}: {summary['parts'][n].get('what', '')}" for n in parts]
    (out / "summary.md").write_text("\n".join(head + rows + ["", *what]) + "\n")
    print("\n".join(head + rows + ["", *what]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-bench-out")))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (tests the code path)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--budget", type=float, default=260.0, help="seconds for all parts")
    parser.add_argument("--part-timeout", type=float, default=90.0)
    parser.add_argument("--run-part", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_bench: no CUDA device (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}); nothing measured. Use --device cpu --tiny to test the code.",
            file=sys.stderr,
        )
        return 2
    if args.run_part:
        return run_part(args.run_part, args.device, args.modes, args.tiny, args.repeats, args.out)

    (args.out / "parts").mkdir(parents=True, exist_ok=True)
    env = environment(args.device)
    (args.out / "environment.json").write_text(json.dumps(env, indent=1))
    deadline = time.monotonic() + args.budget
    # Two passes: every part eager (and bf16) first, then torch.compile with the time left, so
    # that slow compilations cannot starve the other parts of their baseline.
    passes = [[m for m in args.modes if m != "compile"], [m for m in args.modes if m == "compile"]]
    status: dict[str, list[str]] = {}
    for modes in (p for p in passes if p):
        for name in args.parts:
            if name in NO_NETWORK and modes == ["compile"]:
                continue
            left = deadline - time.monotonic()
            if left < 10:
                status.setdefault(name, []).append(
                    f"{'+'.join(modes)} skipped: the time budget was spent"
                )
                continue
            cmd = [sys.executable, __file__, "--run-part", name, "--device", args.device]
            cmd += ["--out", str(args.out), "--repeats", str(args.repeats), "--modes", *modes]
            cmd += ["--tiny"] if args.tiny else []
            timeout = min(args.part_timeout, left)
            with open(args.out / "parts" / f"{name}.log", "a") as f:
                # its own session, so that a timeout also ends torch.compile's worker processes
                proc = subprocess.Popen(
                    cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
                )
                try:
                    code = proc.wait(timeout=timeout)
                    ok = code == 0
                    what = "ok" if ok else f"exit {code} (see parts/{name}.log)"
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    ok, what = False, f"timed out after {timeout:.0f} s (measured modes kept)"
            status.setdefault(name, []).append("ok" if ok else f"{'+'.join(modes)}: {what}")
            print(f"[{name} {'+'.join(modes)}] {what}", flush=True)
    status = {k: "; ".join(x for x in v if x != "ok") or "ok" for k, v in status.items()}
    summarize(args.out, env, args.parts, status)
    return 0 if all(s == "ok" for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
