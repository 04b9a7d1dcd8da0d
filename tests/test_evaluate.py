"""Evaluation (:mod:`edvae.evaluate`): every metric against its definition or a known bound, on a
model trained on the digits, the pieces of the metrics against closed forms, the Monte Carlo
errors of the evaluation and the independence of its noise from training's."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from edvae import evaluate as evaluate_module
from edvae import runs
from edvae.config import EvalConfig, validate_config
from edvae.errors import EdvaeError
from edvae.estimators import dataset_decomposition, dataset_decomposition_terms, log_posterior
from edvae.evaluate import active_units, evaluate_model, evaluate_run, evaluation_seed, load_run, sliced_wasserstein
from edvae.training import train


# ----------------------------------------------------------------------------- a trained model on digits
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits") / "run"
    cfg = validate_config(
        {
            "data": {"name": "digits"},
            "model": {"latent_dim": 8, "hidden": [128]},
            "train": {"epochs": 8, "batch_size": 64, "lr": 3e-3, "progress": False},
        }
    )
    train(cfg, run)
    return run


@pytest.fixture(scope="module")
def digits_model(digits_run):
    model, _, _, data = load_run(digits_run)
    return model, data


@pytest.fixture(scope="module")
def digits_metrics(digits_model):
    model, data = digits_model
    return {k: evaluate_model(model, data, EvalConfig(iwae_samples=k)) for k in (1, 64)}


def test_bits_per_dimension_is_nll_over_dims_ln2(digits_metrics):
    for m in digits_metrics.values():
        assert m["nll"] == pytest.approx(-m["iwae"])
        assert m["bpd"] == pytest.approx(m["nll"] / (64 * math.log(2)), rel=1e-12)
        assert 0 < m["bpd"] < 1  # a trained model beats coin flips (1 bit per pixel)


def test_iwae_bound_tightens_with_more_samples(digits_metrics):
    one, many = digits_metrics[1], digits_metrics[64]
    assert one["iwae"] == pytest.approx(one["elbo"], abs=0.5)  # K = 1: the ELBO up to MC error
    assert many["iwae"] > one["iwae"] and many["iwae"] >= many["elbo"]
    assert many["elbo"] == pytest.approx(many["reconstruction"] - many["kl"], abs=1e-9)


def test_decomposition_of_the_kl_on_real_data(digits_metrics):
    """E_x KL(q(z|x) || p(z)) = I(x; z) + KL(q(z) || p(z)) on the test split."""
    m = digits_metrics[64]
    assert m["kl"] == pytest.approx(m["mi"] + m["marginal_kl"], abs=0.05 * m["kl"] + 0.1)
    assert 0 <= m["mi"] <= math.log(180) + 1e-6  # the test split has 180 examples
    assert m["marginal_kl"] == pytest.approx(m["cross_entropy"] - m["entropy"], abs=1e-4)


def test_mse_active_units_and_probe_against_direct_computation(digits_model, digits_metrics):
    model, data = digits_model
    m = digits_metrics[64]
    with torch.inference_mode():
        mu = model.encode(data.test)[0]
        x_hat = torch.sigmoid(model.decode(mu))
    assert m["mse"] == pytest.approx(float((x_hat - data.test).square().mean()), rel=1e-5)
    assert m["active_units"] == active_units(mu) == int((mu.double().var(0) > 0.01).sum())
    assert m["probe_accuracy"] > 0.5  # chance is 0.1 on ten balanced classes


def test_the_probe_sees_training_images_as_the_model_does(digits_model, monkeypatch):
    """With dynamic binarisation the test images are binary, so the probe is fitted on binarised
    training images too (grey levels would put the fit and the score on different inputs); the
    accuracy is that of a probe fitted by hand on the same binary images."""
    from sklearn.linear_model import LogisticRegression

    from edvae import evaluate as evaluate_module

    model, data = digits_model
    assert data.binarize == "dynamic" and set(data.test.unique().tolist()) == {0.0, 1.0}
    seen = []
    real_encode = model.encode
    monkeypatch.setattr(model, "encode", lambda x: seen.append(x) or real_encode(x))
    with torch.inference_mode():
        accuracy = evaluate_module._probe_accuracy(model, data, data.test, data.test_labels, seed=5)
        fit_inputs = seen[0]
        assert fit_inputs.shape == data.train.shape and set(fit_inputs.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(fit_inputs, torch.bernoulli(data.train, generator=torch.Generator().manual_seed(5)))
        probe = LogisticRegression(max_iter=2000).fit(
            real_encode(fit_inputs)[0].double().numpy(), data.train_labels.numpy()
        )
        expected = probe.score(real_encode(data.test)[0].double().numpy(), data.test_labels.numpy())
    assert accuracy == pytest.approx(expected, abs=1e-12)


def test_evaluate_run_is_evaluate_model_on_the_stored_model_plus_its_training_time(digits_run, digits_model):
    """evaluate_run rebuilds the run with :func:`edvae.runs.load_run` (its old home, evaluate,
    still exports it) and adds the checkpoint's train_seconds to the metrics of evaluate_model."""
    model, data = digits_model
    run = digits_run
    assert evaluate_module.load_run is runs.load_run
    config = EvalConfig(iwae_samples=4)
    from_run = evaluate_run(run, config=config, data=data)
    direct = evaluate_model(model, data, config)
    train_seconds = from_run.pop("train_seconds")
    assert from_run == direct
    assert train_seconds == float(load_run(run, data)[2]["train_seconds"]) > 0


# ----------------------------------------------------------------------------- closed forms
def test_sliced_wasserstein_of_samples_that_carry_a_graph_warns_nothing():
    """Regression: samples of a prior with learned parameters carry a graph, and `edvae evaluate`
    printed torch's "Converting a tensor with requires_grad=True to a scalar" warning on stderr."""
    import warnings

    a = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    b = a.clone().requires_grad_() * 2.0
    expected = sliced_wasserstein(a, b.detach(), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(1)) == expected > 0


def test_sliced_wasserstein_of_a_translation_is_its_length_over_root_dimension():
    """For b = a + c, every projection is shifted by theta.c, so SW_2^2 = E_theta (theta.c)^2 =
    |c|^2 / D for theta uniform on the sphere (Monte Carlo over the projections); SW(a, a) = 0."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(500, 4, generator=gen, dtype=torch.float64)
    c = torch.tensor([3.0, -1.0, 2.0, 0.5], dtype=torch.float64)
    sw = sliced_wasserstein(a, a + c, projections=20_000, generator=torch.Generator().manual_seed(1))
    assert sw == pytest.approx(float(c.norm()) / math.sqrt(4), rel=0.02)
    assert sliced_wasserstein(a, a, generator=gen) == 0.0


def test_active_units_counts_dimensions_whose_mean_varies():
    mu = torch.zeros(100, 3)
    mu[:, 0] = torch.linspace(-1, 1, 100)  # variance ~0.34 > 0.01
    mu[:, 1] = 0.05 * torch.linspace(-1, 1, 100)  # variance ~0.00085 < 0.01
    assert active_units(mu) == 1
    assert active_units(mu, threshold=1e-4) == 2


# ----------------------------------------------------------------------------- Monte Carlo errors
#: Every metric that is a mean over the examples of a synthetic split (with a ground truth).
AVERAGED = [
    "elbo",
    "iwae",
    "kl",
    "reconstruction",
    "mse",
    "nll",
    "mi",
    "entropy",
    "cross_entropy",
    "marginal_kl",
    "decomposition_gap",
    "true_ll",
    "ll_gap",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model with a standard normal prior (analytic KL), trained for two epochs."""
    from conftest import tiny_raw
    from edvae.config import validate_config

    config = validate_config(tiny_raw(model={"prior": "normal"}, train={"epochs": 2}))
    run_dir = tmp_path_factory.mktemp("run")
    train(config, run_dir)
    model, _, _, data = load_run(run_dir)
    return model, data


def test_every_averaged_metric_reports_its_standard_error(trained):
    model, data = trained
    m = evaluate_model(model, data, EvalConfig(iwae_samples=20))
    for name in AVERAGED:
        assert math.isfinite(m[f"{name}_se"]) and m[f"{name}_se"] > 0, name
    assert m["nll_se"] == m["iwae_se"]
    assert "active_units_se" not in m and "prior_swd_se" not in m
    assert m["decomposition_gap"] == pytest.approx(m["kl"] - (m["mi"] + m["marginal_kl"]), abs=1e-9)
    assert m["ll_gap"] == pytest.approx(m["true_ll"] - m["iwae"], abs=1e-9)


def test_evaluation_runs_without_autograd(trained, monkeypatch):
    """Every metric is computed under torch.inference_mode (no graph is kept: less memory, no
    host reads of tensors that require grad); a decorator moved off evaluate_model broke it once."""
    model, data = trained
    seen: list[bool] = []
    mean_se = evaluate_module._mean_se

    def recording(values: torch.Tensor) -> tuple[float, float]:
        seen.append(torch.is_inference_mode_enabled() and not values.requires_grad)
        return mean_se(values)

    monkeypatch.setattr(evaluate_module, "_mean_se", recording)
    evaluate_model(model, data, EvalConfig(iwae_samples=5))
    assert seen and all(seen)


def _se(values: torch.Tensor) -> float:
    v = values.double()
    return math.sqrt(float(((v - v.mean()) ** 2).sum()) / (len(v) - 1)) / math.sqrt(len(v))


def test_standard_errors_match_brute_force(trained):
    """Recompute the per-example values from the model with the documented noise stream (one
    chunk: batch_size >= N) and compare sd / sqrt(N)."""
    model, data = trained
    k, x = 7, data.test
    n = x.shape[0]
    m = evaluate_model(model, data, EvalConfig(iwae_samples=k, batch_size=n, seed=3, true_ll=False))
    gen = torch.Generator().manual_seed(evaluation_seed(3))
    prior = model.prior_distribution()
    with torch.no_grad():
        mu, logvar = model.encode(x)
        eps = torch.randn((k, n, mu.shape[1]), generator=gen)
        elbo, iwae, recon = [], [], []
        for i in range(n):  # one example at a time, by the textbook formulas
            z = mu[i] + torch.exp(0.5 * logvar[i]) * eps[:, i]
            log_px = model.likelihood.log_prob(x[i].expand(k, -1), model.decode(z)).double()
            log_w = (
                log_px
                + prior.log_prob(z).double()
                - log_posterior(z, mu[i].expand(k, -1), logvar[i].expand(k, -1)).double()
            )
            iwae.append(torch.logsumexp(log_w, 0) - math.log(k))
            var = logvar[i].double().exp()
            kl = 0.5 * (var + mu[i].double() ** 2 - 1 - logvar[i].double()).sum()  # KL(N(mu, var) || N(0, I))
            recon.append(log_px.mean())
            elbo.append(log_px.mean() - kl)
        kls = 0.5 * (logvar.double().exp() + mu.double() ** 2 - 1 - logvar.double()).sum(1)
        mse = (model.likelihood.mean(model.decode(mu)) - x).double().square().mean(1)
        terms = dataset_decomposition_terms(mu, logvar, prior, generator=gen)
    expected = {
        "iwae": torch.stack(iwae),
        "elbo": torch.stack(elbo),
        "reconstruction": torch.stack(recon),
        "kl": kls,
        "mse": mse,
        "mi": terms.mi,
        "marginal_kl": terms.marginal_kl,
        "decomposition_gap": kls - terms.mi - terms.marginal_kl,
    }
    for name, values in expected.items():
        assert m[name] == pytest.approx(float(values.double().mean()), rel=1e-5, abs=1e-6), name
        assert m[f"{name}_se"] == pytest.approx(_se(values), rel=1e-4, abs=1e-7), name


def test_standard_error_shrinks_like_one_over_root_n(trained):
    """A quarter of the split doubles the standard error, up to the spread of the sd estimate."""
    model, data = trained
    full = evaluate_model(model, data, EvalConfig(iwae_samples=10, true_ll=False))
    n = data.test.shape[0]
    quarter = dataclasses.replace(data, test=data.test[: n // 4], test_labels=None)
    small = evaluate_model(model, quarter, EvalConfig(iwae_samples=10, true_ll=False))
    for name in ("iwae", "elbo", "kl", "mse", "mi", "marginal_kl"):
        assert 1.4 < small[f"{name}_se"] / full[f"{name}_se"] < 2.8, name


def test_decomposition_terms_are_the_decomposition_per_query():
    """The per-query terms average to dataset_decomposition's fields (same draws); mi +
    marginal_kl is log q(z|x) - log p(z) per query; their gap to the analytic KL is noise."""
    g = torch.Generator().manual_seed(0)
    mu, logvar = (
        torch.randn(400, 3, generator=g, dtype=torch.float64),
        0.5 * torch.randn(400, 3, generator=g, dtype=torch.float64) - 1,
    )
    prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(3, dtype=torch.float64), 1.0), 1)
    for queries in (None, 150):
        whole = dataset_decomposition(
            mu, logvar, prior, num_queries=queries, generator=torch.Generator().manual_seed(5)
        )
        terms = dataset_decomposition_terms(
            mu, logvar, prior, num_queries=queries, generator=torch.Generator().manual_seed(5)
        )
        assert terms.mi.shape == (queries or 400,)
        for name in ("mi", "entropy", "cross_entropy", "marginal_kl", "kl"):
            assert float(getattr(terms, name).mean()) == pytest.approx(float(getattr(whole, name)), abs=1e-10), name
    noise = torch.randn(400, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * noise
    terms = dataset_decomposition_terms(mu, logvar, prior, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(terms.mi + terms.marginal_kl, log_posterior(z, mu, logvar) - prior.log_prob(z))
    gap = terms.kl - (terms.mi + terms.marginal_kl)
    assert abs(float(gap.mean())) < 4 * _se(gap)


def test_evaluation_noise_is_not_the_training_noise(trained, monkeypatch):
    """Regression: with eval.seed = train.seed = 0 the evaluation replayed the training run's
    noise generator, torch.Generator().manual_seed(0), draw for draw."""
    model, data = trained
    first: list[torch.Tensor] = []
    real_randn = torch.randn

    def spy(*args, **kwargs):
        out = real_randn(*args, **kwargs)
        if kwargs.get("generator") is not None and not first:
            first.append(out.clone())
        return out

    monkeypatch.setattr(torch, "randn", spy)
    evaluate_model(model, data, EvalConfig(iwae_samples=5, seed=0, true_ll=False))
    monkeypatch.undo()
    with pytest.raises(EdvaeError, match="true_ll has shape"):
        evaluate_model(model, data, EvalConfig(iwae_samples=2), true_ll=torch.zeros(3))
    training_noise = torch.randn(first[0].shape, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(first[0], training_noise)
    # every purpose has its own stream, none seeded like a training stream (edvae.training: the
    # noise and global seeds s, epoch orders s * 1_000_003 + e, validation s * 7919 + e)
    seeds = {evaluation_seed(s, p) for s in range(50) for p in ("noise", "binarise", "prior", "probe")}
    training = {
        f(s, e)
        for s in range(50)
        for e in range(500)
        for f in (lambda s, e: s, lambda s, e: s * 1_000_003 + e, lambda s, e: s * 7919 + e)
    }
    assert len(seeds) == 200 and not seeds & training


def test_the_logistic_regression_probe_is_the_penalised_optimum_that_sklearn_finds():
    """fit_logistic_regression minimises sum_n CE_n + ||W||^2 / 2 (sklearn's C = 1 objective, strictly
    convex): its gradient vanishes at the result, and sklearn's own solver lands on the same weights."""
    from sklearn.linear_model import LogisticRegression

    from edvae.evaluate import fit_logistic_regression

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (600,), generator=gen)
    features = (
        torch.randn(600, 3, generator=gen, dtype=torch.float64) + 1.5 * torch.nn.functional.one_hot(labels, 4)[:, :3]
    )
    weight, bias = fit_logistic_regression(features, labels)
    w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    objective = torch.nn.functional.cross_entropy(features @ w.T + b, labels, reduction="sum") + 0.5 * w.square().sum()
    objective.backward()
    assert float(w.grad.abs().max()) < 1e-6 and float(b.grad.abs().max()) < 1e-6
    reference = LogisticRegression(max_iter=10_000, tol=1e-10).fit(features.numpy(), labels.numpy())
    assert torch.allclose(weight, torch.from_numpy(reference.coef_), atol=1e-4)
    assert torch.allclose(bias, torch.from_numpy(reference.intercept_), atol=1e-4)


def test_true_log_likelihoods_of_real_data_is_one_clear_error():
    """Real data has no known generative process: an EdvaeError naming it, not an AttributeError on None."""
    from edvae.data import load_dataset

    digits = load_dataset("digits", seed=0)
    with pytest.raises(EdvaeError, match="'digits' has no known generative process"):
        evaluate_module.true_log_likelihoods(digits)
