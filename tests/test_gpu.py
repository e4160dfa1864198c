"""The CUDA code path: every operator's adjointness, every solver's gradient check, CPU = CUDA
to float64 rounding, train -> resume bit for bit with deterministic algorithms, the CLI end to
end with ``device=cuda``. Marked ``gpu``; skipped without CUDA (benchmarks/gpu_check.sh runs
them on a lent GPU).

``HYBRIDSIM_GPU_TEST_DEVICE=cpu`` runs the same bodies on the CPU, to check the tests
themselves where no GPU is lent (the CLI tests then use ``device=cpu``).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# cuBLAS needs a fixed workspace for deterministic results; set before CUDA initialises.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import tiny  # noqa: E402
from tiny import CT_TINY, LV_TINY  # noqa: E402

import hybridsim.numerics as numerics  # noqa: E402
from hybridsim.config import (  # noqa: E402
    LVConfig,
    MLPConfig,
    ODESolverConfig,
    RecipeConfig,
)
from hybridsim.numerics.fluid import FluidSolver  # noqa: E402
from hybridsim.numerics.operator import OPERATORS  # noqa: E402
from hybridsim.numerics.pressure import PressureSolve, fft_solve  # noqa: E402
from hybridsim.numerics.radon import RayTransform  # noqa: E402
from hybridsim.numerics.scenarios import bluff_body_grid, periodic_grid, wake3d  # noqa: E402
from hybridsim.problems.lotka_volterra import LotkaVolterra  # noqa: E402

for _m in pkgutil.iter_modules(numerics.__path__):  # every operator registers itself
    importlib.import_module(f"hybridsim.numerics.{_m.name}")

DEVICE = torch.device(os.environ.get("HYBRIDSIM_GPU_TEST_DEVICE", "cuda"))
F64 = {"dtype": torch.float64, "device": DEVICE}
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"
    ),
]
ROOT = Path(__file__).resolve().parents[1]


def _central_difference(f, x, direction, eps=1e-6):
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x)
    with torch.no_grad():
        fd = (float(f(x + eps * direction)) - float(f(x - eps * direction))) / (2 * eps)
    ad = float((grad * direction).sum())
    return ad, fd, abs(ad - fd) / abs(fd)


# ---- operators ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_adjointness_on_device(name):
    op = OPERATORS[name]()
    err = op.adjointness_error(device=DEVICE)
    assert err < 1e-10, f"{name} on {DEVICE}: <Ax,y> - <x,A^T y> relative gap {err:.2e}"


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_operator_equals_cpu_to_rounding(name):
    op = OPERATORS[name]()
    x = torch.randn((3, *op.domain_shape), dtype=torch.float64)
    cpu, dev = op.A(x), op.A(x.to(DEVICE))
    assert dev.device.type == DEVICE.type, f"{name}: A returned a tensor on {dev.device}"
    err = float((dev.cpu() - cpu).abs().max() / cpu.abs().max())
    assert err < 1e-12, f"{name}: CPU and {DEVICE} differ by {err:.2e} (relative)"
    y = torch.randn(cpu.shape, dtype=torch.float64)
    cpu_t, dev_t = op.A_adjoint(y), op.A_adjoint(y.to(DEVICE))
    err = float((dev_t.cpu() - cpu_t).abs().max() / cpu_t.abs().max())
    assert err < 1e-12, f"{name}: adjoint on CPU and {DEVICE} differ by {err:.2e}"


def test_ray_transform_gradcheck_on_device():
    op = RayTransform(8, angles=5)
    x = torch.randn(2, 8, 8, **F64, requires_grad=True)
    y = torch.randn(2, 5, op.n_det, **F64, requires_grad=True)
    assert torch.autograd.gradcheck(op.A, (x,))
    assert torch.autograd.gradcheck(op.A_adjoint, (y,))
    assert torch.autograd.gradgradcheck(lambda v: op.A(v).square().sum(), (x,))


# ---- solvers --------------------------------------------------------------------------------
def test_fft_solve_gradcheck_on_device():
    grid = periodic_grid(8)
    b = torch.randn(1, 8, 8, **F64)
    b = (b - b.mean()).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fft_solve(grid, x), (b,))


def test_implicit_pressure_gradient_on_device():
    grid = bluff_body_grid((16, 8), (32.0, 16.0), (8.0, 8.0), 2.5)
    solve = PressureSolve(grid, rtol=1e-13)
    fluid = grid.consts(torch.float64, DEVICE)["fluid"]
    gen = torch.Generator().manual_seed(3)
    b, w, d = (torch.randn(2, *grid.cell_shape, generator=gen).to(**F64) for _ in range(3))
    b = (b * fluid).requires_grad_(True)
    q = solve(b)
    assert type(q.grad_fn).__name__ == "_ImplicitSolveBackward", "backward must be implicit"
    (grad,) = torch.autograd.grad((q * w).sum(), b)
    eps = 1e-6
    with torch.no_grad():
        fd = float(((solve(b + eps * d) - solve(b - eps * d)) * w).sum()) / (2 * eps)
    ad = float((grad * d).sum())
    assert abs(ad - fd) / abs(fd) < 1e-5, f"implicit gradient {ad} vs central difference {fd}"


def _small_wake(device, advection):
    grid = bluff_body_grid((16, 8), (32.0, 16.0), (8.0, 8.0), 2.5)
    solve = PressureSolve(grid, rtol=1e-13)
    gen = torch.Generator().manual_seed(0)
    like = {"dtype": torch.float64, "device": device}
    velocity = tuple(
        (1.0 * (a == 0) + 0.3 * torch.randn(2, *grid.face_shape(a), generator=gen)).to(**like)
        for a in range(2)
    )
    solver = FluidSolver(grid, 0.3, advection=advection, pressure_solve=solve, cfl_warn=None)
    velocity, pressure = solver.project(velocity, None, 0.5)
    weights = tuple(torch.randn(2, *grid.face_shape(a), generator=gen).to(**like) for a in range(2))
    direction = torch.randn(velocity[0].shape, generator=gen).to(**like)
    direction = direction * grid.consts(torch.float64, device)["open"][0]
    return solver, velocity, pressure, weights, direction


@pytest.mark.parametrize("advection", ["semi_lagrangian", "maccormack"])
def test_fluid_gradient_through_unrolled_steps_on_device(advection):
    solver, velocity, pressure, weights, direction = _small_wake(DEVICE, advection)

    def loss(u0):
        state = (u0, velocity[1], pressure)
        for _ in range(3):
            state = solver.step(state, 0.5)
        return sum((s * w).sum() for s, w in zip(state[:2], weights, strict=True))

    ad, fd, err = _central_difference(loss, velocity[0], direction)
    assert err < 1e-5, f"{advection} on {DEVICE}: autograd {ad} vs FD {fd}, rel {err:.2e}"


@pytest.mark.parametrize("advection", ["semi_lagrangian", "maccormack"])
def test_fluid_steps_equal_cpu_to_rounding(advection):
    runs = []
    for device in (torch.device("cpu"), DEVICE):
        solver, velocity, pressure, _, _ = _small_wake(device, advection)
        state = (*velocity, pressure)
        for _ in range(4):
            state = solver.step(state, 0.5)
        runs.append([s.cpu() for s in state[:2]])
    for a, b in zip(*runs, strict=True):
        err = float((a - b).abs().max() / a.abs().max())
        assert err < 1e-9, f"{advection}: 4 steps on CPU and {DEVICE} differ by {err:.2e}"


def test_3d_wake_step_on_device_is_divergence_free():
    from hybridsim.numerics.fluid import divergence

    sc = wake3d((32, 16, 16), 100.0, dtype=torch.float64, device=DEVICE, cfl_warn=None)
    sc.solver.pressure_solve.rtol = 1e-12
    state = sc.solver.step(sc.solver.step(sc.state, sc.dt), sc.dt)
    assert all(s.device.type == DEVICE.type for s in state)
    div = float(divergence(sc.grid, state[:3]).abs().max())
    assert div < 1e-8, f"3D float64 on {DEVICE}: max |div u| = {div:.2e}"


def _lv_model(solver):
    problem = LotkaVolterra(LVConfig())
    train = problem.generate("train", 1)
    corr = MLPConfig(width=[8])
    model = problem.build_model(ODESolverConfig(name=solver), corr, "rhs", train)
    return model.double().to(DEVICE)


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_ode_gradcheck_on_device(solver):
    model = _lv_model(solver)
    t = torch.linspace(0, 0.3, 4, **F64)
    w = model.correction.weights[0]

    def f(u0, weight, theta3):
        params = {"correction.weights.0": weight, "theta3": theta3}
        return torch.func.functional_call(model, params, (u0, t))

    u0 = torch.tensor([[10.0, 10.0], [5.0, 3.0]], **F64, requires_grad=True)
    weight = w.detach().clone().requires_grad_()
    theta3 = torch.tensor(0.5, **F64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (u0, weight, theta3), eps=1e-6, atol=1e-5, rtol=1e-4)


# ---- training: resume bit for bit -----------------------------------------------------------
@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def _fit(run_dir, interrupt_at=None):
    from hybridsim.train import fit

    recipe = RecipeConfig(
        name="t",
        steps=6,
        batch_size=8,
        unroll=[3, 5],
        val_every=2,
        log_every=1,
        polish="lbfgs",
        polish_steps=4,
    )

    def setup(seed):
        problem = LotkaVolterra(LVConfig(t_train=2.0, t_test=3.0))
        train, val = problem.generate("train", 1), problem.generate("val", 2)
        torch.manual_seed(seed)
        corr = MLPConfig(width=[8])
        model = problem.build_model(ODESolverConfig(name="rk4"), corr, "rhs", train).to(DEVICE)
        data = (train.tensors(DEVICE, torch.float32), val.tensors(DEVICE, torch.float32))
        return problem, model, data

    problem, model, (train, val) = setup(0)
    if interrupt_at is not None:
        calls, loss = {"n": 0}, problem.loss

        def counting(*a, **k):
            calls["n"] += torch.is_grad_enabled()
            if calls["n"] == interrupt_at:
                raise KeyboardInterrupt
            return loss(*a, **k)

        problem.loss = counting
        with pytest.raises(KeyboardInterrupt):
            fit(problem, model, train, val, recipe, run_dir, progress="none")
        problem, model, (train, val) = setup(123)  # a fresh process, restored from disk
    fit(problem, model, train, val, recipe, run_dir, progress="none")
    return model


@pytest.mark.parametrize("interrupt_at", [4, 9], ids=["during-adam", "during-lbfgs"])
def test_train_resume_bit_for_bit_on_device(tmp_path, interrupt_at, deterministic):
    whole = _fit(tmp_path / "a")
    resumed = _fit(tmp_path / "b", interrupt_at)
    for (k, a), (_, b) in zip(
        whole.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert a.device.type == DEVICE.type
        assert torch.equal(a, b), f"{k} differs after resume on {DEVICE}"
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "a") == rows(tmp_path / "b")


# ---- the command line -----------------------------------------------------------------------
NS_TINY = [
    *tiny.NS_TINY,
    "recipe.steps=3",
    "recipe.val_every=2",
    "recipe.log_every=1",
    "recipe.unroll=[2]",
]
CT_TRAIN = ["recipe.steps=3", "recipe.val_every=2", "recipe.log_every=1"]


def _hybridsim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("hybridsim")
    cmd = [exe] if exe else [sys.executable, "-m", "hybridsim"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, f"hybridsim {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.parametrize(
    "overrides",
    [LV_TINY, [*CT_TINY, *CT_TRAIN], NS_TINY],
    ids=["lv", "ct", "ns"],
)
def test_cli_train_eval_on_device(tmp_path, overrides):
    device = f"device={DEVICE.type}"
    train = _hybridsim("train", *overrides, device, cwd=tmp_path)
    run_dir = Path(train.stdout.strip().splitlines()[-1])
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["device"].startswith(DEVICE.type), meta["device"]
    assert (run_dir / "checkpoints" / "best.pt").exists()
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["table"], "evaluation wrote no table"
    _hybridsim("eval", f"run={run_dir}", device, cwd=tmp_path)
