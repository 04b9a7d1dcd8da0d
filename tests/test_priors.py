"""Tests for edvae.priors: densities against closed forms, quadrature and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import zuko
from torch import nn
from torch.distributions import Independent, Normal

from edvae import priors as P
from edvae.errors import EdvaeError

RING_RADIUS, RING_STD = 2.0, 0.3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small: one thread avoids oversubscribing a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def float64_default():
    """Build priors in float64 so their constants (0.3, cos(pi/4), ...) are exact."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def grid(box: tuple[float, float, float, float], step: float) -> tuple[torch.Tensor, float]:
    """Cell midpoints of a 2-D box (x0, x1, y0, y1), float64, and the cell area."""
    x0, x1, y0, y1 = box
    xs = torch.arange(x0 + step / 2, x1, step, dtype=torch.float64)
    ys = torch.arange(y0 + step / 2, y1, step, dtype=torch.float64)
    return torch.cartesian_prod(xs, ys), step * step


def ring_means_numpy(k: int = 8, radius: float = RING_RADIUS, dim: int = 2) -> np.ndarray:
    means = np.zeros((k, dim))
    for i in range(k):
        means[i, 0] = radius * math.cos(2 * math.pi * i / k)
        means[i, 1] = radius * math.sin(2 * math.pi * i / k)
    return means


def ring_log_prob_numpy(z: np.ndarray, std: float = RING_STD) -> np.ndarray:
    """log (1/8) sum_k N(z; m_k, std^2 I), summed term by term in numpy."""
    means = ring_means_numpy(dim=z.shape[1])
    d = z.shape[1]
    terms = np.stack([np.exp(-((z - m) ** 2).sum(1) / (2 * std**2)) / (2 * math.pi * std**2) ** (d / 2) for m in means])
    return np.log(terms.mean(0))


def t3_tail(t: float) -> float:
    """P(T > t) for Student's t with 3 degrees of freedom (closed form)."""
    x = t / math.sqrt(3)
    return 0.5 - (math.atan(x) + x / (1 + x * x)) / math.pi


class LinearEncoder(nn.Module):
    """x (B, 3) -> (mu, logvar), each (B, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-3, 1)


def vamp_prior(k: int = 5) -> tuple[P.Prior, LinearEncoder]:
    torch.manual_seed(0)
    encoder = LinearEncoder()
    return P.make("vamp", 2, encoder=encoder, input_shape=(3,), n_components=k), encoder


# --- every prior: normalised density, samples that match it ----------------------------------

# name -> (options, box, mass the box holds); the grid step is 0.05 (0.1 for the slower flow)
MASS_CASES = {
    "normal": ({}, (-8, 8, -8, 8), 1.0),
    "diag_normal": ({"loc": [0.5, -1.0], "scale": [0.7, 1.5]}, (-10, 10, -12, 10), 1.0),
    "mixture": ({"n_components": 4, "scale": 0.8}, (-10, 10, -10, 10), 1.0),
    "mog_ring": ({}, (-5, 5, -5, 5), 1.0),
    "banana": ({}, (-10, 10, -8, 45), 1.0),
    "student_t": ({"df": 3.0}, (-40, 40, -40, 40), (1 - 2 * t3_tail(40.0)) ** 2),
    "laplace": ({"scale": 0.8}, (-30, 30, -30, 30), 1.0),
    "flow": ({"transforms": 2, "hidden_features": [16]}, (-8, 8, -8, 8), 1.0),
}
MOMENT_CASES = {**MASS_CASES, "student_t": ({"df": 5.0}, (-40, 40, -40, 40), None)}


def test_cases_cover_the_registry() -> None:
    assert set(P.names()) == set(MASS_CASES) | {"vamp", "samples"}


@pytest.mark.parametrize("name", sorted(MASS_CASES))
def test_density_integrates_to_the_mass_in_the_box(name: str) -> None:
    options, box, mass = MASS_CASES[name]
    torch.manual_seed(0)
    prior = P.make(name, 2, **options).double()
    points, area = grid(box, 0.1 if name == "flow" else 0.05)
    with torch.no_grad():
        total = float(prior().log_prob(points).exp().sum() * area)
    assert total == pytest.approx(mass, abs=1e-3)


def test_student_t_box_really_truncates() -> None:
    """The df=3 box above misses mass the closed form accounts for; check that it is seen."""
    points, area = grid((-5, 5, -5, 5), 0.05)
    prior = P.make("student_t", 2).double()
    total = float(prior().log_prob(points).exp().sum() * area)
    assert total == pytest.approx((1 - 2 * t3_tail(5.0)) ** 2, abs=1e-4)
    assert total < 0.98


@pytest.mark.parametrize("name", sorted(MOMENT_CASES))
def test_samples_match_quadrature_moments(name: str) -> None:
    options, box, _ = MOMENT_CASES[name]
    torch.manual_seed(1)
    prior = P.make(name, 2, **options).double()
    points, area = grid(box, 0.1 if name == "flow" else 0.05)
    with torch.no_grad():
        weights = prior().log_prob(points).exp() * area
        weights = weights / weights.sum()
        mean = weights @ points
        cov = (weights[:, None] * (points - mean)).T @ (points - mean)
        samples = prior().sample((40_000,))
    assert samples.shape == (40_000, 2)
    sample_cov = torch.cov(samples.T)
    stderr = (cov.diagonal() / len(samples)).sqrt()
    assert torch.all((samples.mean(0) - mean).abs() < 5 * stderr)
    scale = cov.diagonal().max()
    assert torch.allclose(sample_cov, cov, atol=0.06 * float(scale))


def test_closed_form_moments() -> None:
    """mog_ring: Cov = (r^2/2 + s^2) I; banana: Cov = diag(s1^2, 1 + 2 b^2 s1^4)."""
    for name, expected in [
        ("mog_ring", torch.eye(2, dtype=torch.float64) * (RING_RADIUS**2 / 2 + RING_STD**2)),
        ("banana", torch.diag(torch.tensor([1.5**2, 1 + 2 * 0.5**2 * 1.5**4]).double())),
    ]:
        _, box, _ = MASS_CASES[name]
        points, area = grid(box, 0.05)
        p = P.make(name, 2).double()().log_prob(points).exp() * area
        mean = p @ points
        cov = (p[:, None] * (points - mean)).T @ (points - mean)
        assert torch.allclose(mean, torch.zeros(2, dtype=torch.float64), atol=1e-6)
        assert torch.allclose(cov, expected, atol=1e-4)


# --- log-densities against independent formulas ---------------------------------------------


@pytest.mark.parametrize("dim", [2, 3])
def test_mog_ring_log_prob_matches_numpy_sum_of_gaussians(dim: int, float64_default) -> None:
    z = np.random.default_rng(0).normal(scale=2.0, size=(200, dim))
    got = P.make("mog_ring", dim)().log_prob(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(got, ring_log_prob_numpy(z), rtol=1e-12)
    # built in float32 and then doubled, the constants carry float32 rounding only
    doubled = P.make("mog_ring", dim).double()().log_prob(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(doubled, ring_log_prob_numpy(z), rtol=1e-6)


def test_banana_log_prob_matches_hand_formula_and_rsample_has_gradients() -> None:
    b, s1 = 0.7, 1.2
    z = torch.randn(100, 3, dtype=torch.float64) * 2
    u2 = z[:, 1] - b * (z[:, 0] ** 2 - s1**2)
    expected = (
        -0.5 * (z[:, 0] / s1) ** 2 - math.log(s1) - 0.5 * u2**2 - 0.5 * z[:, 2] ** 2 - 1.5 * math.log(2 * math.pi)
    )
    prior = P.make("banana", 3, curvature=b, scale=s1).double()
    assert torch.allclose(prior().log_prob(z), expected, atol=1e-12)
    x = prior().rsample((7,))
    assert x.shape == (7, 3) and x.requires_grad is False  # nothing learned, nothing to track
    loc = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (prior().rsample((5,)) + loc).sum().backward()
    assert loc.grad is not None


def test_factorised_priors_match_closed_forms() -> None:
    z = torch.randn(50, 2, dtype=torch.float64) * 3
    loc = torch.tensor([0.5, -1.0], dtype=torch.float64)
    scale = torch.tensor([0.7, 2.0], dtype=torch.float64)
    x = (z - loc) / scale
    gauss = (-0.5 * x**2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    laplace = (-x.abs() - (2 * scale).log()).sum(-1)
    df = 4.0
    student = (
        math.lgamma((df + 1) / 2)
        - math.lgamma(df / 2)
        - 0.5 * math.log(df * math.pi)
        - scale.log()
        - (df + 1) / 2 * torch.log1p(x**2 / df)
    ).sum(-1)
    cases = [
        (P.make("normal", 2), (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)),
        (P.make("diag_normal", 2, loc=loc, scale=scale), gauss),
        (P.make("laplace", 2, loc=loc, scale=scale), laplace),
        (P.make("student_t", 2, df=df, loc=loc, scale=scale), student),
    ]
    for prior, expected in cases:
        assert torch.allclose(prior.double()().log_prob(z), expected, atol=1e-10)


def test_learnable_diag_normal_trains_and_fixed_one_has_no_parameters() -> None:
    assert list(P.make("diag_normal", 2).parameters()) == []
    prior = P.make("diag_normal", 2, learnable=True)
    assert {n for n, _ in prior.named_parameters()} == {"loc", "log_scale"}
    z = torch.randn(2000, 2) * 0.5 + 3.0
    opt = torch.optim.Adam(prior.parameters(), lr=0.1)
    for _ in range(300):
        loss = -prior().log_prob(z).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist = prior()
    assert torch.allclose(dist.mean, z.mean(0), atol=0.05)
    assert torch.allclose(dist.stddev, z.std(0), atol=0.05)


@pytest.mark.parametrize("name", [n for n in sorted(MASS_CASES) if n != "flow"] + ["flow"])
def test_double_precision(name: str) -> None:
    options = MASS_CASES[name][0]
    torch.manual_seed(0)
    prior = P.make(name, 2, **options)
    z = torch.randn(20, 2)
    single = prior().log_prob(z)
    double = prior.double()().log_prob(z.double())
    assert double.dtype == torch.float64
    assert torch.allclose(double.float(), single, atol=1e-4)


# --- the registry -----------------------------------------------------------------------------


def test_unknown_name_lists_the_known_names() -> None:
    with pytest.raises(EdvaeError) as info:
        P.make("gaussian", 2)
    for name in P.names():
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("name", "options", "words"),
    [
        ("normal", {"scale": 2.0}, ["scale", "none"]),
        ("mog_ring", {"radius": 2.0, "sigma": 0.1}, ["sigma", "radius", "scale"]),
        ("diag_normal", {"scale": -1.0}, ["scale", "positive"]),
        ("diag_normal", {"scale": [1.0, 2.0, 3.0]}, ["scale", "broadcastable"]),
        ("diag_normal", {"learnable": "yes"}, ["learnable"]),
        ("student_t", {"df": 0.0}, ["df", "positive"]),
        ("mixture", {"n_components": 0}, ["n_components"]),
        ("mixture", {"init": torch.randn(3, 2), "n_components": 4}, ["init", "n_components"]),
        ("mog_ring", {"radius": float("nan")}, ["radius"]),
        ("banana", {}, ["dim >= 2"]),
        ("flow", {"hidden_features": []}, ["hidden_features"]),
        ("vamp", {}, ["encoder"]),
        ("samples", {}, ["path"]),
    ],
)
def test_bad_options_raise(name: str, options: dict, words: list[str]) -> None:
    dim = 1 if name == "banana" else 2
    with pytest.raises(EdvaeError) as info:
        P.make(name, dim, **options)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("dim", [0, -1, 2.0, True])
def test_bad_dim_raises(dim: object) -> None:
    with pytest.raises(EdvaeError, match="dim"):
        P.make("normal", dim)  # type: ignore[arg-type]


# --- the learned mixture ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_learned_mixture_recovers_the_ring_modes(seed: int) -> None:
    torch.manual_seed(seed)
    data = P.make("mog_ring", 2)().sample((10_000,))
    prior = P.make("mixture", 2, n_components=8, init=data, seed=seed)
    optimiser = torch.optim.Adam(prior.parameters(), lr=0.05)
    for _ in range(200):
        loss = -prior().log_prob(data).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    learned = prior().component_distribution.mean.detach().double()
    true = torch.from_numpy(ring_means_numpy())
    assert torch.cdist(true, learned).min(1).values.max() < 0.3
    # the scales (initially 1) and the weights were learned too
    assert torch.allclose(prior().component_distribution.stddev, torch.tensor(RING_STD), atol=0.03)
    assert torch.allclose(prior().mixture_distribution.probs, torch.tensor(1 / 8), atol=0.02)
    # and the fitted density is as good as the truth on its own samples
    exact = -P.make("mog_ring", 2)().log_prob(data).mean()
    assert float(loss.detach()) == pytest.approx(float(exact), abs=0.03)


# --- sample-only priors: the KDE ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ring_samples() -> torch.Tensor:
    torch.manual_seed(123)
    return P.make("mog_ring", 2).double()().sample((10_000,))


@pytest.fixture(scope="module")
def ring_kde(ring_samples: torch.Tensor) -> P.KDEPrior:
    return P.from_samples(ring_samples, bandwidth="cv", seed=0)


def test_kde_cross_entropy_near_the_prior_is_within_5_percent(ring_kde: P.KDEPrior) -> None:
    torch.manual_seed(5)
    q = P.make("mog_ring", 2, scale=1.3 * RING_STD).double()()  # modes widened 1.3x
    z = q.sample((4000,))
    exact = -float(P.make("mog_ring", 2).double()().log_prob(z).mean())
    estimate = -float(ring_kde().log_prob(z).mean())
    assert abs(estimate - exact) < 0.05 * abs(exact)


def test_kde_tails_are_set_by_the_bandwidth_not_the_prior(ring_samples: torch.Tensor, ring_kde: P.KDEPrior) -> None:
    torch.manual_seed(6)
    far = Independent(Normal(torch.tensor([6.0, 0.0]).double(), torch.full((2,), 0.3).double()), 1)
    z = far.sample((2000,))
    exact = -float(P.make("mog_ring", 2).double()().log_prob(z).mean())
    estimate = -float(ring_kde().log_prob(z).mean())
    h = float(ring_kde.bandwidth)
    nearest_sq = torch.cdist(z, ring_samples).min(1).values ** 2
    predicted = float((nearest_sq / (2 * h * h) + math.log(2 * math.pi * h * h) + math.log(len(ring_samples))).mean())
    assert estimate > 2 * exact  # strongly biased ...
    assert estimate == pytest.approx(predicted, rel=0.01)  # ... exactly as the nearest kernel says


def test_kde_density_integrates_to_one_and_samples_match(ring_kde: P.KDEPrior) -> None:
    small = P.KDEPrior(ring_kde.samples[:500], float(ring_kde.bandwidth))
    points, area = grid((-5, 5, -5, 5), 0.04)
    assert float(small().log_prob(points).exp().sum() * area) == pytest.approx(1.0, abs=1e-3)
    torch.manual_seed(0)
    draws = small().rsample((40_000,))
    assert torch.allclose(draws.mean(0), small().mean, atol=0.05)
    assert torch.allclose(draws.var(0), small().variance, rtol=0.05)


def test_kde_chunked_log_prob_equals_brute_force() -> None:
    torch.manual_seed(2)
    samples, z, h = torch.randn(301, 3), torch.randn(4, 57, 3) * 2, 0.4
    s64, z64 = samples.double(), z.double().reshape(-1, 3)
    brute = (torch.logsumexp(Normal(s64, h).log_prob(z64[:, None, :]).sum(-1), dim=1) - math.log(301)).reshape(4, 57)
    for chunk in (None, 5, 64, 10_000):
        got = P.KDEPrior(samples, h, chunk_size=chunk)().log_prob(z)
        assert got.shape == (4, 57) and got.dtype == torch.float32
        assert torch.allclose(got.double(), brute, atol=1e-5)


def test_kde_log_prob_has_gradients_in_z() -> None:
    samples = torch.randn(50, 2)
    z = torch.randn(3, 2, requires_grad=True)
    P.KDEPrior(samples, 0.5, chunk_size=16)().log_prob(z).sum().backward()
    s, h = samples.double(), 0.5
    zd = z.detach().double().requires_grad_()
    torch.logsumexp(Normal(s, h).log_prob(zd[:, None]).sum(-1), 1).sum().backward()
    assert torch.allclose(z.grad.double(), zd.grad, atol=1e-5)


@pytest.mark.parametrize("h", [1.0, 0.05, 1e-3])
def test_kde_closed_form_gradient_equals_float64_autograd_through_the_brute_force(h: float) -> None:
    """The kernel's online log-sum-exp and its closed-form gradient -(z - m(z)) / h^2 against
    autograd through a float64 logsumexp over every sample at once: for wide and narrow
    bandwidths (where most terms are exp of less than -700 below the maximum), queries far from
    every sample, and blocks that split the samples unevenly."""
    from edvae.priors.samples import _KernelLogSum

    torch.manual_seed(4)
    samples = torch.randn(203, 2, dtype=torch.float64)
    z = torch.cat(
        [torch.randn(40, 2, dtype=torch.float64), torch.tensor([[30.0, -25.0], [0.0, 12.0]], dtype=torch.float64)]
    )
    a = torch.tensor(0.5 / h**2, dtype=torch.float64)
    weights = torch.randn(len(z), dtype=torch.float64)
    ref_z = z.clone().requires_grad_()
    reference = torch.logsumexp(-a * (ref_z[:, None, :] - samples[None]).square().sum(-1), dim=1)
    (reference * weights).sum().backward()
    for chunk in (None, 7, 64):
        got_z = z.clone().requires_grad_()
        got = _KernelLogSum.apply(got_z, samples, a, chunk)
        (got * weights).sum().backward()
        assert torch.allclose(got, reference.detach(), rtol=1e-12, atol=1e-9)
        assert torch.allclose(got_z.grad, ref_z.grad, rtol=1e-7, atol=1e-7 * float(ref_z.grad.abs().max()))
    assert torch.autograd.gradcheck(
        lambda q: _KernelLogSum.apply(q, samples, torch.tensor(0.5, dtype=torch.float64), 16),
        (z[:5].clone().requires_grad_(),),
    )


def test_scott_bandwidth_formula() -> None:
    samples = torch.randn(1000, 3) * torch.tensor([1.0, 2.0, 3.0])
    sigma_bar = float(samples.double().std(0).mean())
    assert P.scott_bandwidth(samples) == pytest.approx(sigma_bar * 1000 ** (-1 / 7), rel=1e-6)
    kde = P.from_samples(samples, bandwidth="scott")
    assert float(kde.bandwidth) == pytest.approx(sigma_bar * 1000 ** (-1 / 7), rel=1e-6)
    assert float(P.from_samples(samples, bandwidth=0.25).bandwidth) == pytest.approx(0.25)


def test_cv_bandwidth_is_smaller_than_scott_on_the_ring(ring_samples: torch.Tensor, ring_kde: P.KDEPrior) -> None:
    assert float(ring_kde.bandwidth) < 0.6 * P.scott_bandwidth(ring_samples)


def test_kde_handles_100000_samples() -> None:
    torch.manual_seed(3)
    samples = torch.randn(100_000, 2)
    kde = P.from_samples(samples, bandwidth="scott")
    h = float(kde.bandwidth)
    z = torch.randn(30, 2)
    got = kde().log_prob(z)
    s64, z64 = samples.double(), z.double()
    brute = torch.logsumexp(Normal(s64, h).log_prob(z64[:, None]).sum(-1), 1) - math.log(100_000)
    assert torch.allclose(got.double(), brute, atol=1e-5)
    # in the bulk it is the true N(0, I) smoothed by the kernel: N(0, (1 + h^2) I)
    smoothed = Independent(Normal(torch.zeros(2), torch.full((2,), math.sqrt(1 + h * h))), 1)
    bulk = z.norm(dim=1) < 2
    error = (got[bulk] - smoothed.log_prob(z[bulk])).abs()  # sampling noise: about 3% at most
    assert error.mean() < 0.03 and error.max() < 0.12


@pytest.mark.parametrize("bad", ["silverman", -0.1, 0.0])
def test_bad_bandwidth_raises(bad: object) -> None:
    with pytest.raises(EdvaeError, match="bandwidth"):
        P.from_samples(torch.randn(10, 2), bandwidth=bad)  # type: ignore[arg-type]


# --- sample-only priors: the flow ---------------------------------------------------------------


def test_flow_fit_beats_gaussian_baselines(ring_samples: torch.Tensor) -> None:
    data = ring_samples[:4000].float()
    prior = P.from_samples(data, "flow", flow_steps=200, seed=0)
    report = prior.fit_report
    assert report is not None and report["steps"] == 200
    # baselines: N(0, I) and the best diagonal Gaussian, both scored on all the data
    standard = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    moment_matched = Independent(Normal(data.mean(0), data.std(0)), 1)
    assert report["heldout_log_likelihood"] > float(standard.log_prob(data).mean()) + 0.5
    assert report["heldout_log_likelihood"] > float(moment_matched.log_prob(data).mean()) + 0.3
    assert report["heldout_log_likelihood"] < -2.35  # the true entropy is about 2.51 nats
    z = prior().rsample((5,))
    assert z.shape == (5, 2)


def test_flow_fit_is_seeded() -> None:
    data = torch.randn(300, 2)
    a = P.from_samples(data, "flow", flow_steps=5, seed=1).fit_report
    b = P.from_samples(data, "flow", flow_steps=5, seed=1).fit_report
    assert a == b


# --- reading sample files -----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".csv", ".csv-header"])
def test_load_samples_round_trips(tmp_path, suffix: str) -> None:
    array = np.random.default_rng(0).normal(size=(20, 3))
    path = tmp_path / ("s" + suffix.split("-")[0])
    if suffix == ".npy":
        np.save(path, array)
    elif suffix == ".pt":
        torch.save(torch.from_numpy(array), path)
    else:
        header = "a,b,c" if suffix.endswith("header") else ""
        np.savetxt(path, array, delimiter=",", header=header, comments="")
    got = P.load_samples(path, dim=3)
    assert got.shape == (20, 3) and got.dtype == torch.get_default_dtype()
    np.testing.assert_allclose(got.numpy(), array, rtol=1e-6)


def write(path, content) -> None:
    if path.suffix == ".npy":
        np.save(path, content)
    elif path.suffix == ".pt":
        torch.save(content, path)
    else:
        path.write_text(content)


@pytest.mark.parametrize(
    ("filename", "content", "words"),
    [
        ("missing.npy", None, ["does not exist"]),
        ("data.txt", "1,2\n3,4\n", ["unsupported extension", ".npy, .pt, .csv"]),
        ("broken.csv", "1,2\n3,x\n", ["line 2, column 2", "not a number"]),
        ("ragged.csv", "1,2\n3\n", ["line 2 has 1 value", "earlier rows have 2"]),
        ("dict.pt", {"a": torch.zeros(3, 2)}, ["not a tensor"]),
        ("flat.npy", np.zeros(5), ["shape (5,)", "2-D"]),
        ("cube.npy", np.zeros((4, 2, 2)), ["shape (4, 2, 2)", "2-D"]),
        ("nan.npy", np.array([[0.0, 1.0], [2.0, 3.0], [np.nan, 1.0], [np.inf, 0.0]]), ["data row 2", "2 bad row"]),
        ("one.csv", "x,y\n1,2\n", ["1 sample", "at least 2"]),
        ("empty.csv", "", ["is empty"]),
        ("wide.npy", np.zeros((4, 3)), ["dimension 3", "latent dimension is 2"]),
    ],
)
def test_bad_sample_files_raise_naming_the_file(tmp_path, filename, content, words) -> None:
    path = tmp_path / filename
    if content is not None:
        write(path, content)
    with pytest.raises(EdvaeError) as info:
        P.load_samples(path, dim=2)
    assert filename in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_corrupt_npy_file(tmp_path) -> None:
    path = tmp_path / "corrupt.npy"
    path.write_bytes(b"not a numpy file")
    with pytest.raises(EdvaeError, match="corrupt.npy.*could not be read"):
        P.load_samples(path)


def test_junk_pt_file_is_one_short_message(tmp_path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(bytes(range(256)) * 2)
    with pytest.raises(EdvaeError) as info:
        P.load_samples(path)
    message = str(info.value)
    assert "junk.pt" in message and "not a tensor written by torch.save" in message
    assert "\n" not in message and "weights_only" not in message


@pytest.mark.parametrize("path", ["", "  "])
def test_empty_sample_path_is_refused(path) -> None:
    with pytest.raises(EdvaeError, match="path is empty.*samples:PATH"):
        P.load_samples(path)


def test_make_samples_from_a_file(tmp_path) -> None:
    path = tmp_path / "prior.npy"
    np.save(path, np.random.default_rng(1).normal(size=(500, 2)))
    prior = P.make("samples", 2, path=path, bandwidth=0.3)
    assert isinstance(prior, P.KDEPrior) and P.event_dim(prior) == 2
    assert float(prior.bandwidth) == pytest.approx(0.3)
    with pytest.raises(EdvaeError, match="latent dimension is 3"):
        P.make("samples", 3, path=path)


# --- wrapping user objects ------------------------------------------------------------------------


def test_as_prior_wraps_a_distribution() -> None:
    dist = Independent(Normal(torch.zeros(4), torch.ones(4)), 1)
    prior = P.as_prior(dist)
    assert isinstance(prior, nn.Module) and prior() is dist
    assert P.event_dim(prior) == 4 and P.event_dim(dist) == 4
    with pytest.raises(EdvaeError, match="Independent"):
        P.as_prior(Normal(torch.zeros(4), torch.ones(4)))  # batch_shape (4,), not a prior


def test_as_prior_accepts_a_zuko_flow_unchanged() -> None:
    flow = zuko.flows.NSF(3, transforms=1, hidden_features=(8,))
    assert P.as_prior(flow) is flow
    assert P.event_dim(flow) == 3
    prior = P.make("mog_ring", 2)
    assert P.as_prior(prior) is prior


@pytest.mark.parametrize("bad", [3, "normal", nn.Linear(2, 2)])
def test_as_prior_rejects_other_objects(bad: object) -> None:
    with pytest.raises(EdvaeError):
        P.as_prior(bad)  # type: ignore[arg-type]


# --- the VampPrior ------------------------------------------------------------------------------


def test_vamp_log_prob_is_the_mixture_of_encoder_gaussians() -> None:
    prior, encoder = vamp_prior(k=5)
    z = torch.randn(40, 2)
    with torch.no_grad():
        mu, logvar = encoder(prior.pseudo_inputs)
        var = logvar.double().exp().numpy()
        mu, zn = mu.double().numpy(), z.double().numpy()
        density = np.zeros(len(zn))
        for k in range(5):
            density += np.prod(np.exp(-((zn - mu[k]) ** 2) / (2 * var[k])) / np.sqrt(2 * np.pi * var[k]), axis=1) / 5
        got = prior().log_prob(z)
    np.testing.assert_allclose(got.numpy(), np.log(density), rtol=1e-5, atol=1e-5)


def test_vamp_does_not_own_the_encoder() -> None:
    prior, encoder = vamp_prior()
    assert [n for n, _ in prior.named_parameters()] == ["pseudo_inputs"]
    assert list(prior.state_dict()) == ["pseudo_inputs"]
    encoder_ids = {id(p) for p in encoder.parameters()}
    assert not encoder_ids & {id(p) for p in prior.parameters()}
    # gradients still reach both the pseudo-inputs and the encoder
    prior().log_prob(torch.randn(8, 2)).sum().backward()
    assert prior.pseudo_inputs.grad is not None and encoder.net.weight.grad is not None


def test_vamp_initialises_from_data_and_checks_the_encoder() -> None:
    encoder = LinearEncoder()
    data = torch.randn(30, 3)
    prior = P.make("vamp", 2, encoder=encoder, init=data, n_components=4)
    rows = {tuple(r.tolist()) for r in data}
    assert all(tuple(u.tolist()) in rows for u in prior.pseudo_inputs.detach())
    wrong = P.make("vamp", 3, encoder=encoder, init=data, n_components=4)  # encoder gives 2-D
    with pytest.raises(EdvaeError, match="encoder must return"):
        wrong()
    with pytest.raises(EdvaeError, match="input_shape"):
        P.make("vamp", 2, encoder=encoder, init=data, input_shape=(4,), n_components=4)
