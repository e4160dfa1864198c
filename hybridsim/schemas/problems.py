"""The problems' schemas: ``problem=lv``, ``problem=ct`` and ``problem=ns`` (with the per-scenario
defaults of the last)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hybridsim.schemas.checks import ConfigError, _non_negative, _one_of, _positive


@dataclass
class LVConfig:
    """Lotka–Volterra: dx/dt = αx − βxy, dy/dt = γxy − δy (lecture defaults)."""

    name: str = "lv"
    alpha: float = 1.1
    beta: float = 0.4
    gamma: float = 0.1
    delta: float = 0.4
    x0: float = 10.0
    y0: float = 10.0
    # When set, [x_min, x_max, y_min, y_max]: initial conditions drawn uniformly per trajectory.
    ic_box: list[float] | None = None
    n_train: int = 1
    n_val: int = 1
    n_test: int = 1
    t_train: float = 20.0
    t_test: float = 40.0
    dt_obs: float = 0.1
    noise: float = 0.01
    seed_train: int = 1
    seed_val: int = 2
    seed_test: int = 3
    # Model: θ₃ (the predator death rate seen by the UDE) is learned from this starting value.
    theta3_init: float = 0.5
    learn_theta3: bool = True
    # NN₁ = x·g₁(x, y), NN₂ = y·g₂(x, y): the UDE's networks learn per-capita rates, so a
    # population at zero stays at zero (Kolmogorov form); false: NN₁, NN₂ are the terms
    # themselves (Rackauckas et al.). The black box is never constrained.
    per_capita: bool = True
    val_window: int = 20  # validation loss: every window of this many intervals
    # Equation discovery on the learned right-hand side (polynomial library of this degree).
    # simulate: best-subset + STLSQ-path candidates validated by simulation and BIC;
    # stlsq: STLSQ over a threshold scan alone (for comparison).
    discovery: str = "simulate"
    library_degree: int = 3
    max_terms: int = 4  # best-subset candidates: up to this many terms per equation
    threshold: float = 0.05  # STLSQ threshold (the scan covers 0.25x-4x of it)

    def __post_init__(self) -> None:
        p = "problem"
        _positive(p, t_train=self.t_train, t_test=self.t_test, dt_obs=self.dt_obs)
        _positive(p, n_train=self.n_train, n_val=self.n_val, n_test=self.n_test)
        _positive(p, x0=self.x0, y0=self.y0, library_degree=self.library_degree)
        _positive(p, max_terms=self.max_terms)
        _one_of("problem.discovery", self.discovery, ("simulate", "stlsq"))
        _positive(p, val_window=self.val_window)
        _non_negative(p, noise=self.noise, threshold=self.threshold, theta3_init=self.theta3_init)
        _non_negative(p, alpha=self.alpha, beta=self.beta, gamma=self.gamma, delta=self.delta)
        if self.t_test < self.t_train:
            raise ConfigError(
                f"problem.t_test={self.t_test} must be >= problem.t_train={self.t_train}"
            )
        if self.t_train < 2 * self.dt_obs:
            raise ConfigError("problem.t_train must span at least two sampling intervals dt_obs")
        if self.ic_box is not None:
            box = self.ic_box
            if len(box) != 4 or not (0 < box[0] <= box[1] and 0 < box[2] <= box[3]):
                raise ConfigError(
                    f"problem.ic_box must be [x_min, x_max, y_min, y_max] with 0 < min <= max, "
                    f"got {list(box)}"
                )


@dataclass
class CTConfig:
    """X-ray CT, learned gradient descent (Adler & Öktem 2017): ``size``² images of random
    ellipses, parallel beam, ``n_angles`` in [0, π), operator normalised to norm 1.

    Forward models: ``linear`` (b = F a + noise·mean|F a|·N(0,1)) or ``beer_lambert``
    (b ~ Poisson(i0·exp(−mu·F a)), F normalised). Evaluation data (val/test) are simulated on a
    ``upsample_eval``-times finer grid (no inverse crime); training data on ``upsample_train``.
    """

    name: str = "ct"
    size: int = 64
    n_angles: int = 30
    n_det: int | None = None  # None: 2 ceil(size/√2) + 1 bins spanning the image diagonal
    det_spacing: float | None = None  # None: the default spacing (about one pixel)
    forward_model: str = "linear"  # linear | beer_lambert
    noise: float = 0.05
    i0: float = 1.0e4
    mu: float = 1.0
    n_ellipses: float = 100.0  # Poisson mean of ellipses per random phantom
    # fresh: new phantoms for every training batch (the paper); stored: n_train stored ones
    train_data: str = "fresh"
    n_train: int = 400
    n_val: int = 16
    n_test: int = 32
    upsample_train: int = 1
    upsample_eval: int = 2
    seed_train: int = 1
    seed_val: int = 2
    seed_test: int = 3
    # Model (not part of the data): learned gradient descent.
    memory: int = 5
    share_weights: bool | None = None  # None: the coupling's own (update: shared; primal_dual: not)
    primal_dual_activation: str = "prelu"  # coupling primal_dual: the networks' activation
    lambda_init: float = 1.0e-3  # starting λ of the λ-learning coupling when solver.lam = 0
    lambda_per_iteration: bool = False
    # Classical TV baseline at evaluation (FISTA, Huber TV, nonnegative, from FBP).
    tv_lam: float | None = None  # None: the best of tv_lam_grid on the validation split
    tv_lam_grid: list[float] = field(
        default_factory=lambda: [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2]
    )
    tv_eps: float = 1.0e-2
    tv_iters: int = 300

    def __post_init__(self) -> None:

        p = "problem"
        _one_of("problem.forward_model", self.forward_model, ("linear", "beer_lambert"))
        _one_of("problem.train_data", self.train_data, ("fresh", "stored"))
        _one_of(
            "problem.primal_dual_activation",
            self.primal_dual_activation,
            ("relu", "prelu", "tanh", "gelu", "silu"),
        )
        _positive(p, size=self.size, n_angles=self.n_angles, i0=self.i0, mu=self.mu)
        _positive(p, n_train=self.n_train, n_val=self.n_val, n_test=self.n_test)
        _positive(p, upsample_train=self.upsample_train, upsample_eval=self.upsample_eval)
        _positive(p, tv_eps=self.tv_eps, tv_iters=self.tv_iters, lambda_init=self.lambda_init)
        _non_negative(p, noise=self.noise, n_ellipses=self.n_ellipses, memory=self.memory)
        if self.tv_lam is not None:
            _non_negative(p, tv_lam=self.tv_lam)
        if not self.tv_lam_grid:
            raise ConfigError("problem.tv_lam_grid must list at least one λ (or set tv_lam)")
        for lam in self.tv_lam_grid:
            if not lam >= 0:
                raise ConfigError(f"problem.tv_lam_grid entries must be >= 0, got {lam}")
        if self.size < 8:
            raise ConfigError(f"problem.size must be >= 8 pixels, got {self.size}")
        if self.n_det is not None:
            _positive(p, n_det=self.n_det)
        if self.det_spacing is not None:
            _positive(p, det_spacing=self.det_spacing)
        from hybridsim.numerics.radon import default_detector

        diagonal = math.hypot(self.size, self.size)
        default_n, default_spacing = default_detector(self.size, self.size)
        n_det = self.n_det or default_n
        spacing = self.det_spacing or default_spacing
        if n_det * spacing < diagonal * (1 - 1e-9):
            raise ConfigError(
                f"the detector is too small for the image: n_det·det_spacing = "
                f"{n_det * spacing:.4g} < image diagonal {diagonal:.4g} pixels; use "
                f"problem.n_det >= {math.ceil(diagonal / spacing)} (or null for the default)"
            )


# ------------------------------------------------------------------- problem=ns schemas
NS_SCENARIOS = ("wake", "wake3d", "taylor_green", "kolmogorov")
NS_INPUT_SCALES = ("fixed", "rms", "rms2")
# The one source of truth for the settings that depend on problem.scenario: conf/problem/ns.yaml
# reads every key below through the ``ns_scenario`` resolver (``${ns_scenario:${problem.
# scenario},resolution}``), and NSConfig's defaults are the wake's row. An explicit override
# (``problem.dt=0.05``) replaces the interpolation, so a user's setting always wins. Why each
# value: docs/ns.md, "Scenarios".
_SCENARIO_COMMON = {"eval_steps": 100, "eval_long_steps": 500, "eval_starts": 2}
NS_SCENARIO_DEFAULTS: dict[str, dict[str, Any]] = {
    "wake": {
        "resolution": [64, 32],
        "factor": 4,
        "size": [200.0, 100.0],
        "center": [50.0, 50.0],
        "dt": 1.0,
        "reynolds_train": [100.0, 400.0, 1600.0],
        "reynolds_val": [800.0],
        "reynolds_test": [200.0, 1200.0],
        "warmup": 400,
        "n_frames": 120,
        "n_frames_test": 530,
        "val_steps": 16,
        "input_scale": "fixed",
        "conserve_momentum": False,
        "train_noise": 0.0,
        "train_noise_cells": 1,
        "recipe": {"steps": 1000, "unroll": [4, 8]},
        "correction": {"width": [32, 32, 32]},
        **_SCENARIO_COMMON,
    },
    "wake3d": {
        "resolution": [32, 16, 16],
        "factor": 2,
        "size": [200.0, 100.0, 100.0],
        "center": [50.0, 50.0, 50.0],
        "dt": 1.0,
        "reynolds_train": [100.0, 400.0, 1600.0],
        "reynolds_val": [800.0],
        "reynolds_test": [200.0, 1200.0],
        "warmup": 40,
        "n_frames": 160,
        "n_frames_test": 530,
        "val_steps": 16,
        "input_scale": "fixed",
        "conserve_momentum": False,
        "train_noise": 0.02,
        "train_noise_cells": 4,
        "recipe": {"steps": 300, "unroll": [4, 8]},
        "correction": {"width": [16, 16]},
        **_SCENARIO_COMMON,
    },
    "taylor_green": {
        "resolution": [32, 32],
        "factor": 1,
        "size": [6.283185307179586, 6.283185307179586],
        "center": [3.141592653589793, 3.141592653589793],
        "dt": 0.1,
        "reynolds_train": [5.0, 20.0],
        "reynolds_val": [10.0],
        "reynolds_test": [8.0, 15.0],
        "warmup": 0,
        "n_frames": 120,
        "n_frames_test": 530,
        "val_steps": 16,
        "input_scale": "rms2",
        "conserve_momentum": True,
        "train_noise": 0.0,
        "train_noise_cells": 1,
        "recipe": {"steps": 300, "unroll": [4, 8]},
        "correction": {"width": [32, 32, 32]},
        **_SCENARIO_COMMON,
    },
    "kolmogorov": {
        "resolution": [32, 32],
        "factor": 4,
        "size": [6.283185307179586, 6.283185307179586],
        "center": [3.141592653589793, 3.141592653589793],
        "dt": 0.05,
        "reynolds_train": [50.0, 200.0],
        "reynolds_val": [100.0],
        "reynolds_test": [80.0, 150.0],
        "warmup": 400,
        "n_frames": 120,
        "n_frames_test": 530,
        "val_steps": 100,
        "input_scale": "fixed",
        "conserve_momentum": True,
        "train_noise": 0.0,
        "train_noise_cells": 1,
        "recipe": {"steps": 400, "unroll": [4, 8, 16, 32]},
        "correction": {"width": [32, 32, 32]},
        **_SCENARIO_COMMON,
    },
}


def ns_scenario_default(scenario: str, key: str) -> Any:
    """The ``ns_scenario`` resolver: the default of ``problem.<key>`` (or of ``recipe.steps``,
    ``correction.width``: a dotted key) for ``scenario``."""
    _one_of("problem.scenario", scenario, NS_SCENARIOS)
    node: Any = NS_SCENARIO_DEFAULTS[scenario]
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{key} has no per-scenario default for problem.scenario={scenario}")
        node = node[part]
    return list(node) if isinstance(node, list) else node


def _wake(key: str) -> Any:
    value = ns_scenario_default("wake", key)
    return (lambda: list(value)) if isinstance(value, list) else value


@dataclass
class NSConfig:
    """Navier–Stokes solver-in-the-loop (Um et al., NeurIPS 2020): coarse solver + correction
    trained against a reference ``factor`` times finer, downsampled to the coarse grid.

    Scenarios: ``wake`` (2D cylinder, the paper's case), ``wake3d`` (sphere), ``taylor_green``
    (exact reference), ``kolmogorov`` (periodic forced flow). Reynolds numbers set the viscosity
    (wake: ``nu = U D / Re``; periodic: ``nu = 1 / Re``) and are a network input. Defaults here
    are the wake's, except ``eval_long_steps`` (None: a run saved before it existed gets the
    longest its test frames allow); ``conf/problem/ns.yaml`` takes every scenario's from
    ``NS_SCENARIO_DEFAULTS``.
    """

    name: str = "ns"
    scenario: str = "wake"
    resolution: list[int] = field(default_factory=_wake("resolution"))  # coarse (nx, ny[, nz])
    factor: int = _wake("factor")  # reference resolution = factor * resolution
    size: list[float] = field(default_factory=_wake("size"))  # wake domain
    center: list[float] = field(default_factory=_wake("center"))  # obstacle centre
    radius: float = 10.0
    inflow_velocity: float = 1.0
    perturbation: float = 0.1
    dt: float = _wake("dt")
    reynolds_train: list[float] = field(default_factory=_wake("reynolds_train"))
    reynolds_val: list[float] = field(default_factory=_wake("reynolds_val"))
    reynolds_test: list[float] = field(default_factory=_wake("reynolds_test"))
    warmup: int = _wake("warmup")  # reference steps before the first recorded frame
    n_frames: int = _wake("n_frames")  # frames per simulation (train, val)
    n_frames_test: int = _wake("n_frames_test")  # per test simulation (>= eval_long_steps + 1)
    reference_advection: str = "semi_lagrangian"
    seed_train: int = 1
    seed_val: int = 2
    seed_test: int = 3
    # Model and evaluation only (not part of the data):
    project_correction: bool = False  # re-project the corrected velocity (off: Um et al.)
    # Network input/output scale: ``fixed`` (U for the wakes, 1 for the periodic flows),
    # ``rms`` (inputs / each sample's rms velocity s, output * s) or ``rms2`` (output * s^2/U:
    # the correction fades with a decaying flow like the advection error it makes up for).
    input_scale: str = _wake("input_scale")
    # Periodic domains only: the corrected step keeps the exact mean-momentum balance
    # <u>_{t+1} = <u>_t (1 - drag dt) + dt <f> (semi-Lagrangian advection does not).
    conserve_momentum: bool = _wake("conserve_momentum")
    # Training only: Gaussian noise, this many times each sample's rms velocity, added to the
    # input frames of every training window (targets stay clean), so the correction learns to
    # pull a perturbed state back to the reference (0: off).
    train_noise: float = _wake("train_noise")
    # the noise's correlation length in coarse cells (drawn that much coarser, interpolated);
    # 1: white noise per face
    train_noise_cells: int = _wake("train_noise_cells")
    val_steps: int = _wake("val_steps")
    eval_steps: int = _wake("eval_steps")  # the headline rollout (mean error over its steps)
    # the long rollout (finite? error at its end); None (a run saved before this setting
    # existed): the longest its test frames allow, up to 500
    eval_long_steps: int | None = None
    eval_starts: int = _wake("eval_starts")

    def __post_init__(self) -> None:
        p = "problem"
        if self.eval_long_steps is None:
            self.eval_long_steps = max(self.eval_steps, min(500, self.n_frames_test - 1))
        _one_of("problem.scenario", self.scenario, NS_SCENARIOS)
        _one_of("problem.input_scale", self.input_scale, NS_INPUT_SCALES)
        _one_of(
            "problem.reference_advection",
            self.reference_advection,
            ("semi_lagrangian", "maccormack"),
        )
        _positive(
            p,
            factor=self.factor,
            radius=self.radius,
            dt=self.dt,
            n_frames=self.n_frames,
            n_frames_test=self.n_frames_test,
            val_steps=self.val_steps,
            eval_steps=self.eval_steps,
            eval_long_steps=self.eval_long_steps,
            eval_starts=self.eval_starts,
            inflow_velocity=self.inflow_velocity,
            train_noise_cells=self.train_noise_cells,
        )
        _non_negative(
            p, warmup=self.warmup, perturbation=self.perturbation, train_noise=self.train_noise
        )
        for n in self.resolution:
            if n < 2:
                raise ConfigError(f"problem.resolution entries must be >= 2, got {self.resolution}")
        for s in self.size:
            _positive(p, size=s)
        for key in ("reynolds_train", "reynolds_val", "reynolds_test"):
            values = getattr(self, key)
            if not values:
                raise ConfigError(f"problem.{key} must list at least one Reynolds number")
            for r in values:
                _positive(p, **{key: r})
        if self.n_frames < 2:
            raise ConfigError(f"problem.n_frames must be >= 2, got {self.n_frames}")
        if self.eval_long_steps < self.eval_steps:
            raise ConfigError(
                f"problem.eval_long_steps={self.eval_long_steps} must be >= problem.eval_steps "
                f"= {self.eval_steps}"
            )
        if self.n_frames_test < self.eval_long_steps + 1:
            raise ConfigError(
                f"problem.n_frames_test={self.n_frames_test} must be >= "
                f"problem.eval_long_steps + 1 = {self.eval_long_steps + 1}"
            )
