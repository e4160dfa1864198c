"""problem=ct through the command line: generate → train a few steps → eval on a tiny grid, and
every bad CT input giving one line on stderr and a non-zero exit (in-process)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import CT_TINY

import hybridsim
from hybridsim.cli import main

# The subprocess runs the checkout under test, not whichever hybridsim is installed.
SOURCE = str(Path(hybridsim.__file__).resolve().parents[1])
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (SOURCE, os.environ.get("PYTHONPATH")) if p),
}

TINY = CT_TINY
TRAIN = [
    "recipe.steps=3",
    "recipe.batch_size=2",
    "recipe.val_every=2",
    "recipe.log_every=1",
    "progress=plain",
    "recipe.baselines=true",  # the comparators too (learned λ; learned primal-dual)
]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "hybridsim", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert proc.returncode == 0, f"hybridsim {' '.join(args)} failed:\n{proc.stderr}"
    return proc


BAD = [
    (["train", "problem=ct", "problem.n_angles=0"], "problem.n_angles"),
    (["train", "problem=ct", "problem.n_det=10"], "detector is too small"),
    (["train", "problem=ct", "problem.noise=-0.05"], "problem.noise"),
    (["train", "problem=ct", "problem.forward_model=magic"], "problem.forward_model"),
    (["train", "problem=ct", "solver=rk4"], "solver=rk4 does not apply to problem=ct"),
    (["train", "problem=lv", "solver=gd"], "solver=gd does not apply to problem=lv"),
    (["train", "problem=ct", "correction=mlp"], "correction=mlp does not apply"),
    (["train", "problem=ct", "solver=fbp"], "solver=fbp has no iterations"),
    (["train", "problem=ct", "solver.lam=-1"], "solver.lam"),
    (["train", "problem=ct", "solver.cutoff=0"], "solver.cutoff"),
    (["train", "problem=ct", "solver.filter=box"], "solver.filter"),
    (["train", "problem=ct", "coupling=rhs"], "coupling=rhs does not apply"),
    (["generate", "problem=ct", "problem.size=0"], "problem.size"),
    (["train", "problem=ct", "problem.train_data=disk"], "problem.train_data"),
    (["train", "problem=ct", "problem.tv_lam_grid=[]"], "problem.tv_lam_grid"),
    (["train", "problem=ct", "problem.tv_lam_grid=[1e-3,-1]"], "problem.tv_lam_grid"),
    (["train", "problem=ct", "problem.tv_lam=nan"], "problem.tv_lam"),
    (["train", "problem=ct", "problem.primal_dual_activation=x"], "problem.primal_dual_activation"),
    (["train", "problem=ct", "coupling=primal_dual", "correction=none"], "coupling=primal_dual"),
    (["train", "problem=ct", "coupling=primal_dual", "solver=fbp"], "solver=fbp"),
    (["train", "problem=ct", "problem.share_weights=maybe"], "share_weights"),
]


@pytest.mark.slow
def test_primal_dual_train_eval_on_fresh_phantoms(tmp_path, monkeypatch, capsys):
    """coupling=primal_dual from the command line: the data file holds no training split (fresh
    phantoms), the eval table has FBP, TV (λ chosen on validation), the solver alone, learned
    primal-dual (hybrid) and learned λ."""
    import h5py

    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, *TRAIN, "coupling=primal_dual", "problem.memory=2"]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    result = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert {"fbp", "tv", "solver", "hybrid", "learned_lambda"} <= set(result["table"])
    tuned = result["tuned_on_validation"]
    scores = tuned["tv_val_psnr"]  # the grid, and the values the search refined to
    assert {f"{lam:g}" for lam in [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2]} <= set(scores)
    assert scores[f"{tuned['tv_lam']:g}"] == max(scores.values())
    assert result["settings"]["tv_lam"] == tuned["tv_lam"]
    (data,) = (tmp_path / "data").glob("ct-*.h5")
    with h5py.File(data) as f:
        assert "image" not in f["train"] and f["train"].attrs["n_samples"] == 0
        assert f["val"]["image"].shape[0] == 2


@pytest.mark.parametrize("argv,needle", BAD, ids=[" ".join(a[1:]) for a, _ in BAD])
def test_bad_ct_input_one_line(argv, needle, expect_one_line_error):
    expect_one_line_error(argv, needle)
