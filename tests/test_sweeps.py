"""Sweeps: a sweep launched again in the same directory skips completed jobs, resumes
interrupted ones from last.pt and reruns failed ones; the Optuna sweeper; submitit's local
executor. In-process (Hydra's basic launcher) except where separate processes are the point."""

import json
import signal
from pathlib import Path

import pytest
import torch
import yaml
from tiny import LV_TINY

from hybridsim import interrupts, train
from hybridsim.cli import main
from hybridsim.problems.lotka_volterra import LotkaVolterra

TINY = LV_TINY


def _train_steps(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "train/loss" in r]


def test_sweep_run_again_skips_resumes_and_reruns(tmp_path, monkeypatch, capsys):
    """Three jobs: job 0 fails at step 3 (a RuntimeError in its loss), job 1 is stopped by
    SIGTERM at step 5 (the sweep stops there; job 2 never starts). The same command again reruns
    job 0 from the start (its failed attempt kept in .attempts/1), resumes job 1 from step 4 and
    starts job 2; once more, it skips all three and changes nothing."""
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    argv = ["train", "-m", *TINY, "evaluate=false", "seed=0,1,2", f"hydra.sweep.dir={sweep}"]
    loss, calls = LotkaVolterra.loss, {"n": 0}

    def failing_loss(self, model, batch):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 3:  # job 0, step 3
                raise RuntimeError("a transient failure")
        return loss(self, model, batch)

    checks = {"n": 0}

    def sigterm_in_job_1() -> None:  # job 0 checks twice (steps 1-2); job 1: steps 1-5
        checks["n"] += 1
        if checks["n"] == 2 + 5:
            raise interrupts.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(LotkaVolterra, "loss", failing_loss)
    monkeypatch.setattr(train, "check_interrupt", sigterm_in_job_1)
    assert main(argv) == 143
    err = capsys.readouterr().err
    assert "job 0 failed: a transient failure" in err and "interrupted (SIGTERM)" in err
    meta = {j: json.loads((sweep / j / "meta.json").read_text()) for j in ("0", "1")}
    assert meta["0"]["status"] == "failed" and meta["1"]["status"] == "interrupted"
    assert not (sweep / "2").exists()

    monkeypatch.setattr(LotkaVolterra, "loss", loss)
    monkeypatch.setattr(train, "check_interrupt", lambda: None)
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"sweep {sweep}: 3 of 3 jobs done (1 resumed, 1 rerun)" in out
    assert "sweep job 0: rerun (it had failed" in out
    assert "sweep job 1: resumed from step 4" in out
    for j in ("0", "1", "2"):
        assert _train_steps(sweep / j) == [1, 2, 3, 4, 5, 6], f"job {j}"
    attempt = json.loads((sweep / "0" / "meta.json").read_text())["attempt"]
    assert attempt["action"] == "rerun" and attempt["previous_status"] == "failed"
    assert "a transient failure" in attempt["previous_error"]
    old = sweep / "0" / ".attempts" / "1"
    assert json.loads((old / "meta.json").read_text())["status"] == "failed"
    assert _train_steps(old) == [1, 2] and "a transient failure" in (old / "train.log").read_text()
    assert "a transient failure" not in (sweep / "0" / "train.log").read_text()
    resumed = json.loads((sweep / "1" / "meta.json").read_text())["attempt"]
    assert resumed == {"action": "resumed", "previous_status": "interrupted", "from_step": 4}
    assert json.loads((sweep / "2" / "meta.json").read_text())["attempt"] == {"action": "new"}

    before = {p: p.read_bytes() for p in sweep.glob("*/*") if p.is_file()}
    before.update({p: p.read_bytes() for p in sweep.glob("*/checkpoints/*.pt")})
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"sweep {sweep}: 3 of 3 jobs done (3 skipped (completed before))" in out
    for path, data in before.items():
        if path.suffix != ".log":
            assert path.read_bytes() == data, f"{path} changed"

    # the report finds the three runs, not the attempt set aside
    from hybridsim.report.runs import find_runs

    assert [p.name for p in find_runs(sweep)] == ["0", "1", "2"]


def test_sweep_run_again_with_other_settings_fails_each_job(tmp_path, monkeypatch, capsys):
    """The same sweep directory with a changed setting: every job refuses (its run is another
    one), naming the key; nothing is changed."""
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    argv = ["train", "-m", *TINY, "recipe.steps=2", "evaluate=false", "seed=0,1"]
    assert main([*argv, f"hydra.sweep.dir={sweep}"]) == 0
    capsys.readouterr()
    metrics = (sweep / "0" / "metrics.jsonl").read_bytes()
    assert main([*argv, "recipe.lr=0.1", f"hydra.sweep.dir={sweep}"]) == 1
    err = capsys.readouterr().err
    assert "2 jobs, 0 done, 2 failed" in err and "recipe.lr=0.1 would change what the run is" in err
    assert (sweep / "0" / "metrics.jsonl").read_bytes() == metrics
    assert (
        yaml.safe_load((sweep / "0" / "config_resolved.yaml").read_text())["recipe"]["lr"] == 0.005
    )


def test_optuna_search_with_a_failed_trial(tmp_path, monkeypatch, capsys):
    """+sweep=lv_optuna, three tiny trials, the second failing: each trial in its own run
    directory with its sampled settings; the failed one is told +inf and the search goes on;
    the best value is the lowest objective; `hybridsim report` lists the trials, best first."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")  # .[sweep]; CI installs it
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "search"
    loss, calls = LotkaVolterra.loss, {"n": 0}

    def second_trial_fails(self, model, batch):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 5:  # trial 1, step 1 (trial 0 took 4 steps)
                raise RuntimeError("trial broke")
        return loss(self, model, batch)

    monkeypatch.setattr(LotkaVolterra, "loss", second_trial_fails)
    # Not TINY's correction.width and recipe.unroll: given on the command line, a key is fixed.
    tiny = [a for a in TINY if not a.startswith(("correction.width", "recipe.unroll"))]
    argv = ["train", "-m", "+sweep=lv_optuna", "hydra.sweeper.n_trials=3", *tiny]
    argv += ["recipe.steps=4", "evaluate=false", f"hydra.sweep.dir={sweep}"]
    assert main(argv) == 1  # a job failed: the summary says so
    err = capsys.readouterr().err
    assert "3 jobs, 2 done, 1 failed" in err and "job 1 failed" in err
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    objective = {}
    for j in ("0", "2"):
        meta = json.loads((sweep / j / "meta.json").read_text())
        objective[j] = meta["fits"]["hybrid"]["best_val_loss"]
        overrides = yaml.safe_load((sweep / j / ".hydra" / "overrides.yaml").read_text())
        assert any(o.startswith("recipe.lr=") for o in overrides)
        assert any(o.startswith("correction.width=[") for o in overrides)
    assert result["best_value"] == pytest.approx(min(objective.values()), rel=1e-12)
    assert set(result["best_params"]) == {"recipe.lr", "correction.width", "recipe.unroll"}
    assert 1e-3 <= result["best_params"]["recipe.lr"] <= 3e-2

    assert main(["report", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "## Optuna search" in out
    table = [ln for ln in out.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert [ln.split(" | ")[0][2:] for ln in table][-1] == "1" and "failed" in table[-1]


@pytest.mark.parametrize("name,problem", [("lv", "lv"), ("ct", "ct"), ("ns", "ns")])
def test_optuna_examples_compose(name, problem, capsys):
    """Each problem's search composes, and its search space parses into Optuna distributions."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    assert main(["train", f"+sweep={name}_optuna", "--cfg", "all"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["problem"]["name"] == problem
    sweeper = cfg["hydra"]["sweeper"]
    assert sweeper["direction"] == "minimize" and "OptunaSweeper" in sweeper["_target_"]
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper["params"].items()])
    assert {"recipe.lr", "correction.width", "recipe.unroll"} == set(space) and not fixed
    assert space["recipe.lr"].__class__.__name__ == "LogUniformDistribution"
    for choice in space["correction.width"].choices:
        assert yaml.safe_load(choice) and all(w > 0 for w in yaml.safe_load(choice))


@pytest.mark.slow
def test_submitit_local_jobs_in_their_own_processes(tmp_path):
    """hydra/launcher=submitit_local (what hydra/launcher=slurm does on a cluster, here through
    submitit's local executor): two jobs in separate processes, each in its own run directory,
    the summary read from disk (skipping on a second launch is the basic launcher's test)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import os
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    argv = [sys.executable, "-m", "hybridsim", "train", "-m", "hydra/launcher=submitit_local"]
    argv += ["hydra.launcher.timeout_min=5", *TINY, "evaluate=false", "seed=0,1"]
    argv += [f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"sweep {sweep}: 2 of 2 jobs done" in proc.stdout
    metas = [json.loads((sweep / j / "meta.json").read_text()) for j in ("0", "1")]
    pids = {m["pid"] for m in metas}
    assert len(pids) == 2 and os.getpid() not in pids, "each job in a process of its own"
    assert all(m["status"] == "completed" for m in metas)
    assert {
        yaml.safe_load((sweep / j / "config_resolved.yaml").read_text())["seed"] for j in "01"
    } == {0, 1}
    assert list((sweep / ".submitit").iterdir()), "submitit's own job folders"
