"""The amp / compile options: validated with one line naming the key, applied to the correction
network only (the solver keeps its dtype), training unchanged in what it does."""

import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from hybridsim.config import LVConfig, MLPConfig, ODESolverConfig, RecipeConfig
from hybridsim.nn import ConvNet, GroupedMLP
from hybridsim.nn.accelerate import accelerate, accelerate_model, check
from hybridsim.problems.lotka_volterra import LotkaVolterra
from hybridsim.schemas import ConfigError
from hybridsim.train import fit
from tests.tiny import LV_TINY

RECIPE = RecipeConfig(
    name="t", steps=8, batch_size=8, unroll=[3], val_every=4, log_every=1, polish="none"
)


def _lv(dtype, seed=0):
    problem = LotkaVolterra(LVConfig(t_train=2.0, t_test=3.0))
    train, val = problem.generate("train", 1), problem.generate("val", 2)
    torch.manual_seed(seed)
    corr = MLPConfig(width=[8])
    model = problem.build_model(ODESolverConfig(name="rk4"), corr, "rhs", train)
    cpu = torch.device("cpu")
    model.to(dtype=dtype)
    return problem, model, train.tensors(cpu, dtype), val.tensors(cpu, dtype)


@pytest.mark.parametrize(
    ("amp", "device", "dtype", "key"),
    [
        ("bf17", "cpu", "float32", "amp=bf17 is not valid"),
        ("fp16", "cpu", "float32", "amp=fp16 needs a CUDA device"),
        ("bf16", "cpu", "float64", "amp=bf16 needs dtype=float32"),
    ],
)
def test_bad_combinations_name_the_key(amp, device, dtype, key):
    with pytest.raises(ConfigError, match=key):
        check(amp, device, dtype)


def test_good_combinations_pass():
    check("none", "cpu", "float64")
    check("bf16", "cpu", "float32")
    check("fp16", "cuda", "float32")


@pytest.mark.parametrize("override", ["amp=fp16", "amp=half", "compile=maybe"])
def test_cli_refuses_in_one_line(tmp_path, override):
    out = subprocess.run(
        [sys.executable, "-m", "hybridsim", "train", *LV_TINY, "device=cpu", override],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and override.split("=")[0] in err[0], out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.pt"))


def test_amp_applies_to_the_network_only():
    """Under bf16 the network computes in bf16 (its output differs from float32 by bf16
    rounding) but hands back the caller's dtype; the module's parameters stay float32."""
    torch.manual_seed(0)
    net = GroupedMLP(2, 1, [16, 16], groups=2)
    x = torch.randn(5, 2)
    y32 = net(x)
    accelerate(net, "bf16")
    y16 = net(x)
    assert y16.dtype == torch.float32 and all(p.dtype == torch.float32 for p in net.parameters())
    assert not torch.equal(y16, y32) and torch.allclose(y16, y32, atol=5e-2, rtol=5e-2)
    f = net.scaled(torch.ones(2), torch.ones(2))
    assert f(x).dtype == torch.float32 and torch.allclose(f(x), y16)
    conv = ConvNet(3, 2, [4])
    accelerate(conv, "bf16")
    assert conv(torch.randn(1, 3, 8, 8)).dtype == torch.float32


def test_amp_bf16_trains_lv_and_keeps_the_solver_dtype(tmp_path):
    problem, model, train, val = _lv(torch.float32)
    accelerate_model(model, "bf16")
    before = problem.validate(model, val)["loss"]
    res = fit(problem, model, train, val, replace(RECIPE, steps=30), tmp_path, progress="none")
    assert res.step == 30
    u0 = torch.tensor([[10.0, 10.0]])
    pred = model(u0, torch.linspace(0, 1, 5))
    assert pred.dtype == torch.float32
    assert model.stepper.theta3.dtype == torch.float32
    assert problem.validate(model, val)["loss"] < before


def test_accelerate_model_leaves_names_and_default_alone():
    _, model, _, _ = _lv(torch.float64)
    names = list(model.state_dict())
    assert accelerate_model(model, "none", False) is model
    accelerate_model(model, "bf16", False)
    assert list(model.state_dict()) == names


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside torch._dynamo
def test_compile_trains_lv_to_the_same_loss(tmp_path):
    """compile=true runs the same arithmetic through inductor: the same loss curve to
    float64 rounding (fused kernels may reorder sums)."""
    curves = []
    for i, compiled in enumerate((False, True)):
        problem, model, train, val = _lv(torch.float64)
        accelerate_model(model, "none", compiled)
        fit(problem, model, train, val, RECIPE, tmp_path / str(i), progress="none")
        curves.append(problem.validate(model, val)["loss"])
    assert curves[1] == pytest.approx(curves[0], rel=1e-6)


def test_convnet_channels_last_equals_nchw_to_rounding():
    """The internal NHWC layout changes the summation order only: output and every gradient
    agree with NCHW to float32 rounding, and the caller gets NCHW back."""
    torch.manual_seed(0)
    a = ConvNet(8, 6, [16, 16], channels_last=False)
    b = ConvNet(8, 6, [16, 16], channels_last=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 8, 20, 20)
    ya, yb = a(x), b(x)
    assert yb.is_contiguous() and yb.shape == ya.shape
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-6)
    (ya.square().sum()).backward()
    (yb.square().sum()).backward()
    for (k, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-5, msg=k)


def test_cli_train_with_amp_bf16_end_to_end(tmp_path):
    """The option goes from the command line to the trainer: with amp=bf16 the run completes,
    records it, and its weights differ from the same run's without it (bf16 arithmetic), the
    learned physical constant still float32."""
    weights = {}
    for amp in ("none", "bf16"):
        out = subprocess.run(
            [sys.executable, "-m", "hybridsim", "train", *LV_TINY, "device=cpu"]
            + ["dtype=float32", "evaluate=false", f"amp={amp}", f"hydra.run.dir=run-{amp}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        ck = torch.load(tmp_path / f"run-{amp}" / "checkpoints" / "last.pt", weights_only=False)
        weights[amp] = ck["model"]
        assert f"amp: {amp}" in (tmp_path / f"run-{amp}" / "config_resolved.yaml").read_text()
    assert weights["bf16"]["theta3"].dtype == torch.float32
    assert weights["none"].keys() == weights["bf16"].keys()
    assert any(not torch.equal(weights["none"][k], weights["bf16"][k]) for k in weights["none"])
