"""The data sets with known independent factors: sprites and nongaussian-factors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from edvae.data import load_dataset
from edvae.data.factors import (
    FACTOR_FAMILIES,
    SPRITE_FACTORS,
    SPRITE_SHAPES,
    render_sprites,
    sample_factors,
    sprite_factor_values,
)
from edvae.data.synthetic import GENERATOR_SEED, SyntheticGenerator
from edvae.errors import EdvaeError


def _all(data, what):
    return torch.cat([getattr(data, f"{s}{what}") for s in ("train", "val", "test")])


def _max_abs_correlation(factors: torch.Tensor) -> float:
    corr = torch.corrcoef(factors.T.double())
    return float((corr - torch.eye(corr.shape[0], dtype=corr.dtype)).abs().max())


# ------------------------------------------------------------------------------------ sprites


@pytest.fixture(scope="module")
def sprites():
    return load_dataset("sprites", seed=0, size=32, n=3000)


def test_sprites_shapes_binary_values_and_factor_ranges(sprites):
    assert sprites.x_shape == (1, 32, 32) and sprites.likelihood == "bernoulli" and sprites.binarize == "none"
    assert [getattr(sprites, s).shape[0] for s in ("train", "val", "test")] == [2400, 300, 300]
    assert sprites.factor_names == SPRITE_FACTORS
    x, v = _all(sprites, ""), _all(sprites, "_factors")
    assert v.shape == (3000, 5) and v.dtype == torch.float32
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert bool((x.sum((1, 2, 3)) >= 4).all())  # every sprite is drawn
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1)
    assert float(border.sum()) == 0  # and lies inside the image
    grid = sprite_factor_values(6, 40, 16)
    for k, values in enumerate(grid):  # every value lies on its grid, and (n >> grid) all are used
        assert bool(torch.isin(v[:, k], values).all())
        assert v[:, k].unique().numel() == len(values)
    assert float(v[:, 2].max()) < 2 * math.pi and float(v[:, 1].min()) == 0.5
    assert torch.unique(v, dim=0).shape[0] == 3000  # drawn without replacement


def test_sprites_are_determined_by_the_seed():
    a, b = load_dataset("sprites", seed=3, n=60), load_dataset("sprites", seed=3, n=60)
    c = load_dataset("sprites", seed=4, n=60)
    assert torch.equal(a.train, b.train) and torch.equal(a.test_factors, b.test_factors)
    assert not torch.equal(a.train_factors, c.train_factors)


def test_sprites_at_64_pixels():
    data = load_dataset("sprites", seed=0, size=64, n=100)
    assert data.x_shape == (1, 64, 64) and data.info["factor_sizes"]["position_x"] == 32
    # the same factors drawn at 32 pixels cover about a quarter of the pixels
    small = render_sprites(data.train_factors, 32)
    ratio = data.train.sum((1, 2, 3)) / small.sum((1, 2, 3))
    assert 3.0 < float(ratio.median()) < 5.0


def test_the_factors_are_independent_in_the_sample(sprites):
    # without replacement from the full grid the sample correlations are ~ N(0, 1/n)
    assert _max_abs_correlation(_all(sprites, "_factors")) < 4 / math.sqrt(3000)


def test_every_sprite_factor_changes_the_image(sprites):
    x, v = _all(sprites, ""), _all(sprites, "_factors")
    mass = x.sum((1, 2, 3))
    rows = torch.arange(32, dtype=torch.float32) + 0.5
    centre_x = (x.sum((1, 2)) * rows).sum(1) / mass / 32
    centre_y = (x.sum((1, 3)) * rows).sum(1) / mass / 32
    assert torch.corrcoef(torch.stack([centre_x, v[:, 3]]))[0, 1] > 0.98
    assert torch.corrcoef(torch.stack([centre_y, v[:, 4]]))[0, 1] > 0.98
    for shape in range(len(SPRITE_SHAPES)):  # the area grows as scale^2 within each shape
        pick = v[:, 0] == shape
        assert torch.corrcoef(torch.stack([mass[pick], v[pick, 1].square()]))[0, 1] > 0.9
    base = torch.tensor([2.0, 1.0, 0.0, 0.5, 0.5])  # a heart: no rotational symmetry
    for k, values in enumerate(sprite_factor_values(6, 10, 16)):
        rows_k = base.repeat(len(values), 1)
        rows_k[:, k] = values
        images = render_sprites(rows_k, 32).flatten(1)
        assert torch.unique(images, dim=0).shape[0] == len(values), SPRITE_FACTORS[k]


def test_sprites_refuse_bad_options():
    with pytest.raises(EdvaeError, match="exceeds"):
        load_dataset("sprites", seed=0, size=8, n=10_000, scales=1, orientations=2)
    with pytest.raises(EdvaeError, match="size"):
        load_dataset("sprites", seed=0, size=4)
    with pytest.raises(EdvaeError, match="no option"):
        load_dataset("sprites", seed=0, colour=1)


# ------------------------------------------------------------------------ nongaussian-factors


def test_nongaussian_factors_shapes_moments_and_families():
    data = load_dataset("nongaussian-factors", seed=0, n_train=20_000, n_val=10, n_test=10)
    assert data.x_shape == (16,) and data.likelihood == "gaussian"
    assert data.factor_names == tuple(f"{f}_{k}" for k, f in enumerate(FACTOR_FAMILIES))
    v = data.train_factors
    assert v.shape == (20_000, 4) and data.test_factors.shape == (10, 4)
    se = 1 / math.sqrt(20_000)
    assert bool((v.mean(0).abs() < 4 * se).all())  # zero mean
    assert bool(((v.var(0) - 1).abs() < 4 * 3 * se).all())  # unit variance (sd of s^2 <= ~3/sqrt n here)
    uniform, bimodal, laplace, exponential = v.double().T
    assert float(uniform.abs().max()) <= math.sqrt(3)
    assert float(exponential.min()) >= -1
    excess = lambda c: float(((c - c.mean()) ** 4).mean() / c.var() ** 2 - 3)  # noqa: E731
    assert excess(uniform) == pytest.approx(-1.2, abs=0.1)  # all four are non-Gaussian
    assert excess(laplace) == pytest.approx(3.0, abs=0.6)
    assert excess(exponential) == pytest.approx(6.0, abs=1.5)
    assert float((bimodal.abs() < 0.3).double().mean()) < 0.1  # little mass between the modes
    assert _max_abs_correlation(v) < 4 * se


def test_nongaussian_factors_are_the_generator_image_plus_noise():
    data = load_dataset("nongaussian-factors", seed=1, n_train=500, n_val=5, n_test=5, noise_std=0.0)
    g = SyntheticGenerator(4, 16, seed=GENERATOR_SEED)
    with torch.no_grad():
        torch.testing.assert_close(data.train, g(data.train_factors))
        for k in range(4):  # each factor moves x
            moved = data.train_factors.clone()
            moved[:, k] += 0.5
            assert float((g(moved) - data.train).norm(dim=1).min()) > 1e-3
    noisy = load_dataset("nongaussian-factors", seed=1, n_train=500, n_val=5, n_test=5, noise_std=0.1)
    assert torch.equal(noisy.train_factors, data.train_factors)
    assert float((noisy.train - data.train).std()) == pytest.approx(0.1, rel=0.05)


def test_nongaussian_factors_are_determined_by_the_seed_and_cycle_the_families():
    a = load_dataset("nongaussian-factors", seed=2, n_factors=6, obs_dim=10, n_train=50, n_val=5, n_test=5)
    b = load_dataset("nongaussian-factors", seed=2, n_factors=6, obs_dim=10, n_train=50, n_val=5, n_test=5)
    assert torch.equal(a.train, b.train) and torch.equal(a.val_factors, b.val_factors)
    assert a.info["families"] == FACTOR_FAMILIES + FACTOR_FAMILIES[:2]
    with pytest.raises(EdvaeError, match="obs_dim"):
        load_dataset("nongaussian-factors", seed=0, n_factors=4, obs_dim=4)
    with pytest.raises(EdvaeError, match="family"):
        sample_factors(3, ["cauchy"], torch.Generator())


def test_datasplits_checks_the_factor_shape():
    data = load_dataset("nongaussian-factors", seed=0, n_train=20, n_val=5, n_test=5)
    with pytest.raises(EdvaeError, match="train_factors"):
        type(data)(**{**data.__dict__, "train_factors": data.train_factors[:, :2]})
    plain = load_dataset("gaussian", seed=0, n_train=20, n_val=5, n_test=5)
    assert plain.train_factors is None and plain.factor_names == ()


# ------------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "data, model",
    [
        ({"name": "sprites", "options": {"n": 200, "size": 16}}, {"network": "conv", "latent_dim": 4}),
        (
            {"name": "nongaussian-factors", "options": {"n_train": 256, "n_val": 64, "n_test": 64}},
            {"network": "mlp", "latent_dim": 4},
        ),
    ],
    ids=["sprites-conv", "nongaussian-factors-mlp"],
)
def test_a_tiny_run_trains_on_the_factor_data(tmp_path, data, model):
    from conftest import tiny_raw
    from edvae.config import validate_config
    from edvae.training import train

    raw = tiny_raw(model=dict(model, prior="normal"), train={"epochs": 2, "batch_size": 64})
    raw["data"] = data  # replace, not merge: the data sets have different options
    result = train(validate_config(raw), tmp_path / "run")
    assert result.completed
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert len(val) == 2 and all(math.isfinite(r["elbo_mc"]) for r in val)
    assert val[-1]["elbo_mc"] > val[0]["elbo_mc"]
