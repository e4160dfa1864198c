"""problem=ct with phantoms drawn fresh for every batch: the vectorised sampler, a data file that
holds only val/test, a training stream that resumes bit for bit, and TV's λ chosen on the
validation split."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from hybridsim.config import ConfigError, ConvNetConfig, CTConfig, CTSolverConfig, RecipeConfig
from hybridsim.data import config_hash
from hybridsim.numerics.phantoms import (
    random_ellipses_batch,
    render_ellipses,
    render_ellipses_batch,
)
from hybridsim.numerics.reconstruction import psnr
from hybridsim.problems import tomography_eval
from hybridsim.problems.tomography import Tomography
from hybridsim.train import fit

FRESH = CTConfig(size=24, n_angles=12, n_val=3, n_test=2, n_ellipses=20, tv_iters=20)
NET = ConvNetConfig(activation="relu", width=[8, 8])
CPU32 = {"device": torch.device("cpu"), "dtype": torch.float32}  # the run's device and dtype


def test_batched_sampler_matches_the_per_phantom_renderer_and_its_distribution():
    gen = torch.Generator().manual_seed(4)
    e = random_ellipses_batch(6, 30.0, gen)
    images = render_ellipses_batch(e, 32, dtype=torch.float64)
    assert images.shape == (6, 32, 32)
    for i in range(6):
        rows = e[i][e[i, :, 0] != 0]
        torch.testing.assert_close(
            images[i], render_ellipses(rows, 32, dtype=torch.float64), rtol=0, atol=1e-12
        )
    # padded rows (value 0) draw nothing: a phantom with no ellipse is zero
    assert (
        render_ellipses_batch(torch.zeros(2, 3, 6) + torch.tensor([0, 1, 1, 0, 0, 0]), 8)
        .eq(0)
        .all()
    )
    # counts ~ Poisson(n_mean), values (U - 0.3) Exp(0.3), half-axes 0.2 Exp(1) (means)
    big = random_ellipses_batch(4000, 30.0, torch.Generator().manual_seed(0))
    counts = (big[..., 0] != 0).sum(1).double()
    assert abs(counts.mean() - 30.0) < 0.5 and abs(counts.var() - 30.0) < 3.0
    live = big[big[..., 0] != 0]
    assert abs(live[:, 0].mean() - 0.2 * 0.3) < 0.01  # E(U - 0.3) E(Exp(0.3))
    assert abs(live[:, 1:3].mean() - 0.2) < 0.01
    assert live[:, 3:5].min() >= -0.5 and live[:, 3:5].max() < 0.5


def test_rendered_phantom_is_the_same_sum_alone_or_in_any_batch():
    # a fixed summation order: phantom i's pixels do not depend on its batch neighbours (nor,
    # as no BLAS kernel is involved, on the machine), bit for bit
    e = random_ellipses_batch(5, 40.0, torch.Generator().manual_seed(11))
    together = render_ellipses_batch(e, (24, 31), dtype=torch.float64)
    for i in range(5):
        alone = render_ellipses_batch(e[i : i + 1], (24, 31), dtype=torch.float64)
        assert torch.equal(alone[0], together[i]), f"phantom {i} changed with its batch"
    shuffled = render_ellipses_batch(e[[3, 1, 4, 0, 2]], (24, 31), dtype=torch.float64)
    assert torch.equal(shuffled, together[[3, 1, 4, 0, 2]])
    # the chunk only groups the sum: the same image to rounding
    torch.testing.assert_close(
        render_ellipses_batch(e, (24, 31), torch.float64, chunk=3), together, rtol=0, atol=1e-12
    )


def test_the_stream_is_a_function_of_the_generator_state():
    problem = Tomography(FRESH)
    like = {"angles": torch.zeros(1, dtype=torch.float64)}
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    first = problem.batch(like, 3, -1, g1)
    state = g1.get_state()
    second = problem.batch(like, 3, -1, g1)
    assert torch.equal(first.targets["image"], problem.batch(like, 3, -1, g2).targets["image"])
    assert not torch.equal(first.targets["image"], second.targets["image"])
    g3 = torch.Generator()
    g3.set_state(state)
    again = problem.batch(like, 3, -1, g3)
    assert torch.equal(again.inputs["sinogram"], second.inputs["sinogram"])
    assert second.inputs["sinogram"].shape == (3, 12, 35)


def test_fresh_file_holds_only_val_and_test():
    problem = Tomography(FRESH)
    assert problem.generate("train", 1).arrays == {}
    assert problem.generate("val", 2).arrays["image"].shape == (3, 24, 24)
    # the stored training split's settings do not name a fresh file; they do a stored one
    same = Tomography(replace(FRESH, n_train=9999, seed_train=5, upsample_train=2))
    assert config_hash(problem.data_config()) == config_hash(same.data_config())
    stored = Tomography(replace(FRESH, train_data="stored"))
    other = Tomography(replace(FRESH, train_data="stored", seed_train=5))
    assert config_hash(stored.data_config()) != config_hash(other.data_config())
    assert config_hash(stored.data_config()) != config_hash(problem.data_config())


@pytest.mark.parametrize("coupling", ["update", "primal_dual"])
def test_training_resumes_bit_for_bit(tmp_path, monkeypatch, coupling):
    """Train N steps straight; train k, stop as a kill would (the step after k is lost), resume
    and train the rest: identical parameters (the phantom generator is in the checkpoint)."""
    import hybridsim.train as train_mod

    problem = Tomography(FRESH)
    solver = CTSolverConfig(name="gd", n_iter=2)
    val = problem.generate("val", 2).tensors(torch.device("cpu"), torch.float32)
    empty = problem.generate("train", 1).tensors(torch.device("cpu"), torch.float32)
    recipe = RecipeConfig(
        name="t", lr=1e-3, lr_schedule="cosine", steps=6, batch_size=2, unroll=[-1], val_every=3
    )

    def train(run_dir, stop_at=None):
        torch.manual_seed(0)
        model = problem.build_model(solver, NET, coupling, None)
        calls = {"n": 0}

        def check():
            calls["n"] += 1
            if stop_at is not None and calls["n"] == stop_at:
                raise KeyboardInterrupt("killed")

        monkeypatch.setattr(train_mod, "check_interrupt", check)
        fit(problem, model, empty, val, recipe, run_dir, seed=3, progress="none")
        return model

    straight = train(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b", stop_at=5)  # last.pt at step 3; step 4's update is lost
    resumed = train(tmp_path / "b")
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), f"{name} differs after resuming"


def test_tv_lambda_is_chosen_on_validation_and_used_at_test():
    problem = Tomography(replace(FRESH, tv_lam_grid=[1e-5, 1e-3, 1.0]))
    val = problem.generate("val", 2)
    model = problem.build_model(CTSolverConfig(name="gd", n_iter=2), NET, "update", None)
    chosen = problem.tune_baselines({"hybrid": model}, val, CPU32)
    sino, true = torch.as_tensor(val.arrays["sinogram"]), torch.as_tensor(val.arrays["image"])
    scores = {}
    for lam in (1e-5, 1e-3, 1.0):
        tv = tomography_eval.classical(problem, model, tv_lam=lam)["tv"]
        with torch.no_grad():
            scores[lam] = float(psnr(tv(sino), true).mean())
    # every grid value was scored as here; the search then refines around the grid's best
    val_psnr = chosen["tv_val_psnr"]
    np.testing.assert_allclose([val_psnr[f"{lam:g}"] for lam in scores], list(scores.values()))
    assert chosen["tv_lam"] == problem.tv_lam_chosen
    assert val_psnr[f"{chosen['tv_lam']:g}"] == max(val_psnr.values()) >= max(scores.values())
    grid_best = max(scores, key=scores.get)
    assert grid_best != 1.0, "a weight of 1 flattens the image; it cannot be best"
    assert 1e-5 < chosen["tv_lam"] < 1.0 and not chosen["tv_lam_at_grid_edge"]
    # a configured λ is used as it is, and nothing is tuned
    fixed = Tomography(replace(FRESH, tv_lam=2e-3))
    assert fixed.tune_baselines({"hybrid": model}, val, CPU32) == {}


def test_tv_lambda_search_goes_past_the_grid_when_the_best_is_at_its_edge(monkeypatch):
    """The scale of λ depends on the data term (Beer-Lambert's likelihood is ~mu² i0 times the
    least-squares term): an optimum beyond the grid is found, not reported as the grid's edge."""
    problem = Tomography(replace(FRESH, tv_lam_grid=[1e-4, 1e-3, 1e-2]))
    val = problem.generate("val", 2)
    model = problem.build_model(CTSolverConfig(name="gd", n_iter=2), NET, "update", None)
    true = torch.as_tensor(val.arrays["image"])
    wiggle = torch.rand(true.shape, generator=torch.Generator().manual_seed(0), dtype=true.dtype)

    def classical(problem, model, tv_lam):  # PSNR peaks at λ = 0.3, far above the grid
        error = 0.01 + abs(np.log10(tv_lam / 0.3))
        return {"tv": lambda sino: true + error * (wiggle - 0.5)}

    monkeypatch.setattr(tomography_eval, "classical", classical)
    chosen = tomography_eval.choose_tv_lambda(problem, model, val, [1e-4, 1e-3, 1e-2], CPU32)
    assert 0.1 <= chosen["tv_lam"] <= 1.0 and not chosen["tv_lam_at_grid_edge"]
    tried = sorted(float(k) for k in chosen["tv_val_psnr"])
    assert tried[-1] > chosen["tv_lam"], "the search stops one step past the optimum"
    # below the grid as well; with no extension allowed, the edge is reported
    capped = tomography_eval.choose_tv_lambda(
        problem, model, val, [3.0, 10.0], CPU32, max_extensions=0
    )
    assert capped["tv_lam"] == 3.0 and capped["tv_lam_at_grid_edge"]
    below = tomography_eval.choose_tv_lambda(problem, model, val, [3.0, 10.0], CPU32)
    assert 0.1 <= below["tv_lam"] <= 1.0 and not below["tv_lam_at_grid_edge"]


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"train_data": "disk"}, "problem.train_data"),
        ({"tv_lam_grid": []}, "problem.tv_lam_grid"),
        ({"tv_lam_grid": [1e-3, -1.0]}, "problem.tv_lam_grid"),
        ({"tv_lam": -1.0}, "problem.tv_lam"),
        ({"primal_dual_activation": "sigmoid"}, "problem.primal_dual_activation"),
    ],
)
def test_config_checks(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        CTConfig(**kw)


def test_learned_gd_on_fresh_phantoms_beats_the_solver_alone():
    """60 Adam steps on fresh phantoms: on a fixed batch from the same distribution, learned GD
    has a lower error than the plain descent it corrects (correction=none)."""
    problem = Tomography(FRESH)
    solver = CTSolverConfig(name="gd", n_iter=4)
    torch.manual_seed(0)
    model = problem.build_model(solver, NET, "update", None)
    alone = problem.build_model(solver, replace(NET, name="none", kind="none"), "update", None)
    like = {"angles": torch.zeros(1)}
    fixed = problem.batch(like, 8, -1, torch.Generator().manual_seed(99))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        loss = problem.loss(model, problem.batch(like, 4, -1, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        learned, plain = float(problem.loss(model, fixed)), float(problem.loss(alone, fixed))
    assert learned < 0.8 * plain, f"learned GD {learned:.4g} vs descent alone {plain:.4g}"
