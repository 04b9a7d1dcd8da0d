"""Every split of the KL in one objective (edvae.objectives.decomposed_elbo) and its presets
beta-VAE and beta-TCVAE (edvae.objective_kinds), against the ELBO and the decomposition.

The identities tested are exact algebra of the same tensors, so they hold to rounding:

* beta-TCVAE at alpha = beta = gamma = 1: I + TC + sum_d KL_d telescopes to
  mean_i [log q(z_i|x_i) - log p(z_i)] for every estimator of q_hat (the same weights enter
  q_hat and every q_hat_d) when log p = sum_d log p_d, so the loss IS the negative Monte-Carlo
  ELBO, and so are its gradients;
* beta-VAE at beta = 1 is the ELBO with the same KL (analytic for N(0, I));
* any weights: the loss is -R + w_kl KL + w_mi I + ... with the terms of
  :func:`edvae.estimators.decompose` on the same batch.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, Independent, Laplace, MixtureSameFamily, Normal

from edvae import estimators as E
from edvae.config import validate_config
from edvae.errors import EdvaeError
from edvae.objective_kinds import OBJECTIVES, BetaTCVAEObjective, BetaVAEObjective, build_objective
from edvae.objectives import decomposed_elbo, ed_elbo, elbo

F64 = torch.float64
N = 1000


def batch(size=16, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(size, dim, generator=g, dtype=F64)
    logvar = -2.0 + 2.0 * torch.rand(size, dim, generator=g, dtype=F64)
    eps = torch.randn(size, dim, generator=g, dtype=F64)
    log_px = -10.0 + torch.randn(size, generator=g, dtype=F64)
    mu, logvar, log_px = (t.requires_grad_() for t in (mu, logvar, log_px))
    z = mu + (0.5 * logvar).exp() * eps  # z depends on mu and logvar, as in training
    return log_px, z, mu, logvar


def normal(dim=3):
    return Independent(Normal(torch.zeros(dim, dtype=F64), torch.ones(dim, dtype=F64)), 1)


def laplace(dim=3):
    return Independent(Laplace(torch.zeros(dim, dtype=F64), torch.ones(dim, dtype=F64)), 1)


def mixture(dim=3):
    locs = torch.tensor([[-1.0] * dim, [1.0] * dim], dtype=F64)
    return MixtureSameFamily(
        Categorical(probs=torch.tensor([0.4, 0.6], dtype=F64)), Independent(Normal(locs, torch.full_like(locs, 0.5)), 1)
    )


def grads(loss, inputs):
    return torch.autograd.grad(loss, inputs, retain_graph=True)


TCVAE_1 = dict(
    kl_weight=0.0, mi_weight=1.0, entropy_weight=0.0, cross_entropy_weight=0.0, tc_weight=1.0, dimwise_kl_weight=1.0
)


@pytest.mark.parametrize("estimator", ["mss", "mws", "batch"])
@pytest.mark.parametrize("prior", [normal, laplace], ids=["normal", "laplace"])
@pytest.mark.parametrize("diagnostics", [True, False])
def test_beta_tcvae_at_unit_weights_is_the_monte_carlo_elbo_loss_and_gradients(estimator, prior, diagnostics):
    log_px, z, mu, logvar = batch()
    p = prior()
    out = decomposed_elbo(
        log_px, z, mu, logvar, p, dataset_size=N, estimator=estimator, diagnostics=diagnostics, **TCVAE_1
    )
    mc_elbo = log_px.mean() - (E.log_posterior(z, mu, logvar) - p.log_prob(z)).mean()
    torch.testing.assert_close(out.loss, -mc_elbo, rtol=0, atol=1e-12)
    for mine, reference in zip(
        grads(out.loss, (log_px, mu, logvar)), grads(-mc_elbo, (log_px, mu, logvar)), strict=True
    ):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-12)
    if diagnostics:  # the split it reports adds up to the same Monte-Carlo KL
        t = out.terms
        torch.testing.assert_close(
            t["mi"] + t["total_correlation"] + t["dimwise_kl"],
            -mc_elbo.detach() + log_px.mean().detach(),
            rtol=0,
            atol=1e-10,
        )


def test_beta_tcvae_weights_enter_the_terms_of_decompose():
    """alpha I + beta TC + gamma sum_d KL_d at (2, 6, 0.5), against decompose's terms, and the
    gradient against the same combination built by hand from the estimators."""
    log_px, z, mu, logvar = batch(seed=1)
    p = normal()
    alpha, beta, gamma = 2.0, 6.0, 0.5
    out = decomposed_elbo(
        log_px,
        z,
        mu,
        logvar,
        p,
        dataset_size=N,
        **dict(TCVAE_1, mi_weight=alpha, tc_weight=beta, dimwise_kl_weight=gamma),
    )
    dec = E.decompose(z, mu, logvar, p, dataset_size=N)
    expected = -log_px.mean() + alpha * dec.mi + beta * dec.total_correlation + gamma * dec.dimwise_kl.sum()
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.terms["total_correlation"], dec.total_correlation.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(out.terms["dimwise_kl"], dec.dimwise_kl.sum().detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(out.terms["mi"], dec.mi.detach(), rtol=0, atol=1e-10)
    # by hand, term by term
    log_q = E.log_aggregate_posterior(z, mu, logvar, dataset_size=N)
    log_q_d = torch.stack(
        [
            E.log_aggregate_posterior(z[:, d : d + 1], mu[:, d : d + 1], logvar[:, d : d + 1], dataset_size=N)
            for d in range(3)
        ],
        1,
    )
    mi = (E.log_posterior(z, mu, logvar) - log_q).mean()
    tc = (log_q - log_q_d.sum(1)).mean()
    dimwise = (log_q_d - Normal(0.0, 1.0).log_prob(z)).sum(1).mean()
    by_hand = -log_px.mean() + alpha * mi + beta * tc + gamma * dimwise
    for mine, reference in zip(
        grads(out.loss, (log_px, mu, logvar)), grads(by_hand, (log_px, mu, logvar)), strict=True
    ):
        torch.testing.assert_close(mine, reference, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kl", ["auto", "analytic", "mc"])
def test_beta_vae_at_beta_one_is_the_elbo(kl):
    log_px, z, mu, logvar = batch()
    weights = dict(TCVAE_1, kl_weight=1.0, mi_weight=0.0, tc_weight=0.0, dimwise_kl_weight=0.0)
    out = decomposed_elbo(log_px, z, mu, logvar, normal(), dataset_size=N, kl=kl, **weights)
    reference = elbo(log_px, z, mu, logvar, normal(), kl=kl)
    assert torch.equal(out.loss, reference.loss)
    for mine, ref in zip(
        grads(out.loss, (log_px, mu, logvar)), grads(reference.loss, (log_px, mu, logvar)), strict=True
    ):
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-14)


def test_beta_vae_weights_the_closed_form_kl():
    log_px, z, mu, logvar = batch()
    out = BetaVAEObjective(dataset_size=N)  # the preset: beta = 4 on the analytic KL
    model_out = type("Out", (), dict(log_px=log_px, z=z, mu=mu, logvar=logvar))
    loss = out(model_out, normal(), mu, logvar, 0).loss
    closed = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
    torch.testing.assert_close(loss, -log_px.mean() + 4.0 * closed, rtol=0, atol=1e-12)


def test_default_weights_are_the_ed_objective():
    log_px, z, mu, logvar = batch()
    out = decomposed_elbo(log_px, z, mu, logvar, mixture(), dataset_size=N)
    torch.testing.assert_close(
        out.loss, ed_elbo(log_px, z, mu, logvar, mixture(), dataset_size=N).loss, rtol=0, atol=1e-10
    )
    weighted = dict(mi_weight=0.5, entropy_weight=2.0, cross_entropy_weight=3.0)
    torch.testing.assert_close(
        decomposed_elbo(log_px, z, mu, logvar, mixture(), dataset_size=N, **weighted).loss,
        ed_elbo(log_px, z, mu, logvar, mixture(), dataset_size=N, **weighted).loss,
        rtol=0,
        atol=1e-10,
    )


def test_a_dimension_wise_kl_refuses_a_prior_that_does_not_factorise():
    log_px, z, mu, logvar = batch()
    with pytest.raises(
        EdvaeError, match="dimwise_kl_weight=1.0 needs a prior that factorises.*MixtureSameFamily.*dimwise_kl_weight=0"
    ):
        decomposed_elbo(log_px, z, mu, logvar, mixture(), dataset_size=N, **TCVAE_1)
    # the total correlation alone concerns q(z) only: any prior will do
    out = decomposed_elbo(log_px, z, mu, logvar, mixture(), dataset_size=N, **dict(TCVAE_1, dimwise_kl_weight=0.0))
    assert "dimwise_kl" not in out.terms and torch.isfinite(out.terms["total_correlation"])


def test_estimates_that_cancel_are_not_computed(monkeypatch):
    """tc_weight = dimwise_kl_weight: the marginals cancel; with diagnostics off they are never
    estimated, and the loss and its gradients are those with diagnostics on."""
    log_px, z, mu, logvar = batch()
    weights = dict(TCVAE_1, tc_weight=3.0, dimwise_kl_weight=3.0, mi_weight=1.0)
    on = decomposed_elbo(log_px, z, mu, logvar, normal(), dataset_size=N, **weights)
    g_on = grads(on.loss, (mu, logvar))

    def refuse(*args, **kwargs):
        raise AssertionError("the marginals were estimated although they cancel")

    monkeypatch.setattr("edvae.objectives.log_aggregate_marginals", refuse)
    off = decomposed_elbo(log_px, z, mu, logvar, normal(), dataset_size=N, diagnostics=False, **weights)
    torch.testing.assert_close(off.loss, on.loss, rtol=0, atol=1e-12)
    for a, b in zip(grads(off.loss, (mu, logvar)), g_on, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert set(off.terms) == {"reconstruction", "cross_entropy", "loss"}


def test_tc_weight_zero_drops_the_total_correlation():
    """alpha I + gamma sum_d KL_d with beta = 0 differs from beta = 1 by exactly TC."""
    log_px, z, mu, logvar = batch(seed=2)
    base = dict(TCVAE_1, tc_weight=0.0)
    without = decomposed_elbo(log_px, z, mu, logvar, normal(), dataset_size=N, **base)
    with_tc = decomposed_elbo(log_px, z, mu, logvar, normal(), dataset_size=N, **dict(base, tc_weight=1.0))
    torch.testing.assert_close(with_tc.loss - without.loss, with_tc.terms["total_correlation"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name, value", [("tc_weight", float("nan")), ("kl_weight", "1"), ("dimwise_kl_weight", True)])
def test_bad_weights_are_named(name, value):
    log_px, z, mu, logvar = batch()
    with pytest.raises(EdvaeError, match=name):
        decomposed_elbo(log_px, z, mu, logvar, normal(), dataset_size=N, **{name: value})


# ----------------------------------------------------------------------------- presets
def test_a_preset_kind_alone_is_the_whole_preset_and_explicit_settings_win():
    cfg = validate_config({"objective": {"kind": "beta-tcvae"}}).objective
    assert (
        cfg.mi_weight,
        cfg.tc_weight,
        cfg.dimwise_kl_weight,
        cfg.entropy_weight,
        cfg.cross_entropy_weight,
        cfg.kl_weight,
    ) == (1, 6, 1, 0, 0, 0)
    assert validate_config({"objective": {"kind": "beta-tcvae", "tc_weight": 2}}).objective.tc_weight == 2
    cfg = validate_config({"objective": {"kind": "beta-vae"}}).objective
    assert (cfg.kl_weight, cfg.mi_weight, cfg.entropy_weight, cfg.cross_entropy_weight) == (4, 0, 0, 0)
    # a stored config (every key written out) validates to itself
    raw = validate_config({"objective": {"kind": "beta-tcvae", "mi_weight": 0.5}}).model_dump()
    assert validate_config(raw).model_dump() == raw
    # the kind's class and its direct construction agree with the config
    built = build_objective(validate_config({"objective": {"kind": "beta-tcvae"}}).objective, N)
    assert isinstance(built, BetaTCVAEObjective) and built.options == BetaTCVAEObjective(dataset_size=N).options
    assert {"decomposed", "beta-vae", "beta-tcvae"} <= set(OBJECTIVES)


def test_split_weights_are_refused_where_they_do_nothing():
    with pytest.raises(EdvaeError, match="objective.*tc_weight acts only with"):
        validate_config({"objective": {"kind": "ed", "tc_weight": 2.0}})
    with pytest.raises(EdvaeError, match="kl_weight acts only with"):
        validate_config({"objective": {"kind": "elbo", "kl_weight": 2.0}})
    with pytest.raises(EdvaeError, match="one estimator"):
        build_objective(validate_config({"objective": {"kind": "beta-tcvae", "mi_estimator": "batch"}}).objective, N)
    with pytest.raises(EdvaeError, match="objective 'beta-tcvae' has no option 'beta'; its options are mi_weight"):
        BetaTCVAEObjective(dataset_size=N, beta=6.0)


@pytest.mark.parametrize("variant", ["beta-vae", "beta-tcvae"])
def test_the_presets_train_as_study_variants(tmp_path, tiny_config, variant):
    import json

    from edvae.experiments.variants import VARIANTS
    from edvae.training import train

    cfg = tiny_config(model={"prior": "normal"}, objective=VARIANTS[variant]["objective"], train={"epochs": 2})
    result = train(cfg, tmp_path / "run")
    assert result.completed
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in rows if r["split"] == "train")
    assert {"total_correlation", "dimwise_kl", "mi", "kl"} <= set(logged)


def test_the_beta_tcvae_variant_on_a_non_factorised_prior_fails_in_one_line(tmp_path, tiny_config):
    from edvae.training import train

    cfg = tiny_config(model={"prior": "true"}, objective={"kind": "beta-tcvae"}, train={"epochs": 1})
    with pytest.raises(EdvaeError, match="factorises"):
        train(cfg, tmp_path / "run")
