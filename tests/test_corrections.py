"""One schema per correction kind: every YAML option composes to the schema of its kind and
lists only what differs from it; a key a kind lacks is one clear line; run directories saved
with the old shared schema (every key on every kind) still evaluate and resume."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from tiny import LV_TINY

from hybridsim.cli import main
from hybridsim.config import (
    CORRECTION_SCHEMAS,
    LEGACY_DEFAULTS,
    ConfigError,
    LVConfig,
    ResNetConfig,
    conf_dir,
    correction_config,
    register_schemas,
    typed_train_config,
    upgrade_saved_correction,
)
from hybridsim.problems import registered

EXE = shutil.which("hybridsim")
OPTIONS = sorted(p.stem for p in Path(conf_dir(), "correction").glob("*.yaml"))


@pytest.mark.parametrize("option", OPTIONS)
def test_yaml_lists_only_what_differs_from_its_schema(option):
    register_schemas()
    text = OmegaConf.create(Path(conf_dir(), "correction", f"{option}.yaml").read_text())
    raw = yaml.safe_load(Path(conf_dir(), "correction", f"{option}.yaml").read_text())
    kind = next(v for d in raw["defaults"] if isinstance(d, dict) for v in d.values())
    schema = CORRECTION_SCHEMAS[kind]
    defaults = asdict(schema())
    for key, value in text.items():
        if key == "defaults":
            continue
        assert key in defaults, f"{option}.yaml sets {key}, which kind {kind} lacks"
        if not OmegaConf.is_interpolation(text, key):
            assert value != defaults[key], f"{option}.yaml repeats the default {key}={value}"
    problem = next(c for c in registered().values() if option in c.corrections)
    cfg = correction_config(option, problem.schema())
    assert type(cfg) is schema and cfg.name == option and cfg.kind == kind


def test_resnet_paper_is_the_resnet_schema_with_three_changes():
    cfg = correction_config("resnet_paper", registered()["ns"].schema())
    assert cfg == ResNetConfig(name="resnet_paper", width=[32], kernel_size=5, blocks=5)


def test_each_kind_checks_its_own_keys():
    with pytest.raises(ConfigError, match="correction.kernel_size must be odd"):
        ResNetConfig(kernel_size=4)
    with pytest.raises(ConfigError, match="correction.activation=swish"):
        CORRECTION_SCHEMAS["mlp"](activation="swish")
    with pytest.raises(ConfigError, match="correction.blocks must be >= 0"):
        ResNetConfig(blocks=-1)


@pytest.mark.skipif(EXE is None, reason="the hybridsim console script is not installed")
@pytest.mark.parametrize("override", ["correction.activation=relu", "+correction.activation=relu"])
def test_a_key_the_kind_lacks_is_one_line(tmp_path, override):
    proc = subprocess.run(
        [EXE, "train", "problem=ns", override], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hybridsim train: error: correction.activation is not a setting")
    assert "ResNetConfig" in lines[0] and "kernel_size" in lines[0], lines[0]
    assert not list(tmp_path.iterdir()), "nothing written"


def test_a_kind_that_does_not_fit_its_schema_is_refused(capsys):
    assert main(["train", "correction=mlp", "correction.kind=resnet"]) == 1
    assert "correction.kind=resnet does not fit correction=mlp" in capsys.readouterr().err


# ------------------------------------------------- run directories of the old shared schema
def _old_section(section: dict) -> dict:
    """The correction section as hybridsim up to 07544ef wrote it: every key of the one shared
    schema, in its order, the shared defaults for the keys the kind lacks."""
    order = ("name", "kind", "width", "activation", "init_scale", "kernel_size", "blocks")
    return {k: section.get(k, LEGACY_DEFAULTS.get(k)) for k in (*order, "padding")}


def test_upgrade_drops_only_the_keys_the_kind_never_read():
    old = _old_section({"name": "mlp", "kind": "mlp", "width": [8], "activation": "relu"})
    old["kernel_size"] = 5  # set then, ignored by an mlp
    assert upgrade_saved_correction(old) == {
        "name": "mlp",
        "kind": "mlp",
        "width": [8],
        "activation": "relu",
        "init_scale": 0.1,
    }
    none = _old_section({"name": "none", "kind": "none", "width": [8]})
    assert upgrade_saved_correction(none) == {"name": "none", "kind": "none"}
    with pytest.raises(ConfigError, match="correction.kind=rnn is not a kind"):
        upgrade_saved_correction({"name": "x", "kind": "rnn"})


def test_saved_config_with_an_unknown_key_is_still_refused():
    old = _old_section({"name": "mlp", "kind": "mlp"}) | {"depth": 3}
    with pytest.raises(Exception, match="depth"):  # OmegaConf's ConfigKeyError, naming it
        typed_train_config(
            {
                "problem": asdict(LVConfig()),
                "solver": {"name": "rk4", "kind": "ode"},
                "correction": old,
                "recipe": {"name": "lv"},
            }
        )


def _make_old_format(run_dir: Path, extra_override: str) -> None:
    """Rewrite a run directory as the previous hybridsim wrote it: the correction section with
    every shared key, and an override of a key the kind never read."""
    path = run_dir / "config_resolved.yaml"
    config = yaml.safe_load(path.read_text())
    config["correction"] = _old_section(config["correction"])
    key, value = extra_override.split("=", 1)
    config["correction"][key.split(".", 1)[1]] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    overrides = run_dir / ".hydra" / "overrides.yaml"
    overrides.write_text(yaml.safe_dump([*yaml.safe_load(overrides.read_text()), extra_override]))


@pytest.mark.parametrize(
    "correction,extra",
    [("mlp", "correction.kernel_size=5"), ("none", "correction.width=[8]")],
    ids=["mlp", "none"],
)
def test_old_run_directory_evaluates_and_resumes(tmp_path, monkeypatch, capsys, correction, extra):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    tiny = [a for a in LV_TINY if not (correction == "none" and a.startswith("correction."))]
    argv = ["train", *tiny, f"correction={correction}", f"hydra.run.dir={run_dir}"]
    assert main([*argv, "evaluate=false"]) == 0
    last = run_dir / "checkpoints" / "last.pt"
    trained = torch.load(last, weights_only=True)["model"]
    _make_old_format(run_dir, extra)
    capsys.readouterr()

    assert main(["eval", f"run={run_dir}"]) == 0, capsys.readouterr().err
    assert (run_dir / "eval" / "metrics.json").is_file()

    # Resume: the saved overrides replayed (the old key skipped), the saved config compared
    # with the new one (the old keys dropped); training again from scratch gives the same run.
    last.unlink()
    (run_dir / "meta.json").unlink()
    assert main(["train", f"resume={run_dir}", "evaluate=false"]) == 0, capsys.readouterr().err
    again = torch.load(last, weights_only=True)["model"]
    assert again.keys() == trained.keys()
    assert all(torch.equal(again[k], trained[k]) for k in trained)
    saved = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())["correction"]
    kind_keys = {f.name for f in fields(CORRECTION_SCHEMAS[correction])}
    assert set(saved) == kind_keys, "the resumed run saves its config in the new schema"
