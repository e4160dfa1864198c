"""Issue 9: a failed or hostile command never changes a run, never runs foreign code, never writes
non-finite data. Bad inputs and faults through the console script (in-process ``main`` where that
is enough; a subprocess for signals, locks and sweeps), each checked for one line on stderr that
names the key or file, a non-zero exit, and nothing changed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from hybridsim.cli import main
from hybridsim.config import LVConfig
from hybridsim.data import DataError, data_path, ensure_dataset, write_dataset
from hybridsim.locks import lock_data_file, lock_run_dir
from hybridsim.problems.lotka_volterra import LotkaVolterra

EXE = shutil.which("hybridsim")
SOURCE = str(Path(__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": SOURCE, "OMP_NUM_THREADS": "1"}
DATA = ["problem.t_train=1.0", "problem.t_test=2.0"]
TINY = [
    *DATA,
    "recipe.steps=4",
    "recipe.polish=none",
    "recipe.val_every=2",
    "recipe.log_every=1",
    "recipe.unroll=[3]",
    "recipe.baselines=false",
    "correction.width=[4]",
    "progress=none",
    "evaluate=false",
]


def files(d: Path) -> dict[str, bytes]:
    """Every file below ``d`` with its bytes (what "D is unchanged" compares)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def one_line(capsys, code: int, needle: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code != 0, "expected a failure"
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    return err


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A completed tiny LV run and its data, made once; tests copy the run."""
    root = tmp_path_factory.mktemp("rel")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        code = main(["train", *TINY, f"hydra.run.dir={root / 'done'}", f"data_dir={root / 'data'}"])
    finally:
        os.chdir(cwd)
    assert code == 0
    return root


@pytest.fixture
def run_copy(work, tmp_path, monkeypatch):
    """A fresh copy of the completed run (``D``), the working directory a temp folder."""
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "D"
    shutil.copytree(work / "done", d)
    return d


def _edit_overrides(d: Path, edit) -> None:
    path = d / ".hydra" / "overrides.yaml"
    path.write_text(yaml.safe_dump(edit(yaml.safe_load(path.read_text()))))


# ----------------------------------------------------------------- bad values, keys and flags
BAD = [
    # item 3: every number finite and of sensible size, the key named
    (["generate", "problem.noise=nan"], "problem.noise must be finite, got nan"),
    (["generate", "problem=ct", "problem.noise=inf"], "problem.noise must be finite"),
    (["generate", "problem=ns", "problem.perturbation=nan"], "problem.perturbation"),
    (["train", "recipe.grad_clip=nan"], "recipe.grad_clip must be finite"),
    (["train", "problem=ct", "solver.step_size=inf"], "solver.step_size must be finite"),
    (["generate", "problem.alpha=inf"], "problem.alpha must be finite"),
    (["generate", "problem.x0=1e300"], "problem.x0 must be at most"),
    (["generate", "problem=ns", "problem.dt=inf"], "problem.dt must be finite"),
    (["generate", "problem=ct", "problem.mu=inf"], "problem.mu must be finite"),
    (["generate", "problem=ct", "problem.n_ellipses=nan"], "problem.n_ellipses must be finite"),
    (["train", "recipe.lr=inf"], "recipe.lr must be finite"),
    (["train", "recipe.lr=1e30"], "recipe.lr must be at most"),
    (["generate", "problem.t_train=inf"], "problem.t_train must be finite"),
    (["train", "problem.ic_box=[1,2,nan,4]"], "problem.ic_box[2] must be finite"),
    (["train", "problem=ns", "problem.reynolds_train=[100,inf]"], "problem.reynolds_train[1]"),
    (["train", "recipe.steps=100000000000000"], "recipe.steps must be at most"),
    # item 6: messages that name the key
    (["generate", "problem.seed_train=12345678901234567890123"], "problem.seed_train must be"),
    (["generate", "problem.seed_train=-1"], "problem.seed_train must be an integer in [0,"),
    (["train", "seed=-3"], "seed must be an integer in [0,"),
    (["train", "problem=../solver/rk4"], "problem: the chosen config is not a problem config"),
    (["train", "problem=lv", "problem.name=ct"], "problem.name=ct does not name"),
    # item 8: keys the schema does not have are rejected at train, as at eval
    (["train", "+problem.foo=1"], "problem.foo is not a setting of this problem"),
    (["train", "+recipe.bar=2"], "recipe.bar is not a setting of this recipe"),
    (["train", "+foo=1"], "foo is not a setting of this command"),
    (["generate", "+problem.foo=1"], "problem.foo is not a setting"),
    # item 10: flag errors are one line with the command's --help
    (
        ["train", "--nosuchflag"],
        "unrecognized arguments: --nosuchflag (see hybridsim train --help)",
    ),
    (["train", "--cfg", "jobs"], "invalid choice: 'jobs'"),
    (["generate", "-x"], "see hybridsim generate --help"),
    (["train", "problem=lv", "-m", "seed=1,2"], "flags (-m, --cfg, ...) go before the overrides"),
    (["eval", "--nosuch"], "see hybridsim eval --help"),
    # resume of something that is not a run
    (["train", "resume=/nonexistent/run"], "does not exist"),
    (["train", "resume="], "resume= needs a run directory"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_value_key_or_flag(argv, needle, expect_one_line_error):
    expect_one_line_error(argv, needle)


# ---------------------------------------------- item 1 and 2: resume and existing run directories
def _crafted_env_set(d: Path) -> list[str]:
    (d / "bin").mkdir()
    git = d / "bin" / "git"
    git.write_text(f"#!/bin/sh\ntouch {d}/EXECUTED\n")
    git.chmod(0o755)
    _edit_overrides(d, lambda o: [*o, f"+hydra.job.env_set.PATH={d}/bin:/usr/bin:/bin"])
    (d / "checkpoints" / "last.pt").unlink()  # so that training (and meta.json) would run
    return ["train", f"resume={d}"]


def _crafted_group_path(d: Path) -> list[str]:
    (d / "evil.yaml").write_text("# @package _global_\nhydra:\n  job:\n    env_set:\n      X: 1\n")
    rel = os.path.relpath(d / "evil", Path(SOURCE) / "conf" / "experiment")
    _edit_overrides(d, lambda o: [*o, f"+experiment={rel}"])
    return ["train", f"resume={d}"]


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


RESUME_REFUSED = [
    ("steps=-5", lambda d: ["train", f"resume={d}", "recipe.steps=-5"], "recipe.steps must be > 0"),
    (
        "changed model",
        lambda d: ["train", f"resume={d}", "correction.width=[64,64]"],
        "correction.width=[64, 64] would change what the run is",
    ),
    (
        "more steps, finished run",
        lambda d: ["train", f"resume={d}", "recipe.steps=8"],
        "has finished training",
    ),
    (
        "hydra.run.dir=D with other lr",
        lambda d: ["train", *TINY, "recipe.lr=0.1", f"hydra.run.dir={d}"],
        "recipe.lr=0.1 would change what the run is",
    ),
    (
        "hydra key on the resume line",
        lambda d: ["train", f"resume={d}", "+hydra.job.env_set.X=1"],
        "resume refuses +hydra.job.env_set.X=1",
    ),
    ("sweep", lambda d: ["train", "-m", f"resume={d}"], "cannot be a sweep"),
    (
        "crafted env_set PATH",
        _crafted_env_set,
        "hydra.job.env_set.PATH is not a setting of the run",
    ),
    ("crafted group path", _crafted_group_path, "experiment must name a config of its group"),
    (
        "crafted interpolation",
        lambda d: (
            _edit_overrides(d, lambda o: [*o, "seed=${oc.env:HOME}"]) or ["train", f"resume={d}"]
        ),
        "interpolations are not replayed",
    ),
    (
        "overrides not a list",
        lambda d: (
            (d / ".hydra" / "overrides.yaml").write_text("a: 1\n") and ["train", f"resume={d}"]
        ),
        "must be a list of key=value overrides",
    ),
    (
        "overrides.yaml a FIFO",
        lambda d: _fifo(d / ".hydra" / "overrides.yaml") or ["train", f"resume={d}"],
        "is a FIFO",
    ),
    (
        "empty config_resolved",
        lambda d: (d / "config_resolved.yaml").write_text("") or ["train", f"resume={d}"],
        "config_resolved.yaml: it is empty or has no 'problem' section",
    ),
    (
        "truncated last.pt",
        lambda d: _truncate(d / "checkpoints" / "last.pt") or ["train", f"resume={d}"],
        "checkpoints/last.pt cannot be read",
    ),
    (
        "eval: empty config_resolved",
        lambda d: (d / "config_resolved.yaml").write_text("") or ["eval", f"run={d}"],
        "config_resolved.yaml is empty or not a mapping",
    ),
    (
        "eval: no problem section",
        lambda d: (
            (d / "config_resolved.yaml").write_text(
                yaml.safe_dump(
                    {
                        k: v
                        for k, v in yaml.safe_load((d / "config_resolved.yaml").read_text()).items()
                        if k != "problem"
                    }
                )
            )
            and ["eval", f"run={d}"]
        ),
        "it has no 'problem' section",
    ),
    (
        "eval: checkpoint a FIFO",
        lambda d: (
            _fifo(d / "checkpoints" / "last.pt")
            or ["eval", f"run={d}", f"ckpt={d}/checkpoints/last.pt"]
        ),
        "is a FIFO",
    ),
]


@pytest.mark.parametrize(
    "make,needle", [c[1:] for c in RESUME_REFUSED], ids=[c[0] for c in RESUME_REFUSED]
)
def test_refused_resume_leaves_the_run_as_it_was(make, needle, run_copy, capsys):
    argv = make(run_copy)
    before = files(run_copy)
    one_line(capsys, main(argv), needle)
    assert files(run_copy) == before, "a failed command must leave D byte-identical"
    assert not (run_copy / "EXECUTED").exists(), "code from the run directory was executed"


def test_failure_after_validation_restores_the_run(run_copy, tmp_path, capsys):
    """A resume that passes validation but fails on its data (a FIFO where the data file should
    be) puts back what Hydra and train had written: D is byte-identical afterwards."""
    cfg = yaml.safe_load((run_copy / "config_resolved.yaml").read_text())
    target = data_path(LotkaVolterra(LVConfig(**cfg["problem"])), tmp_path / "fifo")
    target.parent.mkdir()
    os.mkfifo(target)
    before = files(run_copy)
    one_line(capsys, main(["train", f"resume={run_copy}", f"data_dir={target.parent}"]), "FIFO")
    assert files(run_copy) == before


def test_run_directory_in_use_is_refused(run_copy, capsys):
    with lock_run_dir(run_copy):  # as a training process holds it
        before = files(run_copy)
        one_line(capsys, main(["train", f"resume={run_copy}"]), "is being trained or evaluated")
        one_line(capsys, main(["eval", f"run={run_copy}"]), "is being trained or evaluated")
        assert files(run_copy) == before
    assert main(["train", f"resume={run_copy}"]) == 0  # free again


def test_git_sha_is_read_without_running_git(tmp_path, monkeypatch):
    """meta.json's git SHA comes from .git itself: a ``git`` first on PATH never runs."""
    from hybridsim.train import git_sha

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "repo"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".git" / "packed-refs").write_text(f"# pack-refs\n{sha} refs/heads/main\n")
    (repo / "pkg").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "git").write_text(f"#!/bin/sh\ntouch {tmp_path}/EXECUTED\n")
    (tmp_path / "bin" / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert git_sha(repo / "pkg") == sha
    (repo / ".git" / "refs" / "heads" / "main").write_text(sha.replace("0", "f") + "\n")
    assert git_sha(repo / "pkg") == sha.replace("0", "f")  # a loose ref wins over packed-refs
    worktree = tmp_path / "wt"
    (repo / ".git" / "worktrees" / "wt").mkdir(parents=True)
    (repo / ".git" / "worktrees" / "wt" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".git" / "worktrees" / "wt" / "commondir").write_text("../..\n")
    worktree.mkdir()
    (worktree / ".git").write_text(f"gitdir: {repo / '.git' / 'worktrees' / 'wt'}\n")
    assert git_sha(worktree) == sha.replace("0", "f")
    assert git_sha(tmp_path / "nowhere") is None
    assert not (tmp_path / "EXECUTED").exists()


# -------------------------------------------------------------- resumes that are allowed
def test_resume_with_more_steps_of_an_interrupted_run(run_copy, tmp_path, capsys, monkeypatch):
    """An interrupted run continues; more recipe.steps is allowed while Adam runs; a torn last
    line of metrics.jsonl (a kill -9 mid-write) is dropped; a stale temporary file is removed;
    a path with ``,`` and ``'`` is replayed quoted; new overrides replace the saved ones."""
    plain, d = tmp_path / "plain", tmp_path / "run, it's mine"
    shutil.rmtree(run_copy)
    calls = {"n": 0}
    loss = LotkaVolterra.loss

    def interrupt(self, *a, **k):
        calls["n"] += torch.is_grad_enabled()
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return loss(self, *a, **k)

    monkeypatch.setattr(LotkaVolterra, "loss", interrupt)
    data = f"data_dir={tmp_path / 'data'}"
    assert main(["train", *TINY, data, f"hydra.run.dir={plain}"]) == 130
    assert capsys.readouterr().err.strip() == (
        f"hybridsim train: interrupted (SIGINT); continue with: hybridsim train resume={plain}"
    )
    monkeypatch.setattr(LotkaVolterra, "loss", loss)
    plain.rename(d)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["error"] == "interrupted by SIGINT"
    with (d / "metrics.jsonl").open("a") as f:
        f.write('{"step": 9, "model": "hybrid", "train/lo')  # torn by a kill
    stale = d / "checkpoints" / ".last.pt.0123456789abcdef.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", f"resume={d}", "recipe.steps=6"]) == 0, capsys.readouterr().err
    assert not stale.exists()
    assert torch.load(d / "checkpoints" / "last.pt", weights_only=True)["step"] == 6
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    overrides = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
    assert [o for o in overrides if o.startswith("recipe.steps")] == ["recipe.steps=6"]
    assert json.loads((d / "meta.json").read_text())["status"] == "completed"


def test_resume_of_a_finished_run_keeps_its_record(run_copy, capsys):
    """Nothing to train: meta.json, checkpoints and metrics stay as they were; the config records
    the one (safe) setting that changed."""
    before = files(run_copy)
    assert main(["train", f"resume={run_copy}", "progress=plain"]) == 0
    assert "already complete" in capsys.readouterr().out
    after = files(run_copy)
    for name in ("meta.json", "checkpoints/last.pt", "checkpoints/best.pt", "metrics.jsonl"):
        assert after[name] == before[name], f"{name} changed"
    old, new = (yaml.safe_load(x["config_resolved.yaml"]) for x in (before, after))
    assert new == {**old, "progress": "plain"}


# ------------------------------------------------------------------------------ item 3, 6, 12
def test_generate_never_writes_non_finite_values(tmp_path):
    problem = LotkaVolterra(LVConfig(t_train=1.0, t_test=2.0, x0=5.0))
    splits = {s: problem.generate(s, i) for i, s in enumerate(("train", "val", "test"))}
    splits["val"].arrays["u"][0, 3, 1] = np.inf
    with pytest.raises(DataError, match=r"non-finite values in val/u \(1 of .*problem.x0=5.0"):
        write_dataset(tmp_path / "lv-x.h5", problem, splits)
    assert list(tmp_path.iterdir()) == [], "nothing may be written"


def _overflowing(self, split, seed):
    data = _generate(self, split, seed)
    data.arrays["u_true"][..., -1, 0] = np.inf  # the reference solve overflowed
    return data


def _failing(self, split, seed):
    raise ZeroDivisionError("float division by zero")


_generate = LotkaVolterra.generate


@pytest.mark.parametrize(
    "fake,needle",
    [
        (_overflowing, "problem=lv produced non-finite values in train/u_true (1 of 22)"),
        (_failing, "generating the train split of problem=lv failed (ZeroDivisionError"),
    ],
    ids=["non-finite", "raises"],
)
def test_generate_names_what_failed_and_writes_nothing(fake, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(LotkaVolterra, "generate", fake)
    err = one_line(capsys, main(["generate", *DATA, "problem.x0=5"]), needle)
    assert "settings changed from the defaults: problem.x0=5.0, problem.t_train=1.0" in err
    assert [p.name for p in (tmp_path / "data").iterdir() if not p.name.endswith(".lock")] == []


@pytest.fixture
def data_file(work, tmp_path, monkeypatch):
    """A copy of the shared data file in ``tmp_path/data`` (the run's data_dir in train)."""
    monkeypatch.chdir(tmp_path)
    src = next((work / "data").glob("lv-*.h5"))
    (tmp_path / "data").mkdir()
    return Path(shutil.copy(src, tmp_path / "data" / src.name))


def _wrong_shape(path: Path) -> None:
    with h5py.File(path, "a") as f:
        shape = f["train/u"].shape
        del f["train/u"]
        f["train/u"] = np.zeros((*shape[:-1], 3))


def _no_layout_wrong_count(path: Path) -> None:
    with h5py.File(path, "a") as f:
        del f.attrs["layout"]
        del f["train/u"]
        f["train/u"] = np.zeros((5, 11, 2))


def _text_array(path: Path) -> None:
    with h5py.File(path, "a") as f:
        del f["train/u0"]
        f["train/u0"] = np.array([b"x"])


def _a_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


DATA_FAULTS = [
    ("wrong shape", _wrong_shape, "train/u has shape (1, 11, 3) and dtype float64, expected"),
    ("no layout, wrong count", _no_layout_wrong_count, "expected 1 samples along its first axis"),
    ("text array", _text_array, "train/u0 holds |S1 values, not numbers"),
    ("FIFO", _fifo, "is a FIFO (named pipe), not a regular file"),
    ("folder", _a_folder, "is a folder, not a regular file"),
]


@pytest.mark.parametrize(
    "damage,needle", [c[1:] for c in DATA_FAULTS], ids=[c[0] for c in DATA_FAULTS]
)
def test_damaged_data_file_is_named(damage, needle, data_file, tmp_path, capsys):
    damage(data_file)
    args = [*TINY, f"data_dir={data_file.parent}", f"hydra.run.dir={tmp_path / 'run'}"]
    err = one_line(capsys, main(["train", *args]), needle)
    assert str(data_file.name) in err
    assert not (tmp_path / "run").exists(), "a run that never started leaves no directory"
    if damage is _wrong_shape:  # generate opens the file the same way
        one_line(capsys, main(["generate", *DATA, f"data_dir={data_file.parent}"]), needle)


# --------------------------------------------------------------------------------- item 4
def test_divergence_is_named_and_never_saved(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "recipe.lr=1e8", "recipe.val_every=1", f"hydra.run.dir={tmp_path / 'r'}"]
    err = one_line(capsys, main(["train", *args]), "diverged at step 1")
    assert "validation loss is inf" in err and "likely cause: recipe.lr=1e+08" in err
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["status"] == "diverged" and "recipe.lr" in meta["error"]
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))

    rows = [strict(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("val/loss", 0) is None for r in rows), "a non-finite metric is null"


def _lv_fit_setup():
    from hybridsim.config import MLPConfig, ODESolverConfig, RecipeConfig

    problem = LotkaVolterra(LVConfig(t_train=2.0, t_test=3.0))
    train, val = problem.generate("train", 1), problem.generate("val", 2)
    corr = MLPConfig(width=[8])
    model = problem.build_model(ODESolverConfig(name="rk4"), corr, "rhs", train)
    cpu = torch.device("cpu")
    recipe = RecipeConfig(name="t", steps=6, batch_size=8, unroll=[3], val_every=2, log_every=1)
    return (
        problem,
        model,
        train.tensors(cpu, torch.float32),
        val.tensors(cpu, torch.float32),
        recipe,
    )


def test_non_finite_gradient_or_parameters_stop_before_saving(tmp_path):
    from hybridsim.train import TrainingDiverged, fit, load_checkpoint

    problem, model, train, val, recipe = _lv_fit_setup()
    first = next(model.parameters())
    first.register_hook(lambda g: g * float("nan") if problem.steps >= 3 else g)
    loss = problem.loss
    problem.steps = 0

    def counting(*a, **k):
        problem.steps += torch.is_grad_enabled()
        return loss(*a, **k)

    problem.loss = counting
    with pytest.raises(TrainingDiverged, match="step 2 .*gradient is non-finite.*recipe.unroll"):
        fit(problem, model, train, val, recipe, tmp_path / "g", progress="none")
    ck = load_checkpoint(tmp_path / "g" / "checkpoints" / "last.pt")
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values())

    problem, model, train, val, recipe = _lv_fit_setup()
    opt_step, n = torch.optim.Adam.step, {"steps": 0}

    def poisoning(self, *a, **k):  # the second optimiser step makes a parameter NaN
        out = opt_step(self, *a, **k)
        n["steps"] += 1
        if n["steps"] == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return out

    torch.optim.Adam.step = poisoning
    try:
        with pytest.raises(
            TrainingDiverged, match="step 2 .*parameter .* is non-finite.*recipe.lr"
        ):
            fit(problem, model, train, val, recipe, tmp_path / "p", progress="none")
    finally:
        torch.optim.Adam.step = opt_step
    assert not (tmp_path / "p" / "checkpoints" / "last.pt").exists(), "NaN must never be saved"


def test_a_model_with_nothing_to_train_names_the_setting(tmp_path, capsys, monkeypatch):
    """solver.n_iter=0 leaves the CT correction unused ("element 0 of tensors does not require
    grad" before): the first step says so, naming the setting."""
    monkeypatch.chdir(tmp_path)
    ct = ["problem=ct", "problem.size=16", "problem.n_angles=6", "problem.n_train=2"]
    ct += ["problem.n_val=1", "problem.n_test=1", "problem.n_ellipses=5", "correction.width=[4]"]
    argv = ["train", *ct, "solver.n_iter=0", "recipe.steps=2", "evaluate=false", "progress=none"]
    one_line(capsys, main([*argv, f"hydra.run.dir={tmp_path / 'r'}"]), "solver.n_iter=0")


# ----------------------------------------------------------------------- item 7, 11, 13
def test_files_follow_the_umask_and_stale_temps_go(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    problem = LotkaVolterra(LVConfig(t_train=1.0, t_test=2.0))
    target = data_path(problem, tmp_path / "data")
    target.parent.mkdir()
    stale = target.parent / f".{target.name}.0123456789abcdef.tmp"
    stale.write_bytes(b"left by kill -9")
    other = target.parent / ".lv-other.h5.0123456789abcdef.tmp"  # another file's: kept
    other.write_bytes(b"")
    old = os.umask(0o022)
    try:
        assert main(["train", *TINY, f"hydra.run.dir={tmp_path / 'r'}"]) == 0
    finally:
        os.umask(old)
    assert not stale.exists() and other.exists()
    for f in (target, tmp_path / "r" / "checkpoints" / "last.pt", tmp_path / "r" / "meta.json"):
        assert f.stat().st_mode & 0o777 == 0o644, f"{f} has mode {oct(f.stat().st_mode)}"


def test_second_generator_waits_for_the_first(tmp_path, capsys):
    """While one process holds a data file's lock (here: this test, through its own descriptor;
    flock excludes descriptors, not only processes), ``generate`` waits instead of computing
    the same file too, and then does its work."""
    import threading

    problem = LotkaVolterra(LVConfig(t_train=1.0, t_test=2.0))
    target = data_path(problem, tmp_path / "data")
    lock = lock_data_file(target)
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(out=ensure_dataset(problem, target.parent))
    )
    worker.start()
    try:
        while "waiting for another process" not in capsys.readouterr().err:
            assert worker.is_alive(), "it must wait for the lock"
            worker.join(0.05)  # it says it waits before it blocks on the lock
        assert worker.is_alive() and not target.exists(), "it must wait, not compute too"
    finally:
        lock.release()
    worker.join(60)
    assert result["out"] == (target, True) and target.exists()


INJECT = """
import signal, sys, h5py
# a user's terminal: SIGINT handled. A test runner started as a background job of a script
# (`cmd &` without job control, nohup) passes SIGINT on ignored, and hybridsim rightly leaves
# an inherited SIG_IGN alone, which is not the case under test.
signal.signal(signal.SIGINT, signal.default_int_handler)
from hybridsim.cli import main
create, calls = h5py.Group.create_dataset, [0]
class Finaliser:  # h5py frees objects through callbacks like this one while it writes
    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # raise(3): to this thread, inside the finaliser
        sum(range(10000))  # the handler runs here, inside the finaliser
def create_dataset(self, *a, **k):
    calls[0] += 1
    if calls[0] == 3:
        Finaliser()
    return create(self, *a, **k)
h5py.Group.create_dataset = create_dataset
sys.exit(main(sys.argv[1:]))
"""


def test_sigint_during_the_hdf5_write(tmp_path):
    """Ctrl-C that lands in a finaliser while h5py writes used to be printed as "Exception
    ignored" and lost (exit 0); now: one line, exit 130, no data file, no temporary file."""
    proc = subprocess.run(
        [sys.executable, "-c", INJECT, "generate", *DATA, f"data_dir={tmp_path / 'data'}"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "hybridsim generate: interrupted (SIGINT)"
    assert [p.name for p in (tmp_path / "data").iterdir() if not p.name.endswith(".lock")] == []


def test_interrupt_swallowed_by_a_finaliser_is_raised_again():
    from hybridsim import interrupts

    class Finaliser:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)
            sum(range(10000))  # the handler raises here, and Python would print and drop it

    # as in INJECT: the runner may have inherited SIGINT ignored; a terminal's is handled
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = interrupts.install()
    try:
        Finaliser()
        with pytest.raises(interrupts.Interrupted) as e:
            interrupts.check()
        assert e.value.exit_code == 130
        interrupts.check()  # raised once only
    finally:
        interrupts.restore(previous)
        signal.signal(signal.SIGINT, inherited)


@pytest.mark.slow
def test_sigterm_while_training_and_a_second_writer(tmp_path, capsys):
    """A training process holds its run directory: a resume and an eval of it are refused;
    SIGTERM ends it with one line, exit 143, meta.json 'interrupted' and no temporary file."""
    d = tmp_path / "r"
    long = [*TINY, "recipe.steps=1000000", f"hydra.run.dir={d}", f"data_dir={tmp_path / 'data'}"]
    proc = subprocess.Popen(
        [EXE, "train", *long], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    try:
        deadline = time.time() + 120
        while not (d / "checkpoints" / "last.pt").exists() and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        before = (d / ".hydra" / "overrides.yaml").read_bytes()
        one_line(capsys, main(["train", f"resume={d}"]), "is being trained or evaluated")
        one_line(capsys, main(["eval", f"run={d}"]), "is being trained or evaluated")
        assert (d / ".hydra" / "overrides.yaml").read_bytes() == before
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert (
        err.strip()
        == f"hybridsim train: interrupted (SIGTERM); continue with: hybridsim train resume={d}"
    )
    assert json.loads((d / "meta.json").read_text())["status"] == "interrupted"
    assert not list(d.rglob("*.tmp"))


@pytest.mark.slow
def test_sweep_goes_on_past_a_failing_job(tmp_path):
    """Job 1 fails validation; jobs 0 and 2 still run; a summary and exit 1 at the end (the
    sweep of tests/test_report.py checks the same on every run of the suite)."""
    sweep = tmp_path / "sweep"
    args = [a for a in TINY if not a.startswith("recipe.steps")]
    proc = subprocess.run(
        [EXE, "train", "-m", "recipe.steps=2,-1,3", *args, f"hydra.sweep.dir={sweep}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "hybridsim train: job 1 failed: recipe.steps must be > 0, got -1",
        f"hybridsim train: sweep {sweep}: 3 jobs, 2 done, 1 failed; run the same command again "
        "to rerun the failed jobs (and resume interrupted ones, skipping the rest)",
        f"  job 1 failed ({sweep / '1'}): recipe.steps must be > 0, got -1",
    ]
    assert (sweep / "0" / "checkpoints" / "last.pt").exists()
    assert (sweep / "2" / "checkpoints" / "last.pt").exists()
    assert "recipe.steps must be > 0, got -1" in (sweep / "1" / "train.log").read_text()
