"""Tests of edvae.objectives: the ELBO and the ED-VAE objective."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from edvae import estimators as E
from edvae.critics import BilinearCritic
from edvae.errors import EdvaeError
from edvae.objectives import ENTROPY_ESTIMATORS, Objective, ed_elbo, elbo, uses_aggregate_posterior

F64 = torch.float64


def batch(size=12, dim=3, seed=0, dtype=F64, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(size, dim, generator=g, dtype=F64)
    logvar = -2.0 + 2.0 * torch.rand(size, dim, generator=g, dtype=F64)
    z = mu + (0.5 * logvar).exp() * torch.randn(size, dim, generator=g, dtype=F64)
    log_px = -10.0 + torch.randn(size, generator=g, dtype=F64)
    out = [t.to(dtype) for t in (log_px, z, mu, logvar)]
    if requires_grad:
        out = [t.requires_grad_() for t in out]
    return out


def std_normal(dim, dtype=F64):
    return Independent(Normal(torch.zeros(dim, dtype=dtype), torch.ones(dim, dtype=dtype)), 1)


def mixture(dim):
    locs = torch.tensor([[-1.0] * dim, [1.0] * dim], dtype=F64)
    return MixtureSameFamily(
        Categorical(probs=torch.tensor([0.4, 0.6], dtype=F64)),
        Independent(Normal(locs, torch.full_like(locs, 0.5)), 1),
    )


def mc_elbo(log_px, z, mu, logvar, prior):
    return log_px.mean() - (E.log_posterior(z, mu, logvar) - prior.log_prob(z)).mean()


@pytest.mark.parametrize("estimator", ENTROPY_ESTIMATORS)
@pytest.mark.parametrize("prior", [std_normal(3), mixture(3)], ids=["normal", "mixture"])
def test_unit_weights_give_the_negative_mc_elbo(estimator, prior):
    log_px, z, mu, logvar = batch()
    out = ed_elbo(log_px, z, mu, logvar, prior, dataset_size=1000, mi_estimator=estimator, entropy_estimator=estimator)
    assert isinstance(out, Objective) and out.loss.dim() == 0
    target = mc_elbo(log_px, z, mu, logvar, prior)
    torch.testing.assert_close(out.loss, -target, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.terms["elbo_mc"], target, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.loss, elbo(log_px, z, mu, logvar, prior, kl="mc").loss, rtol=0, atol=1e-10)
    t = out.terms
    torch.testing.assert_close(t["marginal_kl"], t["cross_entropy"] - t["entropy"])
    torch.testing.assert_close(t["loss"], out.loss.detach())


def test_unit_weights_float32():
    log_px, z, mu, logvar = batch(dtype=torch.float32)
    prior = std_normal(3, torch.float32)
    out = ed_elbo(log_px, z, mu, logvar, prior, dataset_size=500)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, -mc_elbo(log_px, z, mu, logvar, prior), rtol=1e-5, atol=1e-5)


def test_analytic_elbo_matches_closed_form_kl():
    log_px, z, mu, logvar = batch()
    out = elbo(log_px, z, mu, logvar, std_normal(3), kl="analytic")
    closed = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
    torch.testing.assert_close(out.terms["kl"], closed)
    torch.testing.assert_close(out.loss, -(log_px.mean() - closed))
    torch.testing.assert_close(out.terms["elbo"], -out.loss)
    auto = elbo(log_px, z, mu, logvar, std_normal(3))
    torch.testing.assert_close(auto.loss, out.loss)


def test_auto_kl_falls_back_to_monte_carlo():
    log_px, z, mu, logvar = batch()
    auto = elbo(log_px, z, mu, logvar, mixture(3))
    torch.testing.assert_close(auto.loss, elbo(log_px, z, mu, logvar, mixture(3), kl="mc").loss)
    torch.testing.assert_close(auto.loss, -mc_elbo(log_px, z, mu, logvar, mixture(3)))
    with pytest.raises(EdvaeError, match="analytic"):
        elbo(log_px, z, mu, logvar, mixture(3), kl="analytic")


def test_weighted_loss_is_the_stated_combination():
    log_px, z, mu, logvar = batch()
    out = ed_elbo(
        log_px,
        z,
        mu,
        logvar,
        std_normal(3),
        dataset_size=1000,
        mi_weight=-0.5,
        entropy_weight=2.0,
        cross_entropy_weight=3.0,
    )
    t = out.terms
    expected = -t["reconstruction"] - 0.5 * t["mi"] - 2.0 * t["entropy"] + 3.0 * t["cross_entropy"]
    torch.testing.assert_close(out.loss, expected)
    d = E.decompose(z, mu, logvar, std_normal(3), dataset_size=1000)
    for name in ("mi", "entropy", "cross_entropy", "marginal_kl", "posterior_entropy"):
        torch.testing.assert_close(t[name], getattr(d, name))


def test_separate_mi_estimators():
    log_px, z, mu, logvar = batch()
    out = ed_elbo(
        log_px, z, mu, logvar, std_normal(3), dataset_size=1000, mi_estimator="batch", entropy_estimator="mss"
    )
    batch_d = E.decompose(z, mu, logvar, std_normal(3), method="batch")
    mss_d = E.decompose(z, mu, logvar, std_normal(3), dataset_size=1000)
    torch.testing.assert_close(out.terms["mi"], batch_d.mi)
    torch.testing.assert_close(out.terms["entropy"], mss_d.entropy)
    nce = ed_elbo(log_px, z, mu, logvar, std_normal(3), dataset_size=1000, mi_estimator="infonce")
    torch.testing.assert_close(nce.terms["mi"], E.infonce(z, mu, logvar))
    assert nce.terms["mi"].item() <= math.log(12)


def test_gradients_reach_every_input_prior_and_critic():
    log_px, z, mu, logvar = batch(requires_grad=True)

    class Prior(nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = nn.Parameter(torch.zeros(3, dtype=F64))

        def forward(self):
            return Independent(Normal(self.loc, torch.ones(3, dtype=F64)), 1)

    prior, critic = Prior(), BilinearCritic(3).double()
    out = ed_elbo(log_px, z, mu, logvar, prior, dataset_size=100, mi_weight=-1.0, mi_estimator="infonce", critic=critic)
    out.loss.backward()
    for t in (log_px, z, mu, logvar, prior.loc, critic.weight):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert all(not v.requires_grad for v in out.terms.values())
    assert {
        "reconstruction",
        "mi",
        "entropy",
        "cross_entropy",
        "marginal_kl",
        "posterior_entropy",
        "elbo_mc",
        "loss",
    } == set(out.terms)


@pytest.mark.parametrize(
    "weights, estimators, skips_estimator",
    [
        ({}, {}, True),  # unit weights: log q_hat cancels
        ({"mi_weight": 2.0, "entropy_weight": 2.0}, {}, True),  # equal weights cancel too
        ({"mi_weight": -1.0}, {"mi_estimator": "infonce"}, False),  # the paper's objective
        ({}, {"mi_estimator": "batch", "entropy_estimator": "mss"}, False),  # two estimates
    ],
)
def test_without_diagnostics_the_loss_and_gradients_are_unchanged(monkeypatch, weights, estimators, skips_estimator):
    """diagnostics=False keeps the loss and every gradient bit for bit, drops only reporting
    terms, and skips the aggregate-posterior estimator exactly when log q_hat cancels."""
    import edvae.objectives as objectives

    calls = []
    real = objectives.log_aggregate_posterior
    monkeypatch.setattr(objectives, "log_aggregate_posterior", lambda *a, **k: calls.append(1) or real(*a, **k))
    results = {}
    for diagnostics in (True, False):
        log_px, z, mu, logvar = batch(requires_grad=True)
        out = ed_elbo(
            log_px, z, mu, logvar, mixture(3), dataset_size=1000, diagnostics=diagnostics, **weights, **estimators
        )
        out.loss.backward()
        results[diagnostics] = out, [t.grad for t in (log_px, z, mu, logvar)]
    (full, full_grads), (lean, lean_grads) = results[True], results[False]
    assert torch.equal(full.loss, lean.loss)
    for a, b in zip(full_grads, lean_grads, strict=True):
        assert torch.equal(a, b)
    assert set(lean.terms) < set(full.terms) and {"reconstruction", "cross_entropy", "loss"} <= set(lean.terms)
    assert all(torch.equal(lean.terms[k], full.terms[k]) for k in lean.terms)
    assert ("entropy" not in lean.terms) == skips_estimator
    assert len(calls) == (1 if skips_estimator else 2)
    assert uses_aggregate_posterior(**weights, **estimators, diagnostics=False) == (not skips_estimator)
    assert uses_aggregate_posterior(**weights, **estimators, diagnostics=True)


def test_telescoped_loss_is_the_mc_elbo_without_the_estimator():
    """At equal MI and entropy weights the loss is -R + w mean log q(z_i|x_i) + w_ce CE, whatever
    the estimate of log q_hat (here: every estimator gives the same loss)."""
    log_px, z, mu, logvar = batch()
    losses = [
        ed_elbo(
            log_px,
            z,
            mu,
            logvar,
            std_normal(3),
            dataset_size=1000,
            mi_weight=3.0,
            entropy_weight=3.0,
            cross_entropy_weight=0.5,
            mi_estimator=m,
            entropy_estimator=m,
        ).loss
        for m in ENTROPY_ESTIMATORS
    ]
    expected = -log_px.mean() + 3.0 * E.log_posterior(z, mu, logvar).mean() - 0.5 * std_normal(3).log_prob(z).mean()
    for loss in losses:
        torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)


def test_rows_of_a_global_batch():
    """Per-process losses on row slices average to the single-process loss."""
    log_px, z, mu, logvar = batch(size=8)
    whole = ed_elbo(log_px, z, mu, logvar, std_normal(3), dataset_size=100)
    parts = [
        ed_elbo(log_px[o : o + 4], z[o : o + 4], mu, logvar, std_normal(3), dataset_size=100, row_offset=o)
        for o in (0, 4)
    ]
    torch.testing.assert_close((parts[0].loss + parts[1].loss) / 2, whole.loss, rtol=0, atol=1e-12)
    e_parts = [elbo(log_px[o : o + 4], z[o : o + 4], mu, logvar, std_normal(3), row_offset=o) for o in (0, 4)]
    torch.testing.assert_close((e_parts[0].loss + e_parts[1].loss) / 2, elbo(log_px, z, mu, logvar, std_normal(3)).loss)


def _raises(name, fn, *args, **kwargs):
    with pytest.raises(EdvaeError) as info:
        fn(*args, **kwargs)
    assert name in str(info.value), str(info.value)


def test_bad_inputs_are_named():
    log_px, z, mu, logvar = batch()
    prior = std_normal(3)
    _raises("mi_estimator", ed_elbo, log_px, z, mu, logvar, prior, dataset_size=100, mi_estimator="full")
    _raises("entropy_estimator", ed_elbo, log_px, z, mu, logvar, prior, dataset_size=100, entropy_estimator="infonce")
    _raises("critic", ed_elbo, log_px, z, mu, logvar, prior, dataset_size=100, critic=BilinearCritic(3))
    _raises("dataset_size", ed_elbo, log_px, z, mu, logvar, prior, dataset_size=None)
    _raises("dataset_size", ed_elbo, log_px, z, mu, logvar, prior, dataset_size=5)
    _raises("log_px", ed_elbo, log_px[:3], z, mu, logvar, prior, dataset_size=100)
    _raises("log_px", elbo, log_px[:, None], z, mu, logvar, prior)
    _raises("prior", ed_elbo, log_px, z, mu, logvar, std_normal(2), dataset_size=100)
    _raises("prior", elbo, log_px, z, mu, logvar, std_normal(2))
    _raises("kl", elbo, log_px, z, mu, logvar, prior, kl="exact")
    _raises("logvar", elbo, log_px, z, mu, logvar[:, :2], prior)
    bad = mu.clone()
    bad[0, 0] = float("nan")
    _raises("mu", ed_elbo, log_px, z, bad, logvar, prior, dataset_size=100)
    _raises("mu", elbo, log_px, z, bad, logvar, prior)
