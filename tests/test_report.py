"""``hybridsim report``: a real tiny sweep aggregated through the installed CLI, grouping,
unusable runs listed with their status, booleans and non-finite values, bad input."""

import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from hybridsim.cli import main
from hybridsim.report import build_report, write_report

EXE = shutil.which("hybridsim")
TINY = [
    "problem=lv",
    "problem.t_train=1.0",
    "problem.t_test=2.0",
    "recipe.polish=none",
    "recipe.val_every=3",
    "recipe.baselines=false",
    "correction.width=[8]",
    "progress=none",
]
METRIC = ("hybrid", "rel_l2_extrapolation")


def hybridsim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert EXE, "the hybridsim console script is not installed (make install)"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real sweep: recipe.steps=3 x seed=0,1 x problem.noise=0,0.05 (jobs 0-3), then jobs 4-7
    with recipe.steps=-1, which fail config validation; the sweep goes on past them and exits
    non-zero at the end (the first swept key varies slowest)."""
    cwd = tmp_path_factory.mktemp("work")
    proc = hybridsim(
        "train", "-m", *TINY, "recipe.steps=3,-1", "seed=0,1", "problem.noise=0,0.05",
        f"data_dir={cwd / 'data'}", f"hydra.sweep.dir={cwd / 'sweep'}", cwd=cwd,
    )  # fmt: skip
    assert proc.returncode != 0 and "recipe.steps must be > 0" in proc.stderr, proc.stderr
    assert "8 jobs, 4 done, 4 failed" in proc.stderr, proc.stderr
    assert sorted(p.name for p in (cwd / "sweep").iterdir() if p.is_dir()) == list("01234567")
    return cwd, cwd / "sweep"


def metrics_of(run: Path) -> dict:
    return json.loads((run / "eval" / "metrics.json").read_text())


def noise_of(run: Path) -> str:
    overrides = (run / ".hydra" / "overrides.yaml").read_text()
    return "0.05" if "problem.noise=0.05" in overrides else "0"


def n_leaves(metrics: dict) -> int:
    """Numeric/boolean leaves of the table plus top-level numbers, counted independently."""
    count = sum(
        isinstance(v, bool | int | float) or v is None
        for row in metrics["table"].values()
        for v in row.values()
    )
    return count + sum(
        isinstance(v, bool | int | float) for k, v in metrics.items() if k != "table"
    )


def test_report_of_a_real_sweep(sweep):
    cwd, root = sweep
    proc = hybridsim("report", str(root), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    out = root / "report"
    assert f"report: {out}/" in proc.stdout and "failed before training" in proc.stdout
    data = json.loads((out / "report.json").read_text())
    assert data["group_keys"] == ["problem", "problem.t_train", "problem.t_test",
                                  "recipe.polish", "recipe.val_every", "recipe.baselines",
                                  "correction.width", "recipe.steps", "problem.noise"]  # fmt: skip
    assert [g["label"] for g in data["groups"]] == [
        "recipe.steps=3 problem.noise=0",
        "recipe.steps=3 problem.noise=0.05",
    ]
    assert data["unused"] == [
        {
            "run": str(root / str(job)),
            "group": data["groups"][job % 2]["name"].replace("recipe.steps=3", "recipe.steps=-1"),
            "status": "failed before training",
            "error": "recipe.steps must be > 0, got -1",
        }
        for job in range(4, 8)
    ]
    runs = [root / str(i) for i in range(4)]
    for g in data["groups"]:
        mine = [r for r in runs if g["label"].endswith(f"problem.noise={noise_of(r)}")]
        assert len(mine) == 2 and g["runs"] == list(map(str, mine))
        stat = g["metrics"][METRIC[0]][METRIC[1]]
        values = [metrics_of(r)["table"][METRIC[0]][METRIC[1]] for r in mine]
        assert stat["n"] == 2 and stat["median"] == pytest.approx(statistics.median(values))
        assert stat["min"] == min(values) and stat["std"] == pytest.approx(statistics.stdev(values))
    assert data["headline"] and len(data["plots"]) == len(data["headline"])
    for plot in data["plots"]:
        assert (out / plot).stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "| group | hybrid |" in md and "## All metrics" in md and "## Runs not used" in md
    assert "runs: 4 used, 4 not used (failed before training: 4)" in md

    with (out / "report.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(n_leaves(metrics_of(r)) for r in runs)
    assert {"run", "group", "problem.noise", "seed", "model", "metric", "value"} <= set(rows[0])
    assert {r["problem.noise"] for r in rows} == {"0", "0.05"}
    assert {r["seed"] for r in rows} == {"0", "1"}
    assert {r["run"] for r in rows} == set(map(str, runs))
    mine = [r for r in rows if (r["model"], r["metric"]) == METRIC and r["run"] == str(runs[0])]
    assert len(mine) == 1
    assert float(mine[0]["value"]) == metrics_of(runs[0])["table"][METRIC[0]][METRIC[1]]


def test_csv_reads_with_pandas_defaults(sweep):
    pd = pytest.importorskip("pandas")
    cwd, root = sweep
    assert main(["report", str(root), f"out={cwd / 'pd'}"]) == 0
    frame = pd.read_csv(cwd / "pd" / "report.csv")
    assert frame["value"].dtype.kind == "f" and frame["problem.noise"].dtype.kind == "f"
    rows = frame[(frame.model == METRIC[0]) & (frame.metric == METRIC[1])]
    medians = rows.groupby("problem.noise")["value"].median()
    data = json.loads((cwd / "pd" / "report.json").read_text())
    median = data["groups"][1]["metrics"][METRIC[0]][METRIC[1]]["median"]
    assert medians[0.05] == pytest.approx(median)


def test_grouping_by_and_ignore(sweep):
    _, root = sweep
    by_seed = build_report([root], by=["seed"])
    assert [(g.name, len(g.runs)) for g in by_seed.groups] == [("seed=0", 2), ("seed=1", 2)]
    assert [r.group for r in by_seed.unused] == ["seed=0", "seed=0", "seed=1", "seed=1"]
    pooled = build_report([root], ignore=["problem.noise", "recipe.steps"])
    assert len(pooled.groups) == 1 and len(pooled.groups[0].runs) == 4
    assert pooled.groups[0].name.startswith("problem=lv ") and "seed" not in pooled.keys
    by_choice = build_report([root], by=["correction", "problem.noise"])
    assert [g.name for g in by_choice.groups] == [
        "correction=mlp problem.noise=0",
        "correction=mlp problem.noise=0.05",
    ]


def test_runs_of_several_dirs_join_one_group(sweep):
    _, root = sweep
    report = build_report([root / "0", root / "2", root])  # 0 and 2 again below root: once
    assert [(g.label, [r.path.name for r in g.runs]) for g in report.groups] == [
        ("recipe.steps=3 problem.noise=0", ["0", "2"]),
        ("recipe.steps=3 problem.noise=0.05", ["1", "3"]),
    ]


def test_a_default_spelled_out_joins_the_runs_that_left_it(tmp_path):
    """One sweep wrote problem.noise=0.01 (the default), the other left it out: the values come
    from each run's config, so both are one group."""
    metrics = {"table": {"hybrid": {"err": 1.0}}}
    config = {"problem": {"name": "lv", "noise": 0.01}, "seed": 0}
    make_run(tmp_path / "a" / "0", ["problem.noise=0.01", "seed=0"], metrics=metrics,
             config=config)  # fmt: skip
    make_run(tmp_path / "b" / "0", ["seed=1"], metrics=metrics, config={**config, "seed": 1})
    other = {"problem": {"name": "lv", "noise": 0.05}, "seed": 2}
    make_run(tmp_path / "b" / "1", ["problem.noise=5e-2"], metrics=metrics, config=other)
    report = build_report([tmp_path / "a", tmp_path / "b"])
    assert [(g.name, len(g.runs)) for g in report.groups] == [
        ("problem.noise=0.01", 2),
        ("problem.noise=0.05", 1),
    ]


def make_run(path: Path, overrides, status="completed", metrics=None, config=None, **meta):
    """A hand-made run directory (what train writes, without the training)."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if config is not None:
        (path / "config_resolved.yaml").write_text(json.dumps(config))  # JSON is YAML
    if status is not None:
        (path / "meta.json").write_text(json.dumps({"status": status, **meta}))
    if metrics is not None:
        (path / "eval").mkdir()
        (path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_seed_keys_and_neutral_keys_do_not_group(tmp_path):
    table = {"table": {"hybrid": {"err": 1.0}}}
    for i, (seed, split) in enumerate([("+seed=1", "3"), ("++seed=2", "4"), ("seed=3", "5")]):
        make_run(
            tmp_path / str(i),
            ["problem=lv", seed, f"++problem.seed_train={split}", f"data_dir=d{i}",
             "progress=plain", "hydra.run.dir=x", "correction=mlp"],
            metrics=table,
        )  # fmt: skip
    report = build_report([tmp_path])
    assert report.keys == ["problem", "correction"]
    assert [(g.name, len(g.runs)) for g in report.groups] == [("problem=lv correction=mlp", 3)]


def test_by_a_key_some_runs_lack(tmp_path):
    metrics = {"table": {"hybrid": {"err": 1.0}}}
    make_run(tmp_path / "0", ["problem=lv", "+experiment=big"], metrics=metrics)
    make_run(tmp_path / "1", ["problem=lv"], metrics=metrics)
    report = build_report([tmp_path], by=["experiment"])
    assert [g.name for g in report.groups] == ["experiment=big", "experiment=-"]
    with pytest.raises(ValueError, match="by=: no run has the key 'experimnt'"):
        build_report([tmp_path], by=["experimnt"])


def test_unusable_runs_are_listed_not_counted(sweep, tmp_path, capsys):
    _, root = sweep
    ok = root / "0"
    for name in ("ok", "diverged", "no_eval", "no_meta", "dead"):
        shutil.copytree(ok, tmp_path / name)
    meta = json.loads((ok / "meta.json").read_text())
    diverged = {**meta, "status": "diverged", "error": "non-finite loss at step 7"}
    (tmp_path / "diverged" / "meta.json").write_text(json.dumps(diverged))
    shutil.rmtree(tmp_path / "no_eval" / "eval")
    (tmp_path / "no_meta" / "meta.json").unlink()
    dead = subprocess.Popen(["true"])
    dead.wait()
    running = {**meta, "status": "running", "host": platform.node(), "pid": dead.pid}
    (tmp_path / "dead" / "meta.json").write_text(json.dumps(running))
    shutil.copytree(root / "4", tmp_path / "config_error")

    assert main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    expected = {
        "config_error": "failed before training",
        "dead": "incomplete",
        "diverged": "diverged",
        "no_eval": "no evaluation",
        "no_meta": "not started",
    }
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {Path(u["run"]).name: u["status"] for u in data["unused"]} == expected
    assert {Path(u["run"]).name: u["error"] for u in data["unused"]}["diverged"] == (
        "non-finite loss at step 7"
    )
    (group,) = [g for g in data["groups"]]
    assert [Path(r).name for r in group["runs"]] == ["ok"]
    assert group["metrics"]["hybrid"]["rel_l2_window"]["n"] == 1
    md = (tmp_path / "report" / "report.md").read_text()
    assert "runs: 1 used, 5 not used" in md and "## Runs not used" in md
    for name, status in expected.items():
        assert f"`{tmp_path / name}`" in md and status in printed
    assert "recipe.steps must be > 0, got -1" in md and "recipe.steps must be > 0" in printed


def test_running_status_is_checked_against_the_process(tmp_path):
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    here, metrics = platform.node(), {"table": {"hybrid": {"err": 1.0}}}
    make_run(tmp_path / "alive", ["x=1"], "running", metrics, host=here, pid=os.getpid(),
             started=now)  # fmt: skip
    # The pid lives, but its process began after the run started: the pid was reused.
    make_run(tmp_path / "reused", ["x=1"], "running", metrics, host=here, pid=os.getpid(),
             started="2000-01-01T00:00:00+0000")  # fmt: skip
    make_run(tmp_path / "elsewhere", ["x=1"], "running", metrics, host="other", pid=1)
    make_run(tmp_path / "done", ["x=1"], "completed", metrics)
    status = {r.path.name: r.status for r in build_report([tmp_path]).unused}
    assert status == {
        "alive": "running",
        "reused": "incomplete",
        "elsewhere": "running or incomplete",
    }


def test_booleans_as_rates_and_non_finite_counted(tmp_path, capsys):
    runs = [
        {"err": 0.1, "structure_found": True, "diverging": 2.0},
        {"err": None, "structure_found": True, "diverging": float("inf")},  # JSON Infinity
        {"err": 0.3, "structure_found": False},
    ]
    for i, row in enumerate(runs):
        table = {"hybrid": row, "physics": {"err": 10.0**i}}
        metrics = {"table": table, "headline": ["structure_found", "err"], "gain": 2.0 + i}
        metrics["note"] = "a string: not a metric"
        make_run(tmp_path / "sweep" / str(i), [f"seed={i}", "problem=lv"], metrics=metrics)
    report = build_report([tmp_path / "sweep"])
    (group,) = report.groups
    found = group.stats["hybrid"]["structure_found"]
    assert (found.kind, found.true, found.n) == ("bool", 2, 3)
    err = group.stats["hybrid"]["err"]
    assert (err.n, err.nonfinite, err.missing) == (2, 1, 0)
    assert err.median == pytest.approx(0.2) and err.std == pytest.approx(0.1 * 2**0.5)
    diverging = group.stats["hybrid"]["diverging"]
    assert (diverging.n, diverging.nonfinite, diverging.missing) == (1, 1, 1)
    assert group.stats["run"]["gain"].median == 3.0 and "note" not in group.stats["run"]
    assert report.headline == ["structure_found", "err"]

    files = write_report(report, tmp_path / "out")
    assert {p.name for p in files} >= {"structure_found.png", "err.png", "report.csv"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| group | hybrid |" in md and "| all runs | 2/3 |" in md
    assert "0.2 [0.1, 0.3] (2/3, 1 non-finite)" in md  # the headline cell of err, model hybrid
    with (tmp_path / "out" / "report.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    found_rows = [r for r in rows if r["metric"] == "structure_found"]
    assert [(r["type"], r["value"]) for r in found_rows] == [("bool", "1"), ("bool", "1"),
                                                              ("bool", "0")]  # fmt: skip
    assert [r["value"] for r in rows if r["metric"] == "err" and r["model"] == "hybrid"] == [
        "0.1",
        "",
        "0.3",
    ]


def test_rerun_gives_the_same_files_but_the_generated_line(tmp_path):
    for i in range(3):
        make_run(tmp_path / str(i), [f"seed={i}"], metrics={"table": {"hybrid": {"e": i + 1}}})
    write_report(build_report([tmp_path]), tmp_path / "r1")
    write_report(build_report([tmp_path]), tmp_path / "r2")
    strip = lambda text: [ln for ln in text.splitlines() if "generated" not in ln]  # noqa: E731
    for name in ("report.md", "report.json", "report.csv"):
        one, two = ((tmp_path / d / name).read_text() for d in ("r1", "r2"))
        assert strip(one) == strip(two), name


def test_default_out_for_several_dirs(tmp_path, monkeypatch, capsys):
    for d in ("x", "y"):
        make_run(tmp_path / d / "0", ["seed=0"], metrics={"table": {"hybrid": {"e": 1.0}}})
    monkeypatch.chdir(tmp_path)
    assert main(["report", "x", "y"]) == 0
    (report,) = (tmp_path / "outputs" / "report").glob("*/*/report.md")
    assert "runs: 2 used, 0 not used" in report.read_text()


def test_help(capsys):
    assert main(["--help"]) == 0 and "report" in capsys.readouterr().out
    assert main(["report", "--help"]) == 0
    assert "by=KEY" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("case", "argv", "needle"),
    [
        ("missing", ["nowhere"], "nowhere does not exist"),
        ("empty", ["empty"], "empty holds no run directories"),
        ("bad_metrics", ["runs"], "metrics.json"),
        ("bad_overrides", ["runs"], "overrides.yaml"),
        ("bad_by", ["runs", "by="], "expected by=KEY"),
        ("bad_by", ["runs", "by=a,,b"], "expected by=KEY"),
        ("bad_by", ["runs", "by=problem.nosie"], "no run has the key 'problem.nosie'"),
        ("bad_by", ["runs", "--bogus"], "unknown option '--bogus'"),
        ("no_eval", ["runs"], "none of the 1 runs has an evaluation"),
    ],
)
def test_bad_input_one_line_nothing_written(tmp_path, monkeypatch, capsys, case, argv, needle):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    metrics = {"table": {"hybrid": {"e": 1.0}}}
    run = make_run(tmp_path / "runs" / "0", ["problem=lv"], metrics=metrics)
    if case == "bad_metrics":
        (run / "eval" / "metrics.json").write_text('{"table": {"hybrid": ')
    if case == "bad_overrides":
        (run / ".hydra" / "overrides.yaml").write_text("- a=1\n- [unclosed")
    if case == "no_eval":
        shutil.rmtree(run / "eval")
    monkeypatch.chdir(tmp_path)
    code = main(["report", *argv])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert needle in err, err
    if case.startswith("bad_") and case != "bad_by":
        assert str(run) in err or "runs/0" in err, "the error names the file"
    assert not list(tmp_path.rglob("report*")) and not (tmp_path / "outputs").exists()
