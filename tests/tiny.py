"""Tiny settings shared by CLI-level tests: a run of a few seconds that still trains,
checkpoints, validates and logs every step (tests add what they vary)."""

LV_TINY = [
    "problem=lv",
    "problem.t_train=1.0",
    "problem.t_test=2.0",
    "recipe.steps=6",
    "recipe.polish=none",
    "recipe.val_every=2",
    "recipe.log_every=1",
    "recipe.unroll=[3]",
    "recipe.baselines=false",
    "progress=none",
    "correction.width=[8]",
]

CT_TINY = [
    "problem=ct",
    "problem.size=24",
    "problem.n_angles=12",
    "problem.n_train=8",
    "problem.n_val=2",
    "problem.n_test=2",
    "problem.n_ellipses=20",
    "problem.tv_iters=10",
    "solver.n_iter=3",
    "correction.width=[8,8]",
]
