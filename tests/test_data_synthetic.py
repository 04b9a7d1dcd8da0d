"""Synthetic data sets and their ground truth: the generative process and exact log p(x)."""

from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import distributions as D
from torch import nn

from edvae.data import GroundTruth, SyntheticGenerator, dataset_options, load_dataset
from edvae.errors import EdvaeError


@pytest.fixture(scope="module")
def gaussian():
    return load_dataset("gaussian", seed=0)


@pytest.fixture(scope="module")
def ring():
    return load_dataset("complex", seed=0)


def _linear_truth(latent_dim: int, obs_dim: int, noise_std: float, seed: int = 0) -> tuple[GroundTruth, nn.Linear]:
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(latent_dim, obs_dim)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(obs_dim, latent_dim, generator=gen) / math.sqrt(latent_dim))
        linear.bias.copy_(0.3 * torch.randn(obs_dim, generator=gen))
    prior = D.Independent(D.Normal(torch.zeros(latent_dim), torch.ones(latent_dim)), 1)
    return GroundTruth(prior, linear, noise_std), linear


def _closed_form(linear: nn.Linear, noise_std: float, x: torch.Tensor) -> torch.Tensor:
    """x ~ N(b, W W^T + s^2 I) when z ~ N(0, I) and x = W z + b + N(0, s^2 I)."""
    w, b = linear.weight.double(), linear.bias.double()
    cov = w @ w.T + noise_std**2 * torch.eye(w.shape[0], dtype=torch.float64)
    return D.MultivariateNormal(b, covariance_matrix=cov).log_prob(x.double())


# ---------------------------------------------------------------------------- data sets
def test_defaults_and_shapes(gaussian):
    assert gaussian.train.shape == (10_000, 16)
    assert gaussian.val.shape == (2_000, 16) and gaussian.test.shape == (2_000, 16)
    assert all(t.dtype == torch.float32 for t in (gaussian.train, gaussian.val, gaussian.test))
    assert gaussian.x_shape == (16,) and gaussian.likelihood == "gaussian" and gaussian.binarize == "none"
    assert gaussian.train_labels is None
    truth = gaussian.ground_truth
    assert truth.latent_dim == 2 and truth.obs_dim == 16 and truth.noise_std == 0.1
    assert truth.prior.event_shape == (2,)
    assert set(truth.latents) == {"train", "val", "test"} and truth.latents["train"].shape == (10_000, 2)
    assert not any(p.requires_grad for p in truth.generator.parameters())
    assert "gaussian" in gaussian.describe() and "10000/2000/2000" in gaussian.describe()
    # g is O(1): neither vanishing nor exploding outputs
    assert 0.3 < gaussian.train.std().item() < 2.0


def test_deterministic_for_a_seed_and_same_process_across_seeds(gaussian):
    again = load_dataset("gaussian", seed=0)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(gaussian, split), getattr(again, split))
    other = load_dataset("gaussian", seed=1, n_train=100)
    assert not torch.equal(gaussian.test, other.test)
    # g belongs to the data-set definition, not to the seed
    mine, theirs = gaussian.ground_truth.generator.state_dict(), other.ground_truth.generator.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    # the splits use independent streams: a smaller train set leaves the test set alone
    smaller = load_dataset("gaussian", seed=0, n_train=500)
    assert torch.equal(smaller.test, gaussian.test) and smaller.train.shape == (500, 16)


def test_data_follow_the_generative_process(gaussian, ring):
    for data in (gaussian, ring):
        truth = data.ground_truth
        z = truth.latents["train"]
        residual = data.train - truth.generator(z)
        assert residual.mean().abs() < 0.01
        assert residual.std().item() == pytest.approx(truth.noise_std, rel=0.02)
    z = gaussian.ground_truth.latents["train"]
    noise = (gaussian.train - gaussian.ground_truth.generator(z)).flatten()[: z.numel()]
    assert torch.corrcoef(torch.stack([noise, z.flatten()]))[0, 1].abs() < 0.05  # noise and latents independent
    assert z.mean(0).abs().max() < 0.05
    assert torch.allclose(torch.cov(z.T), torch.eye(2), atol=0.05)
    # mog_ring: the latents lie on the ring of radius 2 and carry their component as a label
    radius = ring.ground_truth.latents["train"].norm(dim=1)
    assert radius.mean().item() == pytest.approx(2.0, abs=0.1)
    assert ring.train_labels is not None and set(ring.train_labels.unique().tolist()) == set(range(8))


def test_complex_accepts_other_priors_and_their_options():
    for prior in ("banana", "student_t", "laplace"):
        data = load_dataset("complex", prior=prior, n_train=50, n_val=10, n_test=10)
        assert data.ground_truth.prior_name == prior and data.train.shape == (50, 16)
        assert torch.isfinite(data.ground_truth.prior.log_prob(data.ground_truth.latents["train"])).all()
    wide = load_dataset("complex", prior_options={"radius": 4.0}, n_train=500, n_val=10, n_test=10)
    assert wide.ground_truth.latents["train"].norm(dim=1).mean().item() == pytest.approx(4.0, abs=0.2)
    other_shape = load_dataset("gaussian", latent_dim=3, obs_dim=10, noise_std=0.5, n_train=20, n_val=5, n_test=5)
    assert other_shape.train.shape == (20, 10) and other_shape.ground_truth.latent_dim == 3


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("gaussian", {"nosie_std": 0.1}, "valid options: latent_dim"),
        ("complex", {"prior": "no_such_prior"}, "no_such_prior"),
        ("gaussian", {"noise_std": -1.0}, "noise_std"),
        ("gaussian", {"obs_dim": 2}, "obs_dim"),
        ("gaussian", {"n_train": 0}, "n_train"),
        ("complex", {"prior_options": [1, 2]}, "prior_options"),
        ("mnist", {}, "gaussian, complex, digits, mnist5k, file"),
    ],
)
def test_bad_options_are_refused(name, options, message):
    with pytest.raises(EdvaeError, match=message):
        load_dataset(name, **options)


def test_path_and_seed_are_checked():
    with pytest.raises(EdvaeError, match="only used by dataset 'file'"):
        load_dataset("gaussian", path="x.npy")
    with pytest.raises(EdvaeError, match="seed"):
        load_dataset("gaussian", seed=-1)
    assert "noise_std" in dataset_options("complex") and dataset_options("complex")["prior"] == "mog_ring"


def test_generator_is_injective_on_a_grid():
    g = SyntheticGenerator(2, 16)
    z = torch.cartesian_prod(torch.linspace(-4, 4, 60), torch.linspace(-4, 4, 60))
    with torch.no_grad():
        gz = g(z)
    dz, dg = torch.cdist(z, z), torch.cdist(gz, gz)
    off = ~torch.eye(len(z), dtype=torch.bool)
    # the linear part 0.5 * z (rotated) bounds ||g(z) - g(z')|| from below by 0.5 ||z - z'||
    assert (dg[off] / dz[off]).min() >= 0.5 - 1e-4


# ---------------------------------------------------------------------------- exact log p(x)
@pytest.mark.parametrize("latent_dim", [1, 2])
def test_grid_matches_the_linear_gaussian_closed_form(latent_dim):
    truth, linear = _linear_truth(latent_dim, 16, 0.1)
    x, _ = truth.sample(300, seed=3)
    exact = _closed_form(linear, 0.1, x)
    estimate = truth.true_log_likelihood(x)
    assert estimate.dtype == torch.float64 and estimate.shape == (300,)
    assert (estimate - exact).abs().max().item() < 1e-3


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), noise_std=st.floats(0.01, 3.0), latent_dim=st.sampled_from([1, 2]))
@example(seed=0, noise_std=1.0, latent_dim=2)  # broad posterior reaching the edge of the first grid
@example(seed=2, noise_std=0.03, latent_dim=1)  # posterior between points: two half-grids agree by accident
def test_grid_matches_closed_form_for_random_linear_maps_and_noise(seed, noise_std, latent_dim):
    truth, linear = _linear_truth(latent_dim, 8, noise_std, seed=seed)
    x, _ = truth.sample(20, seed=seed)
    assert (truth.true_log_likelihood(x) - _closed_form(linear, noise_std, x)).abs().max().item() < 1e-3


def test_importance_sampling_matches_closed_form_in_three_dimensions():
    truth, linear = _linear_truth(3, 12, 0.1)
    x, _ = truth.sample(10, seed=4)
    estimate = truth.true_log_likelihood(x, num_samples=4000)  # auto: importance sampling for D > 2
    assert (estimate - _closed_form(linear, 0.1, x)).abs().max().item() < 0.02
    with pytest.raises(EdvaeError, match="importance"):
        truth.true_log_likelihood(x, method="grid")


@pytest.mark.parametrize("prior", ["normal", "mog_ring", "banana"])
def test_grid_agrees_with_independent_importance_sampling(prior):
    data = load_dataset("gaussian") if prior == "normal" else load_dataset("complex", prior=prior)
    truth, x = data.ground_truth, data.test[:8]
    grid = truth.true_log_likelihood(x)
    # proposal from Gauss-Newton at the posterior mode, found without the grid
    importance = truth.true_log_likelihood(x, method="importance", num_samples=20_000, seed=1)
    assert (grid - importance).abs().max().item() < 0.05
    # and the grid has converged: a much finer grid changes nothing
    finer = truth.true_log_likelihood(x, grid_size=192, levels=(96, 144), tol=1e-6)
    assert (grid - finer).abs().max().item() < 1e-3


def test_grid_finds_posteriors_far_in_the_tails():
    prior = D.Independent(D.StudentT(torch.full((2,), 1.5)), 1)
    truth = GroundTruth(prior, SyntheticGenerator(2, 16, seed=7), 0.1)
    z = torch.tensor([[40.0, -2.0], [-3.0, 90.0], [0.5, 0.5]])
    x = truth.generator(z) + 0.1 * torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    grid = truth.true_log_likelihood(x)
    importance = truth.true_log_likelihood(x, method="importance", num_samples=20_000)
    assert (grid - importance).abs().max().item() < 0.05


def test_whole_test_set_is_fast_and_finite(ring):
    start = time.perf_counter()
    ll = ring.ground_truth.true_log_likelihood(ring.test)
    elapsed = time.perf_counter() - start
    assert ll.shape == (2_000,) and torch.isfinite(ll).all()
    assert elapsed < 60  # about 3-4 s of CPU; generous for busy shared machines
    # the true density beats a single Gaussian fitted to the data by a clear margin
    fitted = D.MultivariateNormal(ring.train.double().mean(0), covariance_matrix=torch.cov(ring.train.double().T))
    assert ll.mean() > fitted.log_prob(ring.test.double()).mean() + 5


def test_true_log_likelihood_checks_its_input(gaussian):
    truth = gaussian.ground_truth
    with pytest.raises(EdvaeError, match=r"\(N, 16\)"):
        truth.true_log_likelihood(torch.zeros(4, 15))
    with pytest.raises(EdvaeError, match="method"):
        truth.true_log_likelihood(gaussian.test[:2], method="exact")
    with pytest.raises(EdvaeError, match="non-finite"):
        truth.true_log_likelihood(torch.full((1, 16), float("nan")))
    with pytest.raises(EdvaeError, match="event_shape"):
        GroundTruth(D.Normal(0.0, 1.0), nn.Linear(1, 4), 0.1)
