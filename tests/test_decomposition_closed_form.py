"""Total correlation and dimension-wise KL of ``estimators.decompose`` against closed forms.

Posteriors q(z|x_n) = N(A x_n, s^2 I) with x_n whitened draws (empirical mean 0, covariance I
exactly), so the aggregate posterior q(z) = (1/N) sum_n q(z|x_n) has mean 0 and covariance
Sigma = A A^T + s^2 I exactly and tends to N(0, Sigma) as N grows. For N(0, Sigma) and the prior
N(0, I):

    TC          = 1/2 ( sum_j log Sigma_jj - log det Sigma )
    dimwise KL_j = KL(N(0, Sigma_jj) || N(0, 1)) = 1/2 ( Sigma_jj - 1 - log Sigma_jj )
    marginal KL = KL(N(0, Sigma) || N(0, I)) = 1/2 ( tr Sigma - D - log det Sigma ) = TC + sum_j KL_j.

Tolerances: every estimate is a mean over R query rows, so its Monte Carlo standard error is
the standard deviation of the per-row terms (from 500 of the rows) over sqrt(R); we
allow 4 standard errors plus 0.01 nats for the finite mixture (N = 3000 components of width
s = 0.5) not being exactly Gaussian (its own-component term inflates log q_hat(z_i) by about
q(z_i|x_i) / (N q(z_i)) <= 1 / (N s^D (2 pi)^{D/2} min q) ~ 1e-3 here).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from edvae import priors
from edvae.estimators import decompose, log_aggregate_posterior, log_posterior

A = torch.tensor([[1.3, 0.0, 0.0], [0.5, 0.4, 0.0], [0.4, -0.6, 0.9]], dtype=torch.float64)
S = 0.5
D = 3
DTYPE = torch.float64
SEED = 0


def _normal_prior() -> Independent:
    return Independent(Normal(torch.zeros(D, dtype=DTYPE), torch.ones(D, dtype=DTYPE)), 1)


def _closed_forms() -> tuple[float, torch.Tensor, float]:
    sigma = A @ A.T + S**2 * torch.eye(D, dtype=DTYPE)
    diag = torch.diagonal(sigma)
    tc = 0.5 * (diag.log().sum() - torch.logdet(sigma))
    dimwise = 0.5 * (diag - 1 - diag.log())
    marginal = 0.5 * (sigma.trace() - D - torch.logdet(sigma))
    return float(tc), dimwise, float(marginal)


def _posteriors(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=gen, dtype=DTYPE)
    x = x - x.mean(0)
    x = x @ torch.linalg.inv(torch.linalg.cholesky(x.T @ x / n)).T  # empirical covariance I
    mu = x @ A.T
    return mu, torch.full_like(mu, math.log(S**2)), gen


def _per_row_terms(z, mu, logvar, method, dataset_size=None):
    """Per-row TC and dimension-wise KL terms with the same estimator, to get standard errors."""
    kw = dict(method=method, dataset_size=dataset_size)
    log_q = log_aggregate_posterior(z, mu, logvar, **kw)
    log_q_d = torch.stack(
        [log_aggregate_posterior(z[:, j : j + 1], mu[:, j : j + 1], logvar[:, j : j + 1], **kw) for j in range(D)], 1
    )
    return log_q - log_q_d.sum(1), log_q_d - Normal(0.0, 1.0).log_prob(z)


def test_closed_forms_satisfy_the_identity():
    tc, dimwise, marginal = _closed_forms()
    assert tc > 0.1 and bool((dimwise > 0.03).all())  # the test below is not trivially near 0
    assert marginal == pytest.approx(tc + float(dimwise.sum()), abs=1e-12)


@pytest.mark.parametrize("method", ["full", "mss"])
def test_tc_and_dimwise_kl_of_a_gaussian_aggregate_posterior(method):
    tc, dimwise, marginal = _closed_forms()
    n = 3000
    mu, logvar, gen = _posteriors(n, seed=SEED)
    if method == "full":  # all N posteriors are the columns; the first 1500 are queried
        rows, columns, dataset_size = 1500, slice(None), None
    else:  # minibatch stratified sampling with a batch of 1500 out of N = 3000
        rows, dataset_size = 1500, n
        columns = torch.randperm(n, generator=gen)[:rows]
    mu_c, logvar_c = mu[columns], logvar[columns]
    z = mu_c[:rows] + S * torch.randn(rows, D, generator=gen, dtype=DTYPE)
    dec = decompose(z, mu_c, logvar_c, _normal_prior(), method=method, dataset_size=dataset_size)
    # standard deviations of the per-row terms, from the first 500 rows (the same estimator)
    tc_rows, dimwise_rows = _per_row_terms(z[:500], mu_c, logvar_c, method, dataset_size)
    se_tc = float(tc_rows.std()) / math.sqrt(rows)
    se_dim = dimwise_rows.std(0) / math.sqrt(rows)
    assert abs(float(dec.total_correlation) - tc) < 4 * se_tc + 0.01
    assert bool(((dec.dimwise_kl - dimwise).abs() < 4 * se_dim + 0.01).all()), (dec.dimwise_kl, dimwise)
    assert abs(float(dec.marginal_kl) - marginal) < 4 * (se_tc + float(se_dim.sum())) + 0.04


@pytest.mark.parametrize("method", ["mss", "mws", "batch", "full"])
@pytest.mark.parametrize("prior_name", ["normal", "laplace", "student_t"])
def test_marginal_kl_is_tc_plus_dimwise_kl_for_a_factorised_prior(method, prior_name):
    """marginal_kl = mean_i [log q_hat(z_i) - log p(z_i)] and TC + sum_j KL_j telescopes to
    mean_i [log q_hat(z_i) - sum_j log p_j(z_ij)]: equal to rounding for every estimator of
    q_hat (the same weights enter q_hat and every q_hat_j), whenever log p = sum_j log p_j.
    With mi it is the whole split of the Monte-Carlo KL of beta-TCVAE:
    mean_i [log q(z_i|x_i) - log p(z_i)] = mi + TC + sum_j KL_j."""
    prior = priors.make(prior_name, D).double()
    mu, logvar, gen = _posteriors(64, seed=1)
    z = mu + S * torch.randn(mu.shape, generator=gen, dtype=DTYPE)
    dec = decompose(z, mu, logvar, prior, method=method, dataset_size=None if method in ("batch", "full") else 1000)
    assert dec.dimwise_kl is not None and dec.dimwise_kl.shape == (D,)
    assert float(dec.marginal_kl) == pytest.approx(float(dec.total_correlation + dec.dimwise_kl.sum()), abs=1e-10)
    mc_kl = (log_posterior(z, mu, logvar) - prior().log_prob(z)).mean()
    assert float(mc_kl) == pytest.approx(float(dec.mi + dec.total_correlation + dec.dimwise_kl.sum()), abs=1e-10)


@pytest.mark.parametrize("prior_name", ["mog_ring", "banana"])
def test_a_non_factorised_prior_gets_tc_but_no_dimwise_kl(prior_name):
    mu, logvar, gen = _posteriors(64, seed=3)
    z = mu[:, :2] + S * torch.randn(64, 2, generator=gen, dtype=DTYPE)
    dec = decompose(z, mu[:, :2], logvar[:, :2], priors.make(prior_name, 2).double(), method="batch")
    assert dec.dimwise_kl is None and dec.total_correlation is not None


def test_non_factorised_prior_has_no_dimwise_kl_but_the_same_tc():
    """A prior that is not an ``Independent`` product gets dimwise_kl None (the per-dimension
    marginals p_j are not available), even N(0, I) written as a MultivariateNormal; the total
    correlation does not involve the prior and is unchanged."""
    mu, logvar, gen = _posteriors(64, seed=2)
    z = mu + S * torch.randn(mu.shape, generator=gen, dtype=DTYPE)
    mvn = MultivariateNormal(torch.zeros(D, dtype=DTYPE), torch.eye(D, dtype=DTYPE))
    joint = decompose(z, mu, logvar, mvn, method="batch")
    product = decompose(z, mu, logvar, _normal_prior(), method="batch")
    assert joint.dimwise_kl is None and product.dimwise_kl is not None
    assert float(joint.total_correlation) == pytest.approx(float(product.total_correlation), abs=1e-12)
    assert float(joint.marginal_kl) == pytest.approx(float(product.marginal_kl), abs=1e-10)
    skipped = decompose(z, mu, logvar, _normal_prior(), method="batch", per_dimension=False)
    assert skipped.total_correlation is None and skipped.dimwise_kl is None


def test_mws_offsets_tc_by_d_minus_1_log_n():
    """MWS weights every column 1/(N B) (rows sum to 1/N, as published), so each of its log
    q_hat is the batch estimate minus log N: its TC is the batch TC plus (D - 1) log N and each
    dimension-wise KL the batch one minus log N. Only "mss", "batch" and "full" estimate the
    closed forms above; MWS numbers are for comparison with published ones."""
    mu, logvar, gen = _posteriors(64, seed=4)
    z = mu + S * torch.randn(mu.shape, generator=gen, dtype=DTYPE)
    n = 5000
    mws = decompose(z, mu, logvar, _normal_prior(), method="mws", dataset_size=n)
    batch = decompose(z, mu, logvar, _normal_prior(), method="batch")
    assert float(mws.total_correlation - batch.total_correlation) == pytest.approx((D - 1) * math.log(n), abs=1e-9)
    torch.testing.assert_close(mws.dimwise_kl, batch.dimwise_kl - math.log(n), atol=1e-9, rtol=0)
