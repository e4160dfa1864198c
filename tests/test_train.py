"""The training loop: resume is bit for bit, divergence stops cleanly, the loss goes down."""

import json
import math
from dataclasses import replace

import pytest
import torch

from hybridsim.config import LVConfig, MLPConfig, ODESolverConfig, RecipeConfig
from hybridsim.problems.lotka_volterra import LotkaVolterra
from hybridsim.train import TrainingDiverged, fit, load_checkpoint, lr_factor, unroll_at

CFG = LVConfig(t_train=2.0, t_test=3.0)
RECIPE = RecipeConfig(
    name="t",
    steps=6,
    batch_size=8,
    unroll=[3, 5],
    val_every=2,
    log_every=1,
    polish="lbfgs",
    polish_steps=4,
)


def _setup(seed=0):
    problem = LotkaVolterra(CFG)
    train, val = problem.generate("train", 1), problem.generate("val", 2)
    torch.manual_seed(seed)
    corr = MLPConfig(width=[8])
    model = problem.build_model(ODESolverConfig(name="rk4"), corr, "rhs", train)
    cpu = torch.device("cpu")
    return problem, model, train.tensors(cpu, torch.float32), val.tensors(cpu, torch.float32)


def _train(run_dir, interrupt_at=None):
    problem, model, train, val = _setup()
    if interrupt_at is not None:
        calls = {"n": 0}
        loss = problem.loss

        def counting(*a, **k):
            calls["n"] += torch.is_grad_enabled()
            if calls["n"] == interrupt_at:
                raise KeyboardInterrupt
            return loss(*a, **k)

        problem.loss = counting
        with pytest.raises(KeyboardInterrupt):
            fit(problem, model, train, val, RECIPE, run_dir, progress="none")
        problem.loss = loss
        _, model, _, _ = _setup(seed=123)  # a fresh process: different init, restored from disk
    fit(problem, model, train, val, RECIPE, run_dir, progress="none")
    return model


@pytest.mark.parametrize("interrupt_at", [4, 9], ids=["during-adam", "during-lbfgs"])
def test_resume_is_bit_for_bit(tmp_path, interrupt_at):
    whole = _train(tmp_path / "a")
    resumed = _train(tmp_path / "b", interrupt_at=interrupt_at)
    for (k, a), (_, b) in zip(
        whole.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), f"{k} differs after resume"
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["done"]


def test_loss_decreases(tmp_path):
    problem, model, train, val = _setup()
    before = problem.validate(model, val)["loss"]
    recipe = replace(RECIPE, steps=60, polish="none", val_every=30, unroll=[5])
    fit(problem, model, train, val, recipe, tmp_path, progress="none")
    after = problem.validate(model, val)["loss"]
    assert after < 0.5 * before, f"validation loss {before:.3e} -> {after:.3e}"


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    problem, model, train, val = _setup()
    loss = problem.loss
    calls = {"n": 0}

    def exploding(*a, **k):
        calls["n"] += torch.is_grad_enabled()  # count training steps, not validation
        value = loss(*a, **k)
        return value * float("nan") if calls["n"] > 3 else value

    problem.loss = exploding
    with pytest.raises(
        TrainingDiverged, match="diverged at step 3.*non-finite loss.*last good checkpoint"
    ):
        fit(problem, model, train, val, RECIPE, tmp_path, progress="none")
    ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ck["step"] == 2 and not ck["done"]
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_schedules_and_curriculum():
    r = replace(RECIPE, steps=100, unroll=[10, 20, -1])
    assert [unroll_at(r, s) for s in (0, 33, 34, 66, 67, 99)] == [10, 10, 20, 20, -1, -1]
    cos = lr_factor(replace(r, lr_schedule="cosine", lr_min_factor=0.0))
    assert cos(0) == 1.0 and cos(100) == pytest.approx(0.0) and cos(50) == pytest.approx(0.5)
    inv = lr_factor(replace(r, lr_schedule="inverse_step", lr_decay_every=500))
    assert inv(499) == 1.0 and inv(500) == 0.5 and inv(1000) == pytest.approx(1 / 3)
    assert math.isclose(lr_factor(replace(r, lr_schedule="constant"))(77), 1.0)
