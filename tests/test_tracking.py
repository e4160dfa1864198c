"""Trackers beside metrics.jsonl (logger=...), with the real libraries in a temporary folder:
TensorBoard event files read back with its EventAccumulator, the MLflow run read back through
MlflowClient, the W&B offline files; an interrupted run resumed without duplicated rows; a
tracker whose library is missing refused in one line before anything is written."""

import csv
import json
import signal
from pathlib import Path

import pytest
from tiny import LV_TINY

from hybridsim import cli_resume, interrupts, train
from hybridsim.cli import main
from hybridsim.config import ConfigError

TINY = LV_TINY


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_every_tracker_resumed_without_duplicates(tmp_path, monkeypatch, capsys):
    """logger=many on a run interrupted at step 3 (last checkpoint: step 2), then resumed: every
    tracker holds each row of metrics.jsonl once, the config, the evaluation and the plots."""
    pytest.importorskip("tensorboard")  # installed by `make install` (.[tracking]); CI runs it
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "run"
    calls = {"n": 0}

    def interrupt_at_step_4() -> None:  # after steps 1-3 were logged, step 2 checkpointed
        calls["n"] += 1
        if calls["n"] == 4:
            raise interrupts.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(train, "check_interrupt", interrupt_at_step_4)
    argv = ["train", *TINY, "logger=many", "evaluate=false", f"hydra.run.dir={run}"]
    assert main(argv) == 143
    capsys.readouterr()
    assert json.loads((run / "meta.json").read_text())["status"] == "interrupted"
    state = json.loads((run / "tracking" / "mlflow.json").read_text())
    assert state["sent"]["hybrid"] == [3, 1], "rows up to step 3 reached the tracker"
    client = mlflow.tracking.MlflowClient(state["tracking_uri"])
    assert client.get_run(state["run_id"]).info.status == "KILLED"

    monkeypatch.setattr(train, "check_interrupt", lambda: None)
    assert main(["train", f"resume={run}", "evaluate=true"]) == 0, capsys.readouterr().err
    rows = _rows(run)
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    assert train_steps == [1, 2, 3, 4, 5, 6]
    losses = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    val_steps = sorted({r["step"] for r in rows if "val/loss" in r})

    # MLflow: the same run, params = the resolved config, each metric once per step
    assert json.loads((run / "tracking" / "mlflow.json").read_text())["run_id"] == state["run_id"]
    got = client.get_run(state["run_id"])
    assert got.info.status == "FINISHED"
    assert got.data.params["recipe.lr"] == "0.005" and got.data.params["problem.name"] == "lv"
    assert got.data.params["recipe.unroll"] == "[3]"
    history = client.get_metric_history(state["run_id"], "hybrid/train/loss")
    assert sorted(m.step for m in history) == train_steps, "no step twice after the resume"
    for m in history:
        assert m.value == pytest.approx(losses[m.step], rel=1e-12)
    val = client.get_metric_history(state["run_id"], "hybrid/val/loss")
    assert sorted({m.step for m in val}) == val_steps
    assert "eval/hybrid/rel_l2_window" in got.data.metrics
    eval_files = {a.path for a in client.list_artifacts(state["run_id"], "eval")}
    assert {"eval/metrics.json", "eval/table.md", "eval/plots"} <= eval_files
    assert any(a.path.endswith(".png") for a in client.list_artifacts(state["run_id"], "plots"))
    assert (tmp_path / "outputs" / "mlflow.db").is_file(), "the store lives under outputs/"

    assert main(["eval", f"run={run}"]) == 0, capsys.readouterr().err  # a new evaluation
    again = client.get_metric_history(state["run_id"], "eval/hybrid/rel_l2_window")
    assert len(again) == 2 and client.get_run(state["run_id"]).info.status == "FINISHED"

    # TensorBoard: two event files (before and after the resume) read back as one history
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = acc.Scalars("hybrid/train/loss")
    assert [e.step for e in scalars] == train_steps
    for e in scalars:
        assert e.value == pytest.approx(losses[e.step], rel=1e-6)
    assert [e.step for e in acc.Scalars("hybrid/val/loss")] == val_steps
    assert "eval/hybrid/rel_l2_window" in tags["scalars"]
    assert "plots/training" in tags["images"] and any(
        t.startswith("eval/plots") for t in tags["images"]
    )
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 3  # training, resume, eval

    # W&B offline: one run id, an offline run directory per attempt, each with its data file
    wandb_id = json.loads((run / "tracking" / "wandb.json").read_text())["run_id"]
    offline = sorted((run / "wandb").glob(f"offline-run-*-{wandb_id}"))
    assert len(offline) == 3 and all((d / f"run-{wandb_id}.wandb").is_file() for d in offline)

    # CSV: metrics.jsonl exactly, and the evaluation table
    with (run / "metrics.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(int(r["step"]), r["phase"]) for r in table] == [(r["step"], r["phase"]) for r in rows]
    assert float(table[0]["train/loss"]) == pytest.approx(rows[0]["train/loss"], rel=1e-12)
    with (run / "eval" / "table.csv").open() as f:
        assert {"model": "hybrid", "metric": "rel_l2_window"}.items() <= next(
            csv.DictReader(f)
        ).items()


def test_missing_library_names_the_extra(monkeypatch, expect_one_line_error):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    expect_one_line_error(
        ["train", "logger=[tensorboard,mlflow]"],
        "logger=mlflow needs MLflow, which is not installed: pip install -e '.[mlflow]'",
    )


@pytest.mark.parametrize(
    "argv,needle",
    [
        (
            ["train", "logger=tensorboard", "logger.tensorboard.foo=1"],
            "logger.tensorboard.foo is not a setting",
        ),
        (["train", "logger=nosuch"], "logger"),
        (["train", "logger=wandb", "logger.wandb.mode=sometimes"], "logger.wandb.mode=sometimes"),
    ],
)
def test_bad_logger_settings(argv, needle, expect_one_line_error):
    expect_one_line_error(argv, needle)


def test_resume_never_replays_where_data_is_sent():
    """A run directory is data: its overrides may choose trackers, never a remote target."""
    source = Path("run/.hydra/overrides.yaml")
    assert cli_resume._replayable("logger=[tensorboard,mlflow]", source)
    for item in ("logger.mlflow.tracking_uri=http://example.org", "logger.wandb.mode=online"):
        with pytest.raises(ConfigError, match="given on the command line"):
            cli_resume._replayable(item, source)
