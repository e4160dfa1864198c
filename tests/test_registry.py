"""The contract every registered problem and solver fulfils, parametrised over the registries:
adding a problem (hybridsim.problems.registered(), with its ``tiny`` overrides) or an ODE solver
(hybridsim.numerics.ode.SOLVERS, with its declared ``order``) adds it here, with no new test.

Per problem: a zero correction reproduces the solver alone for every coupling that has a solver
term; checkpointed backpropagation gives full backpropagation's gradient; a few optimiser steps
on one batch lower the loss; the data of its (tiny) defaults are finite; the evaluation loop
scores every model and the solver alone with finite metrics and writes plots; and generate ->
train -> eval -> resume -> report runs through the installed console script.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import hybridsim
from hybridsim.cli import main
from hybridsim.config import NoCorrectionConfig, register_schemas, to_typed
from hybridsim.data import SPLITS, check_finite
from hybridsim.evaluate import evaluate_models
from hybridsim.numerics.ode import SOLVERS, odeint
from hybridsim.numerics.rollout import GradientMode
from hybridsim.problems.base import registered

CONF = Path(__file__).resolve().parents[1] / "conf"
PROBLEMS = sorted(registered())
register_schemas()


def typed(problem: str, *extra: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"problem={problem}", *registered()[problem].tiny, *extra]
        )
    return to_typed(cfg)


@pytest.fixture(scope="module", params=PROBLEMS)
def setup(request):
    """(typed config, problem, data splits) of a problem's tiny defaults (generated once)."""
    cfg = typed(request.param)
    problem = registered()[request.param](cfg.problem)
    splits = {s: problem.generate(s, getattr(cfg.problem, f"seed_{s}")) for s in SPLITS}
    return cfg, problem, splits


def _zeroed(model: torch.nn.Module) -> torch.nn.Module:
    """The model with every network weight zero: the correction's output is exactly zero."""
    with torch.no_grad():
        for p in model.correction.parameters():
            p.zero_()
    return model


def test_default_data_are_finite(setup):
    _, problem, splits = setup
    check_finite(problem, splits)  # raises naming the split and array
    assert all(np.isfinite(a).all() for s in splits.values() for a in s.arrays.values())


def test_zero_correction_is_the_solver_alone_for_every_coupling(setup):
    cfg, problem, splits = setup
    none = NoCorrectionConfig()
    val = splits["val"].tensors(torch.device("cpu"), torch.float64)
    checked = []
    for coupling in problem.couplings:
        if coupling in problem.needs_network:
            continue  # made of networks: there is no solver term to reproduce
        try:
            problem.check_choices(cfg.solver.name, cfg.correction.name, coupling)
        except ValueError:
            continue
        solver = problem.build_model(cfg.solver, none, coupling, splits["train"]).double()
        zero = problem.build_model(cfg.solver, cfg.correction, coupling, splits["train"])
        zero = _zeroed(zero.double())
        a, b = problem.validate(solver, val), problem.validate(zero, val)
        assert a == b, f"{problem.name} coupling={coupling}: {a} != {b}"
        checked.append(coupling)
    assert checked, f"{problem.name}: no coupling with a solver term"


def _loss_and_grad(problem, model, batch) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    loss = problem.loss(model, batch)
    loss.backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    return float(loss.detach()), torch.cat(grads)


def test_checkpointing_gives_full_backpropagations_gradient(setup):
    cfg, problem, splits = setup
    data = splits["train"].tensors(torch.device("cpu"), torch.float64)
    batch = problem.batch(data, 2, 4, torch.Generator().manual_seed(0))
    results = []
    for mode in (GradientMode("full"), GradientMode("checkpoint", 2)):
        torch.manual_seed(0)
        model = problem.build_model(
            cfg.solver, cfg.correction, problem.couplings[0], splits["train"], mode
        ).double()
        results.append(_loss_and_grad(problem, model, batch))
    (l_full, g_full), (l_ck, g_ck) = results
    assert l_full == pytest.approx(l_ck, rel=1e-12)
    rel = float((g_full - g_ck).norm() / g_full.norm())
    assert g_full.norm() > 0 and rel < 1e-6, f"{problem.name}: gradients differ by {rel:.2e}"


def test_a_few_steps_lower_the_loss(setup):
    cfg, problem, splits = setup
    data = splits["train"].tensors(torch.device("cpu"), torch.float64)
    batch = problem.batch(data, 2, 4, torch.Generator().manual_seed(0))
    model = problem.build_model(
        cfg.solver, cfg.correction, problem.couplings[0], splits["train"]
    ).double()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.recipe.lr)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = problem.loss(model, batch)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(map(math.isfinite, losses))
    assert losses[-1] < losses[0], f"{problem.name}: loss {losses[0]:.4g} -> {losses[-1]:.4g}"


@pytest.fixture(scope="module")
def evaluated(setup, tmp_path_factory):
    """The evaluation loop on the tiny defaults' models (untrained) and every comparator, on the
    CPU in the run's dtype: (problem, model names, result, plot directory)."""
    cfg, problem, splits = setup
    like = {"device": torch.device("cpu"), "dtype": getattr(torch, cfg.dtype)}
    coupling = problem.check_choices(cfg.solver.name, cfg.correction.name, cfg.coupling)
    torch.manual_seed(0)
    models = problem.model_set(
        cfg.solver, cfg.correction, coupling, splits["train"], baselines=True, untrained=True
    )
    models = {name: m.to(**like).eval() for name, m in models.items()}
    plots = tmp_path_factory.mktemp(f"eval-{problem.name}") / "plots"
    result = evaluate_models(
        problem, models, splits["test"], splits["train"], splits["val"], plots, like
    )
    return problem, list(models), result, plots


def test_evaluation_scores_every_model_and_the_solver_alone(evaluated):
    problem, names, result, _ = evaluated
    table = result["table"]
    solver = problem.solver_alone()
    assert solver in table, f"{problem.name}: no row for the solver alone ({solver})"
    assert set(names) <= set(table), f"{problem.name}: {sorted(table)} lacks some of {names}"
    for name, row in table.items():
        for metric, value in row.items():
            assert math.isfinite(value), f"{problem.name}: {name}/{metric} = {value}"
    if problem.headline_error is not None:
        src = table[solver][problem.headline_error]
        for name, row in table.items():
            if name != solver:
                assert row["gain_over_solver"] == src / row[problem.headline_error], name
    json.dumps(result, allow_nan=False)  # eval/metrics.json holds it as it is


def test_evaluation_writes_plots(evaluated):
    problem, _, _, plots = evaluated
    files = sorted(plots.glob("*.png"))
    assert files, f"{problem.name}: no plot in {plots}"
    assert all(f.stat().st_size > 0 for f in files), files


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_ode_solver_converges_at_its_declared_order(name):
    """du/dt = λu on [0, 1]: the log-log slope of the error against the step is the declared
    order (adaptive solvers: run at fixed steps through their own embedded step)."""
    solver = SOLVERS[name]()
    lam = -1.3
    u0 = torch.ones(1, 1, dtype=torch.float64)
    errors, hs = [], []
    for n in (10, 20, 40):
        t = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        h = 1.0 / n
        u, time = u0, t[0]
        for _ in range(n):
            f = lambda t, x: lam * x  # noqa: E731
            if getattr(solver, "adaptive", False):  # its 5th-order solution at a fixed step
                u = solver.step(f, time, u, torch.tensor(h, dtype=u.dtype), f(time, u))[0]
            else:
                u = solver.step(f, time, u, h)
            time = time + h
        errors.append(abs(float(u[0, 0]) - math.exp(lam)))
        hs.append(h)
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert abs(slope - solver.order) < 0.25, f"{name}: measured order {slope:.2f}"
    # and through odeint as the hybrids use it
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.isfinite(odeint(lambda t, x: lam * x, u0, t, solver)).all()


# ---------------------------------------------------------------- the installed console script
TRAIN = [
    "recipe.steps=4",
    "recipe.val_every=2",
    "recipe.log_every=1",
    "recipe.unroll=[2]",
    "recipe.batch_size=2",
    "recipe.polish=none",
    "recipe.baselines=true",
    "progress=none",
]


def hybridsim_cli(*args: str, cwd: Path, wait: bool = True) -> Any:
    """``hybridsim ARGS`` through the console script installed beside this Python (the code
    under test first on the path); with ``wait=False`` the running process."""
    exe = shutil.which("hybridsim", path=str(Path(sys.executable).parent))
    assert exe, "the console script hybridsim is not installed beside this Python"
    source = str(Path(hybridsim.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": source}
    if not wait:
        return subprocess.Popen(
            [exe, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    proc = subprocess.run(
        [exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"hybridsim {' '.join(args)} failed:\n{proc.stderr}"
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("name", PROBLEMS)
def test_generate_train_eval_resume_report(name, tmp_path, monkeypatch, capsys):
    """train through the installed console script (interrupted by SIGINT once its first
    checkpoint is written; a problem fast enough to finish first has nothing to resume), the
    other commands in-process (each extra interpreter costs seconds of imports)."""
    monkeypatch.chdir(tmp_path)
    tiny = [f"problem={name}", *registered()[name].tiny]
    assert main(["generate", *tiny]) == 0
    assert (tmp_path / capsys.readouterr().out.split()[0]).exists()
    run = tmp_path / "sweep" / "0"
    args = [*tiny, *TRAIN, "recipe.steps=12", f"hydra.run.dir={run}", "seed=1"]
    proc = hybridsim_cli("train", *args, cwd=tmp_path, wait=False)
    last = run / "checkpoints" / "last.pt"
    while proc.poll() is None and not last.exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 130), err
    if proc.returncode == 130:
        assert not torch.load(last, weights_only=True)["done"]
    assert main(["train", f"resume={run}"]) == 0
    ck = torch.load(last, weights_only=True)
    assert ck["done"] and ck["step"] == 12
    capsys.readouterr()
    assert main(["eval", f"run={run}"]) == 0
    out = capsys.readouterr().out
    table = json.loads((run / "eval" / "metrics.json").read_text())["table"]
    comparators = registered()[name].comparators
    trained = {c.name for c in comparators if c.trained}
    assert trained <= {p.name for p in (run / "checkpoints").iterdir()}, "recipe.baselines=true"
    for model in ("hybrid", *(c.name for c in comparators)):
        assert model in table and model in out, f"{model} missing: {sorted(table)}"
    assert any(p.stat().st_size > 0 for p in (run / "eval" / "plots").glob("*.png"))
    assert main(["report", str(tmp_path / "sweep")]) == 0
    assert "hybrid" in (tmp_path / "sweep" / "report" / "report.md").read_text()
