"""The installed console script end to end, in a temporary directory: generate → train → eval →
resume, a two-job multirun, and every bad input giving one line and a non-zero exit."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hybridsim.cli import main

EXE = shutil.which("hybridsim")
# A tiny LV run: short window, few steps; the full defaults are exercised by `make demo-lv`.
TINY = [
    "problem.t_train=1.0",
    "problem.t_test=2.0",
    "recipe.steps=4",
    "recipe.polish_steps=2",
    "recipe.val_every=2",
    "recipe.log_every=1",
    "recipe.unroll=[3,5]",
    "progress=plain",
    "correction.width=[8]",
]


def run(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    assert EXE, "the hybridsim console script is not installed (make install)"
    proc = subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, f"hybridsim {' '.join(args)} failed:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests below (working directory = a temp folder)."""
    cwd = tmp_path_factory.mktemp("work")
    proc = run("train", "problem=lv", *TINY, cwd=cwd)
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    return cwd, run_dir, proc


def test_help_lists_commands(tmp_path):
    out = run("--help", cwd=tmp_path).stdout
    for command in ("generate", "train", "eval"):
        assert command in out
    group_help = run("train", "--help", cwd=tmp_path).stdout
    assert "problem: " in group_help and "lv" in group_help and "recipe:" in group_help


def test_cfg_job_from_another_directory(tmp_path):
    out = run("train", "--cfg", "job", cwd=tmp_path).stdout
    assert "alpha: 1.1" in out and "name: rk4" in out


def test_generate_writes_and_reuses(tmp_path):
    first = run("generate", "problem=lv", "problem.t_train=1", "problem.t_test=2", cwd=tmp_path)
    path = tmp_path / first.stdout.split()[0]
    assert path.exists() and path.name.startswith("lv-") and path.suffix == ".h5"
    again = run("generate", "problem=lv", "problem.t_train=1", "problem.t_test=2", cwd=tmp_path)
    assert "reused" in again.stdout
    other = run(
        "generate",
        "problem=lv",
        "problem.t_train=1",
        "problem.t_test=2",
        "problem.noise=0.05",
        cwd=tmp_path,
    )
    assert other.stdout.split()[0] != first.stdout.split()[0], "a changed setting needs new data"


def test_train_writes_run_directory(trained):
    cwd, run_dir, proc = trained
    assert run_dir.is_dir() and str(run_dir).startswith(str(cwd / "outputs" / "train"))
    for f in (
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "config_resolved.yaml",
        "meta.json",
        "metrics.jsonl",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "checkpoints/blackbox/best.pt",
        "plots/training.png",
        "eval/metrics.json",
        "eval/plots/trajectories.png",
        "eval/plots/learned_terms.png",
        "eval/equations.txt",
    ):
        assert (run_dir / f).exists(), f"missing {f}"
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["data_hash"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in rows) and any("val/loss" in r for r in rows)
    assert {"hybrid", "blackbox"} <= {r["model"] for r in rows}
    assert "discovered: dx/dt =" in proc.stdout


def test_checkpoint_is_plain_containers(trained):
    import torch

    ck = torch.load(trained[1] / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "step", "best", "rng", "config"} <= set(ck)
    assert ck["config"]["problem"]["name"] == "lv" and ck["done"]


def test_eval_rebuilds_from_saved_config(trained, tmp_path):
    cwd, run_dir, _ = trained
    proc = run("eval", f"run={run_dir}", cwd=cwd)
    result = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert {"hybrid", "blackbox", "physics"} <= set(result["table"])
    assert "rel_l2_extrapolation" in result["table"]["hybrid"]
    assert "rel_l2_window" in proc.stdout
    last = run("eval", f"run={run_dir}", f"ckpt={run_dir}/checkpoints/last.pt", cwd=cwd)
    assert last.returncode == 0


def test_resume_of_finished_run_changes_nothing(trained):
    cwd, run_dir, _ = trained
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    run("train", f"resume={run_dir}", "evaluate=false", cwd=cwd)
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before


def test_multirun_two_jobs(tmp_path):
    proc = run(
        "train",
        "-m",
        "problem=lv",
        "correction=none,mlp",
        # Not TINY's correction.width: correction=none has no width (one schema per kind).
        *(a for a in TINY if not a.startswith("correction.")),
        "recipe.baselines=false",
        "evaluate=false",
        cwd=tmp_path,
    )
    dirs = sorted(p for p in (tmp_path / "outputs" / "train-multirun").glob("*/*/*") if p.is_dir())
    assert len(dirs) == 2, proc.stdout
    assert all((d / "checkpoints" / "last.pt").exists() for d in dirs)


def test_run_directories_never_collide(tmp_path):
    args = ["train", "--cfg", "hydra", "-p", "hydra.run.dir"]
    a, b = run(*args, cwd=tmp_path).stdout, run(*args, cwd=tmp_path).stdout
    assert a != b, "two runs got the same directory"


# Every bad input: one line on stderr, a non-zero exit, no traceback. In-process for speed.
BAD = [
    (["train", "problem=nope"], "available options in 'problem'"),
    (["train", "solver=nope"], "available options in 'solver'"),
    (["train", "recipe.steps=abc"], "recipe.steps"),
    (["train", "problem.unknown_key=1"], "unknown_key"),
    (["train", "coupling=bogus"], "choose one of"),
    (["train", "problem.dt_obs=0"], "problem.dt_obs"),
    (["train", "problem.t_train=-1"], "problem.t_train"),
    (["train", "problem.t_test=0"], "problem.t_test"),
    (["train", "recipe.steps=0"], "recipe.steps"),
    (["train", "recipe.batch_size=0"], "recipe.batch_size"),
    (["train", "recipe.lr=-1"], "recipe.lr"),
    (["train", "problem.noise=-0.1"], "problem.noise"),
    (["train", "solver.substeps=0"], "solver.substeps"),
    (["train", "solver=dopri5", "solver.rtol=-1e-6"], "solver.rtol"),
    (["train", "correction=none", "coupling=blackbox"], "needs a network"),
    (["generate", "problem.n_train=0"], "problem.n_train"),
    (["eval"], "run="),
    (["eval", "run=/nonexistent/run"], "does not exist"),
    (["bogus-command"], "unknown command"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line(argv, needle, expect_one_line_error):
    expect_one_line_error(argv, needle)


def test_missing_checkpoint_and_unwritable_output(trained, tmp_path, capsys):
    cwd, run_dir, _ = trained
    assert main(["eval", f"run={run_dir}", f"ckpt={run_dir}/checkpoints/nope.pt"]) != 0
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["train", *TINY, f"hydra.run.dir={tmp_path}/afile/run"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "afile" in err


def test_corrupt_data_is_reported_and_kept(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["generate", "problem.t_train=1", "problem.t_test=2"]
    assert main(args) == 0
    path = next((tmp_path / "data").glob("lv-*.h5"))
    path.write_bytes(b"garbage")
    capsys.readouterr()
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert "corrupt" in err and len(err.splitlines()) == 1
    assert path.read_bytes() == b"garbage", "the user's file must not be overwritten"


def test_python_module_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hybridsim", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0 and "commands:" in proc.stdout


@pytest.mark.slow
def test_configs_found_after_non_editable_install(tmp_path):
    """A plain `pip install .` (not editable) ships conf/ as hybridsim.conf."""
    repo = Path(__file__).resolve().parents[1]
    target = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(repo),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import hybridsim.cli as c; "
        "assert c.__file__.startswith(sys.argv[1]), c.__file__; "
        "print(c.config_path()); sys.exit(c.main(['train', 'problem=ct', '--cfg', 'job']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pkg://hybridsim.conf") and "name: ct" in proc.stdout


def test_user_config_directory(tmp_path, capsys, monkeypatch):
    """A user's own config directory joins the search path and can extend shipped configs."""
    (tmp_path / "conf" / "problem").mkdir(parents=True)
    (tmp_path / "conf" / "problem" / "my_lv.yaml").write_text(
        "# @package _global_\ndefaults:\n  - lv\n  - _self_\nproblem:\n  noise: 0.05\n"
    )
    monkeypatch.chdir(tmp_path)
    assert (
        main(["train", "--config-dir", str(tmp_path / "conf"), "problem=my_lv", "--cfg", "job"])
        == 0
    )
    out = capsys.readouterr().out
    assert "noise: 0.05" in out and "alpha: 1.1" in out
