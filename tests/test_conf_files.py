"""The shipped YAML files list only what differs from their schema: one source of truth per
default (a value repeated in a YAML could drift from the schema's without anyone noticing)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hybridsim.config import PROBLEM_SCHEMAS, SOLVER_SCHEMAS, load_schemas
from hybridsim.schemas import RecipeConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
FILES = sorted(
    str(p.relative_to(CONF))
    for group in ("problem", "solver", "recipe")
    for p in (CONF / group).glob("*.yaml")
)


def _defaults(schema: type) -> dict:
    out = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _node_and_schema(rel: str) -> tuple[dict, type]:
    load_schemas()
    cfg = OmegaConf.to_container(OmegaConf.create((CONF / rel).read_text()), resolve=False)
    group, name = rel.split("/")[0], Path(rel).stem
    if group == "problem":
        return cfg.get("problem") or {}, PROBLEM_SCHEMAS[name]
    if group == "solver":
        return cfg, SOLVER_SCHEMAS[cfg.get("kind", "ode")]
    return cfg, RecipeConfig


@pytest.mark.parametrize("rel", FILES)
def test_a_config_file_repeats_no_schema_default(rel):
    node, schema = _node_and_schema(rel)
    defaults = _defaults(schema)
    repeated = [
        k
        for k, v in node.items()
        if k not in ("name", "kind", "defaults")
        and k in defaults
        and not (isinstance(v, str) and "${" in v)  # a per-scenario default (a resolver)
        and v == defaults[k]
        and type(v) is type(defaults[k])
    ]
    assert not repeated, f"conf/{rel} repeats the schema's defaults of {repeated}: delete them"


def test_the_files_are_found():
    assert {"problem/lv.yaml", "problem/ct.yaml", "solver/rk4.yaml", "recipe/sol.yaml"} <= set(
        FILES
    )
