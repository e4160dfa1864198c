"""Tiny settings shared by CLI-level tests: a run of a few seconds that still trains,
checkpoints, validates and logs every step (tests add what they vary). The problem-specific part
is each problem's own ``Problem.tiny`` (what the registry tests run), never a copy of it."""

from hybridsim.problems import registered


def tiny(name: str) -> list[str]:
    """``problem=<name>`` and that problem's declared tiny overrides."""
    return [f"problem={name}", *registered()[name].tiny]


LV_TINY = [
    *tiny("lv"),
    "recipe.steps=6",
    "recipe.polish=none",
    "recipe.val_every=2",
    "recipe.log_every=1",
    "recipe.unroll=[3]",
    "recipe.baselines=false",
    "progress=none",
]

CT_TINY = tiny("ct")

# coarse 32 x 16 against 64 x 32, a short warm-up and rollouts: seconds, not minutes
NS_TINY = tiny("ns")
