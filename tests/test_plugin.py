"""A problem from outside hybridsim: an installed package declares it in the entry point group
``hybridsim.problems`` and ships its YAML; ``problem=<name>`` then works with no edit to
hybridsim. The package here is made "installed" the way pip leaves one: a folder on sys.path
with the module and a ``*.dist-info`` holding ``METADATA`` and ``entry_points.txt``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import hybridsim

PLUGIN = '''
"""Exponential decay du/dt = -k u, modelled with a wrong rate and a learned correction."""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hybridsim.data import SplitData
from hybridsim.hybrid import Hybrid, coupling
from hybridsim.nn import build_correction
from hybridsim.numerics.ode import build_solver, odeint
from hybridsim.problems.base import Batch, Comparator, Problem
from hybridsim.schemas import ODESolverConfig


@dataclass
class DecayConfig:
    name: str = "decay"
    rate: float = 0.7
    model_rate: float = 0.5
    n_t: int = 11
    seed_train: int = 1
    seed_val: int = 2
    seed_test: int = 3


class DecayPhysics(nn.Module):
    def __init__(self, k, solver):
        super().__init__()
        self.register_buffer("k", torch.tensor(float(k)))
        self.solver = solver

    def rhs(self):
        return lambda t, u: -self.k * u

    def plus(self, net):
        return lambda t, u: -self.k * u + net(u)

    def step_rhs(self, f, state, h):
        u, t = state
        return self.solver.step(f, t, u, h), t + h

    def run(self, hybrid, u0, t):
        return odeint(hybrid.coupling.rhs(self, hybrid.correction), u0, t, self.solver)


class Decay(Problem):
    name = "decay"
    schema = DecayConfig
    solvers = ("euler", "rk4")
    corrections = ("none", "mlp")
    couplings = ("rhs",)
    solver_schemas = {"ode": ODESolverConfig}
    comparators = (Comparator("solver", "none", "rhs", trained=False),)
    config_files = {"problem/decay": "hsplugin:decay.yaml"}
    tiny = ("correction.width=[4]",)

    def generate(self, split, seed):
        rng = np.random.default_rng(seed)
        t = np.linspace(0.0, 2.0, self.cfg.n_t)
        u0 = 1.0 + rng.random((4, 1))
        u = u0[:, None, :] * np.exp(-self.cfg.rate * t)[None, :, None]
        return SplitData(arrays={"u": u}, coords={"t": t})

    def build_model(self, solver, correction, coupling_name, train, gradient=None):
        net = build_correction(correction, 1, 1, dim=0)
        physics = DecayPhysics(self.cfg.model_rate, build_solver(solver.name))
        return Hybrid(physics, net, coupling(coupling_name), gradient)

    def batch(self, data, batch_size, unroll, gen):
        return self.full_batch(data)

    def full_batch(self, data):
        u = data["u"]
        return Batch(inputs={"u0": u[:, 0], "t": data["t"]}, targets={"u": u.transpose(0, 1)})

    def loss(self, model, batch):
        pred = model(batch.inputs["u0"], batch.inputs["t"])
        return (pred - batch.targets["u"]).square().mean()

    # evaluation: the case once, then each model's prediction and its row of the table
    def eval_case(self, test, train, like):
        arrays = {**test.arrays, **test.coords}
        return self.full_batch({k: torch.as_tensor(v, **like) for k, v in arrays.items()})

    def predict_case(self, model, case):
        return model(case.inputs["u0"], case.inputs["t"])

    def metrics(self, pred, case):
        return {"mse": float((pred - case.targets["u"]).square().mean())}
'''

YAML = """\
# @package _global_
defaults:
  - /schema/problem@problem: decay
  - override /solver: rk4
  - override /correction: mlp
  - override /recipe: lv
  - _self_
dtype: float64
problem:
  rate: 0.7
"""


def _install(root: Path) -> None:
    pkg = root / "hsplugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (pkg / "decay.yaml").write_text(YAML)
    info = root / "hsplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hsplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hybridsim.problems]\ndecay = hsplugin:Decay\n")


def _run(*args: str, cwd: Path, path: Path) -> subprocess.CompletedProcess:
    source = str(Path(hybridsim.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([source, str(path)])}
    return subprocess.run(
        [sys.executable, "-m", "hybridsim", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_an_installed_package_adds_a_problem(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install(site)
    run = tmp_path / "run"
    train = _run(
        "train",
        "problem=decay",
        "correction.width=[4]",
        "recipe.steps=4",
        "recipe.val_every=2",
        "recipe.unroll=[-1]",
        "recipe.polish=none",
        "progress=none",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        path=site,
    )
    assert train.returncode == 0, train.stderr
    config = (run / "config_resolved.yaml").read_text()
    assert "rate: 0.7" in config and "model_rate: 0.5" in config  # the package's YAML and schema
    table = json.loads((run / "eval" / "metrics.json").read_text())["table"]
    assert set(table) == {"hybrid", "solver"}, table
    bad = _run("train", "problem=decay", "solver=maccormack", cwd=tmp_path, path=site)
    assert bad.returncode != 0 and "does not apply to problem=decay" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
