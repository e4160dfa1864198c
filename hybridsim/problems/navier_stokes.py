"""Navier–Stokes solver-in-the-loop (Um, Brand, Fei, Holl, Thuerey, NeurIPS 2020).

A coarse solver ``P`` (``numerics.fluid.FluidSolver`` on the coarse MAC grid) is corrected after
every step by a network ``C`` that sees the velocity and the Reynolds number::

    s_{t+1} = s*_t + C(s*_t, Re),      s*_t = P(s_t)          (coupling ``after_step``)

and is trained against a reference simulated ``factor`` times finer and restricted to the coarse
grid (``grid.downsample``: face means, flux-conserving). Variants, each one config away:

- SRC: the coarse solver alone (``correction=none``; evaluated as the untrained ``solver``);
- SOL-n: ``n`` unrolled corrected steps per update, gradients through the solver
  (``recipe.unroll=[n]``; curriculum ``[4, 8, 16, 32]``; ``recipe.gradient_mode=checkpoint``);
- NON: the same correction trained on single steps from reference states with no gradient
  through the solver (coupling ``non``: teacher forcing; trained beside SOL as baseline ``non``).

Loss: mean over unrolled steps (and samples) of the squared velocity error on the faces the
solver may change (``grid.consts()['open']``); prescribed faces (inflow, walls, faces touching
the obstacle) are neither corrected nor scored. The correction is not re-projected by default
(as in Um et al.; the next step's projection removes its divergence); ``problem.
project_correction=true`` re-projects it.

Network input: ``stack_staggered(u, v[, w]) / s`` (``(batch, dim, *(cells + 1))``; periodic axes
unpadded) and a constant channel ``(ln Re - mean) / std`` over the training Reynolds numbers;
output a staggered velocity correction (times ``s``, zero on prescribed faces). The scale ``s``
is ``U`` (``problem.input_scale=fixed``) or each sample's rms velocity over the open faces
(``rms``, ``rms2``), so that a decaying flow (Taylor–Green) keeps unit-size network inputs. With
``rms`` the output is times ``s`` (``C(a u) = a C(u)``); with ``rms2`` times ``s^2 / U``
(``C(a u) = a^2 C(u)``), the degree of the advection term whose truncation error the correction
makes up for: the semi-Lagrangian damping per step grows with the CFL number, i.e. with the
amplitude, so the correction fades as the flow decays and cannot amplify a dying flow
exponentially.

Momentum (``problem.conserve_momentum``, periodic domains): the mean velocity of a periodic flow
obeys ``d<u>/dt = <f> - drag <u>`` exactly (advection, viscosity and pressure conserve it), but
semi-Lagrangian advection does not conserve it, and a learned correction need not either. A
uniform flow thus created is never damped (no viscosity acts on it) and, in a decaying flow,
comes to dominate a 500-step rollout (measured: Taylor–Green at Re 8). With the option on, the
corrected step's mean is set to ``<u_t> (1 - drag dt) + dt <f>`` (the discrete balance of the
solver's own explicit forcing), so the correction changes only the fluctuations.
Convolutions wrap around on periodic domains (``correction.padding``).

Data per split (one batched reference simulation, one sample per Reynolds number), coarse only:
``u, v[, w]: (n_re, n_t, *face_shape)``, ``p: (n_re, n_t, *cells)``, ``reynolds: (n_re,)``;
coordinates ``t`` (after the warm-up) and ``spacing``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from hybridsim.hybrid import Hybrid
from hybridsim.hybrid import coupling as make_coupling
from hybridsim.nn import build_correction
from hybridsim.numerics.grid import MACGrid, downsample
from hybridsim.numerics.pressure import PressureSolve
from hybridsim.numerics.rollout import GradientMode
from hybridsim.numerics.scenarios import (
    Scenario,
    bluff_body_grid,
    make_scenario,
    periodic_grid,
    taylor_green_velocity,
)
from hybridsim.problems.base import Batch, Comparator, Problem, ProblemError, SplitData, register
from hybridsim.problems.navier_stokes_eval import NSEvaluation
from hybridsim.problems.navier_stokes_flow import CoarseFlow, State
from hybridsim.schemas import CorrectionConfig, FluidSolverConfig, NSConfig

COMPONENTS = ("u", "v", "w")
BLUFF = ("wake", "wake3d")


def _masked_sq_error(pred: State, ref: State, open_: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean squared velocity error over the open faces, all steps and samples (a scalar)."""
    total, count = 0.0, 0.0
    for p, r, m in zip(pred, ref, open_, strict=True):
        total = total + ((p - r) ** 2 * m).sum()
        count = count + m.sum() * (p.numel() // m.numel())
    return total / count


@register
class NavierStokes(NSEvaluation, Problem):
    name = "ns"
    solvers = ("semi_lagrangian", "maccormack")
    corrections = ("none", "resnet", "resnet_paper", "unet")
    couplings = ("after_step", "non")
    needs_network = frozenset({"non"})
    needs_network_reason = "trains a correction"
    schema = NSConfig
    solver_schemas = {"fluid": FluidSolverConfig}
    comparators = (
        # NON: the main model's own correction, trained on single steps from reference states
        Comparator("non", None, "non"),
        Comparator("solver", "none", "after_step", trained=False),  # SRC
    )
    # config keys that do not shape the data (left out of the data hash)
    model_keys = frozenset(
        {
            "project_correction",
            "input_scale",
            "conserve_momentum",
            "train_noise",
            "train_noise_cells",
            "val_steps",
            "eval_steps",
            "eval_long_steps",
            "eval_starts",
        }
    )
    tiny = (
        "problem.resolution=[32,16]",
        "problem.factor=2",
        "problem.warmup=20",
        "problem.n_frames=10",
        "problem.n_frames_test=12",
        "problem.eval_steps=10",
        "problem.eval_long_steps=11",
        "problem.val_steps=4",
        "problem.reynolds_train=[100,800]",
        "problem.reynolds_val=[300]",
        "problem.reynolds_test=[200]",
        "correction.width=[8]",
    )
    cfg: NSConfig

    def __init__(self, cfg: NSConfig) -> None:
        super().__init__(cfg)
        dim = {"wake": 2, "wake3d": 3}.get(cfg.scenario, 2)
        res = list(cfg.resolution)
        if len(res) != dim:
            raise ProblemError(
                f"problem.scenario={cfg.scenario} needs {dim} entries in "
                f"problem.resolution, got {res}"
            )
        if cfg.scenario in BLUFF and (len(cfg.size) != dim or len(cfg.center) != dim):
            raise ProblemError(
                f"problem.size and problem.center need {dim} entries for "
                f"problem.scenario={cfg.scenario}, got {cfg.size}, {cfg.center}"
            )
        if cfg.scenario in BLUFF and cfg.conserve_momentum:
            raise ProblemError(
                f"problem.conserve_momentum=true needs a periodic domain; "
                f"problem.scenario={cfg.scenario} has inflow and walls (set it false)"
            )
        if cfg.scenario not in BLUFF and res[0] != res[1]:
            raise ProblemError(
                f"problem.scenario={cfg.scenario} is square: problem.resolution "
                f"needs equal entries, got {res}"
            )
        self.dim = dim
        self.coarse_grid = self._grid(res)  # validates the obstacle against both grids
        self.fine_grid = self._grid([n * cfg.factor for n in res])

    # ------------------------------------------------------------ geometry
    def _grid(self, resolution: list[int]) -> MACGrid:
        cfg = self.cfg
        try:
            if cfg.scenario in BLUFF:
                return bluff_body_grid(
                    resolution, cfg.size, cfg.center, cfg.radius, cfg.inflow_velocity
                )
            return periodic_grid(resolution[0])
        except ValueError as e:
            raise ProblemError(f"problem=ns: {e}") from None

    @property
    def nu_scale(self) -> float:
        """``nu = nu_scale / Re``: ``U D`` for the wakes, 1 for the periodic flows."""
        cfg = self.cfg
        return cfg.inflow_velocity * 2 * cfg.radius if cfg.scenario in BLUFF else 1.0

    @property
    def velocity_scale(self) -> float:
        return self.cfg.inflow_velocity if self.cfg.scenario in BLUFF else 1.0

    def _scenario(
        self,
        resolution: list[int],
        reynolds: list[float],
        seed: int,
        advection: str,
        dtype: torch.dtype,
    ) -> Scenario:
        cfg = self.cfg
        common = {"dtype": dtype, "cfl_warn": None, "advection": advection}
        if cfg.scenario in BLUFF:
            return make_scenario(
                cfg.scenario,
                resolution=tuple(resolution),
                reynolds=list(reynolds),
                perturbation=cfg.perturbation,
                seed=seed,
                size=tuple(cfg.size),
                center=tuple(cfg.center),
                radius=cfg.radius,
                inflow_velocity=cfg.inflow_velocity,
                dt=cfg.dt,
                **common,
            )
        nu = torch.tensor([self.nu_scale / r for r in reynolds], dtype=dtype)
        params = {"n": resolution[0], "viscosity": nu, "batch": len(reynolds), "dt": cfg.dt}
        if cfg.scenario == "kolmogorov":
            params["seed"] = seed
        return make_scenario(cfg.scenario, **params, **common)

    # ------------------------------------------------------------------ data
    def data_config(self) -> dict[str, Any]:
        return {k: v for k, v in super().data_config().items() if k not in self.model_keys}

    def generate(self, split: str, seed: int) -> SplitData:
        """One reference simulation per Reynolds number of ``split`` (batched), ``factor`` times
        finer than the model's grid, ``warmup`` steps discarded, then frames restricted to the
        coarse grid every ``dt``. Taylor–Green uses the exact solution instead."""
        cfg = self.cfg
        reynolds = {
            "train": cfg.reynolds_train,
            "val": cfg.reynolds_val,
            "test": cfg.reynolds_test,
        }[split]
        n_t = cfg.n_frames_test if split == "test" else cfg.n_frames
        t = (cfg.warmup + np.arange(n_t)) * cfg.dt
        coarse = self.coarse_grid
        frames: list[State] = []
        if cfg.scenario == "taylor_green":
            x, y = coarse.cell_centers(dtype=torch.float64)
            for tk in t:
                vel = [
                    torch.cat(c)
                    for c in zip(
                        *(
                            taylor_green_velocity(
                                coarse, self.nu_scale / r, float(tk), dtype=torch.float64
                            )
                            for r in reynolds
                        ),
                        strict=True,
                    )
                ]
                decay = torch.tensor(
                    [math.exp(-4 * self.nu_scale / r * tk) for r in reynolds], dtype=torch.float64
                ).view(-1, 1, 1)
                p = -0.25 * (torch.cos(2 * x) + torch.cos(2 * y)) * decay
                frames.append((*vel, p))
        else:
            fine = self._scenario(
                [n * cfg.factor for n in cfg.resolution],
                reynolds,
                seed,
                cfg.reference_advection,
                torch.float32,
            )
            state = fine.state
            with torch.no_grad():
                for _ in range(cfg.warmup):
                    state = fine.solver.step(state, fine.dt)
                for k in range(n_t):
                    frames.append(downsample(fine.grid, coarse, state))
                    if k < n_t - 1:
                        state = fine.solver.step(state, fine.dt)
        names = [*COMPONENTS[: self.dim], "p"]
        arrays = {
            name: torch.stack([f[i] for f in frames], 1).float().numpy()
            for i, name in enumerate(names)
        }
        arrays["reynolds"] = np.asarray(reynolds, dtype=np.float64)
        return SplitData(
            arrays=arrays,
            coords={"t": t, "spacing": np.asarray(coarse.spacing)},
            attrs={
                "scenario": cfg.scenario,
                "factor": cfg.factor,
                "viscosity": [self.nu_scale / r for r in reynolds],
            },
        )

    # ----------------------------------------------------------------- model
    def build_model(
        self,
        solver: FluidSolverConfig,
        correction: CorrectionConfig,
        coupling: str,
        train: SplitData,
        gradient: GradientMode | None = None,
    ) -> Hybrid:
        periodic = all(self.coarse_grid.periodic)
        net = build_correction(correction, self.dim + 1, self.dim, self.dim, periodic=periodic)
        log_re = np.log(np.asarray(train.arrays["reynolds"], dtype=np.float64))
        std = float(log_re.std()) if len(log_re) > 1 and log_re.std() > 0 else 1.0
        template = self._scenario(
            list(self.cfg.resolution),
            [self.cfg.reynolds_train[0]],
            0,
            solver.advection,
            torch.float32,
        ).solver
        method = "fft" if periodic else "pcg"
        ps = PressureSolve(
            self.coarse_grid, method=method, rtol=solver.rtol, grad_rtol=solver.grad_rtol
        )
        stepper = CoarseFlow(
            template,
            self.cfg.dt,
            self.nu_scale,
            solver.advection,
            ps,
            self.cfg.project_correction,
            float(log_re.mean()),
            std,
            self.velocity_scale,
            self.cfg.input_scale,
            self.cfg.conserve_momentum,
        )
        return Hybrid(stepper, net, make_coupling(coupling), gradient)

    # -------------------------------------------------------------- training
    def components(self) -> tuple[str, ...]:
        return COMPONENTS[: self.dim]

    def batch(
        self, data: Mapping[str, torch.Tensor], batch_size: int, unroll: int, gen: torch.Generator
    ) -> Batch:
        """Random windows of ``unroll + 1`` consecutive frames (``-1``: the longest possible);
        with ``problem.train_noise`` the input frames' velocities carry Gaussian noise of that
        many times each sample's rms velocity (open faces only; the targets stay clean)."""
        n_sim, n_t = data["u"].shape[:2]
        unroll = n_t - 1 if unroll < 0 or unroll > n_t - 1 else unroll
        dev = data["u"].device
        sim = torch.randint(n_sim, (batch_size,), generator=gen).to(dev)
        start = torch.randint(n_t - unroll, (batch_size,), generator=gen).to(dev)
        batch = self.windows(data, sim, start, unroll)
        if self.cfg.train_noise > 0:
            self._add_noise(batch.inputs, self.cfg.train_noise, gen)
        return batch

    def _add_noise(self, inputs: dict[str, torch.Tensor], level: float, gen: torch.Generator):
        """In place on ``inputs``' velocity windows ``(batch, n + 1, *faces)``: ``+ level *
        rms * noise`` on the open faces, ``rms`` per sample and frame over all components.
        ``noise`` has unit rms; with ``problem.train_noise_cells = c > 1`` it is drawn on a grid
        ``c`` times coarser and interpolated (multilinear) to the faces, so that it perturbs the
        large scales too (white noise, ``c = 1``, hardly touches them)."""
        comps = self.components()
        ref = inputs[comps[0]]
        open_ = self.coarse_grid.consts(ref.dtype, ref.device)["open"]
        total = sum(
            (inputs[c] ** 2 * m).flatten(2).sum(2) for c, m in zip(comps, open_, strict=True)
        )
        rms = torch.sqrt(total / sum(float(m.sum()) for m in open_))
        rms = rms.view(*rms.shape, *([1] * self.dim))
        cells = self.cfg.train_noise_cells
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[self.dim]
        for c, m in zip(comps, open_, strict=True):
            shape = inputs[c].shape
            if cells > 1:
                coarse = [math.ceil((n - 1) / cells) + 1 for n in shape[2:]]
                draw = torch.randn(shape[0] * shape[1], 1, *coarse, generator=gen, dtype=ref.dtype)
                draw = nn.functional.interpolate(
                    draw, size=tuple(shape[2:]), mode=mode, align_corners=True
                ).view(shape)
                draw = draw / draw.pow(2).mean().sqrt()
            else:
                draw = torch.randn(shape, generator=gen, dtype=ref.dtype)
            inputs[c] = inputs[c] + level * rms * draw.to(ref.device) * m

    def windows(self, data, sim: torch.Tensor, start: torch.Tensor, unroll: int) -> Batch:
        idx = start[:, None] + torch.arange(unroll + 1, device=start.device)
        win = {c: data[c][sim[:, None], idx] for c in (*self.components(), "p")}
        return Batch(
            inputs={"reynolds": data["reynolds"][sim], **win},
            targets={c: win[c][:, 1:] for c in self.components()},
        )

    def predict(self, model: Hybrid, batch: Batch, teacher_forcing: bool) -> State:
        """Predicted velocity components ``(batch, n, *face_shape)`` for the window's steps.

        Free rollout from the first frame (SOL), or one step from each reference frame with no
        gradient through the solver (NON)."""
        comps = (*self.components(), "p")
        re = batch.inputs["reynolds"]
        b, n1 = batch.inputs["u"].shape[:2]
        n = n1 - 1
        if teacher_forcing:
            state = tuple(
                batch.inputs[c][:, :-1].reshape(b * n, *batch.inputs[c].shape[2:]) for c in comps
            )
            out = model.step(state, model.stepper.flow(re.repeat_interleave(n)))
            return tuple(o.reshape(b, n, *o.shape[1:]) for o in out[: self.dim])
        state = tuple(batch.inputs[c][:, 0] for c in comps)
        states = model.rollout(state, n, model.stepper.flow(re))
        return tuple(torch.stack([s[i] for s in states], 1) for i in range(self.dim))

    def loss(self, model: Hybrid, batch: Batch) -> torch.Tensor:
        """Mean over steps and samples of the squared velocity error on open faces."""
        pred = self.predict(model, batch, teacher_forcing=model.coupling.teacher_forced)
        ref = tuple(batch.targets[c] for c in self.components())
        open_ = model.stepper.grid.consts(ref[0].dtype, ref[0].device)["open"]
        return _masked_sq_error(pred, ref, open_)

    def validate(self, model: Hybrid, data: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Free rollouts of ``val_steps`` from 4 evenly spaced frames of each simulation (the
        same criterion for SOL and NON); ``loss`` = the training loss on them."""
        n_sim, n_t = data["u"].shape[:2]
        steps = min(self.cfg.val_steps, n_t - 1)
        starts = torch.linspace(0, n_t - 1 - steps, 4).round().long().unique()
        sim = torch.arange(n_sim).repeat_interleave(len(starts))
        start = starts.repeat(n_sim)
        dev = data["u"].device
        batch = self.windows(data, sim.to(dev), start.to(dev), steps)
        with torch.no_grad():
            pred = self.predict(model, batch, teacher_forcing=False)
        ref = tuple(batch.targets[c] for c in self.components())
        open_ = model.stepper.grid.consts(ref[0].dtype, ref[0].device)["open"]
        loss = float(_masked_sq_error(pred, ref, open_))
        norm = float(_masked_sq_error(tuple(torch.zeros_like(r) for r in ref), ref, open_))
        return {
            "loss": loss if math.isfinite(loss) else float("inf"),
            "rel_l2": math.sqrt(loss / norm) if math.isfinite(loss) else float("inf"),
        }
