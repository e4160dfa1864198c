"""Data-parallel training under torchrun on CPU (gloo, 2 processes): the loss trajectory equals
the single-process run with the same global batch, through a SIGTERM and a resume; the
checkpoint loads in one process; LV is refused in one line. Separate processes: slow."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import CT_TINY

from hybridsim.cli import main

CT = [
    *CT_TINY,
    "recipe.steps=20",
    "recipe.batch_size=4",  # the global batch: 2 per process
    "recipe.val_every=2",
    "recipe.log_every=1",
    "recipe.baselines=false",
    "progress=none",
    "evaluate=false",
    "dtype=float64",
]
# float64: the two runs differ only in the order of a sum (two half-batch means averaged by
# the all-reduce against one mean), ~1e-16 per step; measured over 40 steps: 4e-16.
RTOL = 1e-12


def torchrun(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*cmd, "-m", "hybridsim", "train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,
    )


def _train_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train/loss" in r or "val/loss" in r]


@pytest.mark.slow
def test_ddp_matches_one_process_through_a_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    single = tmp_path / "single"
    assert main(["train", *CT, f"hydra.run.dir={single}"]) == 0  # also generates the data
    capsys.readouterr()

    ddp = tmp_path / "ddp"
    proc = torchrun(*CT, f"hydra.run.dir={ddp}", cwd=tmp_path)
    while not (ddp / "checkpoints" / "last.pt").exists() and proc.poll() is None:
        time.sleep(0.02)  # the run is 20 steps long: it checkpoints or it ends
    assert proc.poll() is None, "the run ended before its first checkpoint"
    os.killpg(proc.pid, signal.SIGTERM)  # torchrun and both ranks, as a scheduler would
    _, err = proc.communicate(timeout=120)
    meta = json.loads((ddp / "meta.json").read_text())
    assert meta["status"] == "interrupted", f"the run was not interrupted:\n{err[-2000:]}"
    assert meta["world_size"] == 2 and meta["backend"] == "gloo"
    assert f"continue with: torchrun --nproc_per_node=2 -m hybridsim train resume={ddp}" in err
    stopped_at = torch.load(ddp / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 2 <= stopped_at < 20

    resume = torchrun(f"resume={ddp}", cwd=tmp_path)
    out, err = resume.communicate(timeout=300)
    assert resume.returncode == 0, err[-3000:]
    assert out.count("run directory:") == 1, "rank 0 alone prints and writes"
    assert json.loads((ddp / "meta.json").read_text())["status"] == "completed"

    a, b = _train_rows(ddp), _train_rows(single)
    assert [(r["step"], "val/loss" in r) for r in a] == [(r["step"], "val/loss" in r) for r in b]
    for x, y in zip(a, b, strict=True):
        key = "val/loss" if "val/loss" in x else "train/loss"
        assert x[key] == pytest.approx(y[key], rel=RTOL, abs=0), f"step {x['step']} {key}"
    assert not list(ddp.glob("**/*.tmp")) and not (tmp_path / "outputs").exists()

    # the checkpoint is an ordinary one: the single-process eval loads and scores it
    assert main(["eval", f"run={ddp}"]) == 0, capsys.readouterr().err
    ck = torch.load(ddp / "checkpoints" / "best.pt", weights_only=True)
    single_ck = torch.load(single / "checkpoints" / "best.pt", weights_only=True)
    assert ck["model"].keys() == single_ck["model"].keys(), "no DDP 'module.' prefixes"
    for k, v in ck["model"].items():
        torch.testing.assert_close(v, single_ck["model"][k], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_ddp_refuses_lv_in_one_line(tmp_path):
    proc = torchrun("problem=lv", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    first = err.strip().splitlines()[0]
    assert first.startswith("hybridsim train: error: problem=lv cannot be trained data-parallel")
    assert "single trajectory" in first
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "problem=lv"], "problem=lv cannot be trained data-parallel (2 processes"),
        (
            ["train", "problem=ct", "recipe.batch_size=3"],
            "recipe.batch_size=3 (the global batch) must be divisible by the 2 processes",
        ),
        (
            ["train", "problem=ns", "recipe.polish=lbfgs"],
            "recipe.polish=lbfgs is not data-parallel",
        ),
    ],
)
def test_ddp_bad_input_before_anything(argv, needle, monkeypatch, expect_one_line_error):
    """Under a world of two (as rank 0 of torchrun sees it), every setting that cannot be split
    is refused in one line, before the run directory or the data exist."""
    from hybridsim import parallel

    monkeypatch.setattr(parallel, "_WORLD", parallel.World(rank=0, size=2, sent=True))
    expect_one_line_error(argv, needle)


def test_sweep_under_torchrun_refused(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "-m", "seed=1,2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hybridsim train: error: a sweep (-m) cannot run under torchrun")
    assert len(err.splitlines()) == 1


def test_held_signal_waits_for_its_owner(tmp_path):
    """Inside interrupts.held() (the DDP training loop), a SIGTERM does not abandon rank 0's
    checkpoint write on its own (the other ranks would go on); the loop's owner raises it,
    with check(force=True), where the ranks agreed to stop."""
    from hybridsim import interrupts
    from hybridsim.data import write_text_atomic

    previous = interrupts.install()
    try:
        with pytest.raises(interrupts.Interrupted) as e:
            with interrupts.held():
                signal.raise_signal(signal.SIGTERM)
                write_text_atomic(tmp_path / "last.txt", "complete")
                assert (tmp_path / "last.txt").read_text() == "complete"
                assert interrupts.pending() == signal.SIGTERM
                interrupts.check(force=True)
        assert e.value.signum == signal.SIGTERM and interrupts.pending() is None
    finally:
        interrupts.restore(previous)
