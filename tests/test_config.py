"""Every option of every config group composes into typed configs; mismatches are rejected."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from hybridsim.cli import config_path
from hybridsim.config import ConfigError, register_schemas, to_typed
from hybridsim.problems.base import ProblemError, registered

CONF = Path(__file__).resolve().parents[1] / "conf"
register_schemas()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def typed(overrides: list[str], name: str = "train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    return to_typed(cfg)


COMBOS = [
    (problem, group, option)
    for problem, cls in sorted(registered().items())
    for group, valid in (("solver", cls.solvers), ("correction", cls.corrections))
    for option in valid
]


@pytest.mark.parametrize("problem,group,option", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_every_fitting_option_composes(problem, group, option):
    cls = registered()[problem]
    cfg = typed([f"problem={problem}", f"{group}={option}"])
    assert getattr(cfg, group).name == option
    try:
        coupling = cls(cfg.problem).check_choices(cfg.solver.name, cfg.correction.name, None)
    except ProblemError:  # e.g. a classical solver with nothing to correct: the solver alone
        cfg = typed([f"problem={problem}", f"{group}={option}", "correction=none"])
        coupling = cls(cfg.problem).check_choices(cfg.solver.name, cfg.correction.name, None)
    assert coupling in cls.couplings


def test_every_yaml_option_belongs_to_some_problem():
    for group, attr in (("solver", "solvers"), ("correction", "corrections")):
        claimed = {o for cls in registered().values() for o in getattr(cls, attr)}
        assert set(options(group)) <= claimed, f"{group} options nobody accepts"
    assert set(options("problem")) == set(registered())


@pytest.mark.parametrize("recipe", options("recipe"))
def test_every_recipe_composes(recipe):
    assert typed([f"recipe={recipe}"]).recipe.name == recipe


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = typed([f"+experiment={experiment}"])
    registered()[cfg.problem.name](cfg.problem).check_choices(
        cfg.solver.name, cfg.correction.name, cfg.coupling
    )


@pytest.mark.parametrize("name", ["generate", "eval"])
def test_other_commands_compose(name):
    overrides = ["run=/some/run"] if name == "eval" else []
    assert typed(overrides, name=name) is not None


def test_mismatched_solver_is_rejected_naming_choices():
    problems = sorted(registered().items())
    for (name, cls), (_, other) in zip(problems, problems[1:] + problems[:1], strict=True):
        foreign = next(s for s in other.solvers if s not in cls.solvers)
        cfg = typed([f"problem={name}", f"solver={foreign}"])
        with pytest.raises(ProblemError, match="choose one of: " + ", ".join(cls.solvers)):
            cls(cfg.problem).check_choices(cfg.solver.name, cfg.correction.name, cfg.coupling)


def test_range_errors_name_the_key():
    with pytest.raises(ConfigError, match="recipe.batch_size"):
        typed(["recipe.batch_size=-3"])


def test_installed_config_path_points_at_these_configs():
    path = config_path()
    assert path.startswith("pkg://") or Path(path) == CONF
