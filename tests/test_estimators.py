"""Tests of edvae.estimators against brute force, closed forms and the known MSS defects."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from edvae import estimators as E
from edvae.critics import BilinearCritic, MLPCritic
from edvae.errors import EdvaeError
from edvae.estimators import kernel

F64 = torch.float64
LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------------
# brute-force references: explicit (R, B, D) tensors, explicit weight matrices and loops


def brute_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """L[i, j] = sum_d log N(z_id; mu_jd, exp(logvar_jd)) from the full (R, B, D) tensor."""
    diff = z[:, None, :] - mu[None, :, :]
    per_dim = -0.5 * (diff**2 / logvar.exp()[None] + logvar[None] + LOG_2PI)
    return per_dim.sum(-1)


def brute_weights(method: str, rows: int, batch: int, n: int, row_offset: int = 0) -> torch.Tensor:
    """W[i, j] in probability space, written out entry by entry."""
    w = torch.empty(rows, batch, dtype=F64)
    m = batch - 1
    for i in range(rows):
        g = i + row_offset  # global row index
        for j in range(batch):
            if method == "mss":
                if j == g:
                    w[i, j] = 1 / n
                elif j == (g + 1) % batch:
                    w[i, j] = (n - m) / (n * m)
                else:
                    w[i, j] = 1 / m
            elif method == "mws":
                w[i, j] = 1 / (n * batch)
            else:  # "batch", and "full" (then n == batch)
                w[i, j] = 1 / batch
    return w


def brute_log_q(z, mu, logvar, method, n=None, row_offset=0):
    """log sum_j W[i, j] q(z_i | x_j), the weights added once per pair, after the sum over D."""
    n = mu.shape[0] if n is None else n
    w = brute_weights(method, z.shape[0], mu.shape[0], n, row_offset)
    return torch.logsumexp(w.log() + brute_log_density(z, mu, logvar), dim=1)


def posterior_batch(batch: int, dim: int, seed: int, *, mu_scale=1.0, logvar_range=(-2.0, 1.0)):
    """mu, logvar (B, D) and one sample z_i ~ q(z | x_i) per row, float64."""
    g = torch.Generator().manual_seed(seed)
    mu = mu_scale * torch.randn(batch, dim, generator=g, dtype=F64)
    lo, hi = logvar_range
    logvar = lo + (hi - lo) * torch.rand(batch, dim, generator=g, dtype=F64)
    z = mu + (0.5 * logvar).exp() * torch.randn(batch, dim, generator=g, dtype=F64)
    return z, mu, logvar


def std_normal(dim: int) -> Independent:
    return Independent(Normal(torch.zeros(dim, dtype=F64), torch.ones(dim, dtype=F64)), 1)


def mixture_prior(dim: int) -> MixtureSameFamily:
    locs = torch.stack([torch.full((dim,), -1.5), torch.full((dim,), 1.5)]).to(F64)
    return MixtureSameFamily(
        Categorical(probs=torch.tensor([0.3, 0.7], dtype=F64)),
        Independent(Normal(locs, torch.full_like(locs, 0.7)), 1),
    )


def method_kwargs(method: str, n: int) -> dict:
    return {} if method == "full" else {"dataset_size": n}


# ---------------------------------------------------------------------------------------------
# every method against brute force


@pytest.mark.parametrize("method", E.METHODS)
@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_log_q_matches_brute_force(method, chunk_size):
    z, mu, logvar = posterior_batch(7, 3, seed=0)
    n = 7 if method == "full" else 50
    got = E.log_aggregate_posterior(z, mu, logvar, method=method, chunk_size=chunk_size, **method_kwargs(method, n))
    torch.testing.assert_close(got, brute_log_q(z, mu, logvar, method, n), rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", E.METHODS)
def test_column_blocks_merge_exactly(method, monkeypatch):
    """Columns split into blocks of 2 (merged with logaddexp) give the same values."""
    monkeypatch.setattr(kernel, "_MAX_BLOCK_COLUMNS", 2)
    z, mu, logvar = posterior_batch(7, 2, seed=1)
    n = 7 if method == "full" else 30
    got = E.log_aggregate_posterior(z, mu, logvar, method=method, chunk_size=3, **method_kwargs(method, n))
    torch.testing.assert_close(got, brute_log_q(z, mu, logvar, method, n), rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["mss", "mws", "batch"])
@pytest.mark.parametrize(("rows", "row_offset"), [(3, 0), (3, 2), (4, 5), (1, 8)])
def test_rows_of_a_global_batch(method, rows, row_offset):
    """R < B rows at row_offset equal the same rows of the single-process computation."""
    z, mu, logvar = posterior_batch(9, 3, seed=2)
    whole = E.log_aggregate_posterior(z, mu, logvar, dataset_size=40, method=method)
    part = E.log_aggregate_posterior(
        z[row_offset : row_offset + rows],
        mu,
        logvar,
        dataset_size=40,
        method=method,
        row_offset=row_offset,
        chunk_size=2,
    )
    torch.testing.assert_close(part, whole[row_offset : row_offset + rows], rtol=0, atol=1e-12)
    ref = brute_log_q(z[row_offset : row_offset + rows], mu, logvar, method, 40, row_offset)
    torch.testing.assert_close(part, ref, rtol=0, atol=1e-10)


def test_rows_of_a_global_batch_decompose_and_infonce():
    z, mu, logvar = posterior_batch(8, 2, seed=3)
    prior = std_normal(2)
    halves = [E.decompose(z[o : o + 4], mu, logvar, prior, dataset_size=20, row_offset=o) for o in (0, 4)]
    whole = E.decompose(z, mu, logvar, prior, dataset_size=20)
    for name in ("mi", "entropy", "cross_entropy", "kl", "posterior_entropy"):
        mean = (getattr(halves[0], name) + getattr(halves[1], name)) / 2
        torch.testing.assert_close(mean, getattr(whole, name), rtol=0, atol=1e-12)
    nce = [E.infonce(z[o : o + 4], mu, logvar, row_offset=o) for o in (0, 4)]
    torch.testing.assert_close((nce[0] + nce[1]) / 2, E.infonce(z, mu, logvar), rtol=0, atol=1e-12)


def test_full_accepts_any_query_points():
    _, mu, logvar = posterior_batch(6, 2, seed=4)
    queries = torch.randn(11, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    got = E.log_aggregate_posterior(queries, mu, logvar, method="full")
    ref = torch.logsumexp(brute_log_density(queries, mu, logvar), 1) - math.log(6)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


def test_float32_inputs_give_float32_outputs_close_to_float64():
    z, mu, logvar = posterior_batch(16, 4, seed=6, logvar_range=(-12.0, 0.0))
    got = E.log_aggregate_posterior(z.float(), mu.float(), logvar.float(), dataset_size=100)
    assert got.dtype == torch.float32
    ref = brute_log_q(z.float().double(), mu.float().double(), logvar.float().double(), "mss", 100)
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-4)


def test_log_posterior_and_posterior_entropy():
    z, mu, logvar = posterior_batch(5, 3, seed=7)
    ref = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    torch.testing.assert_close(E.log_posterior(z, mu, logvar), ref.log_prob(z))
    torch.testing.assert_close(E.posterior_entropy(logvar), ref.entropy())
    torch.testing.assert_close(E.log_posterior(z[2:4], mu, logvar, row_offset=2), ref.log_prob(z)[2:4])


# ---------------------------------------------------------------------------------------------
# MSS weights


@pytest.mark.parametrize(("batch", "n"), [(2, 2), (2, 10), (5, 5), (6, 1000)])
@pytest.mark.parametrize("row_offset", [0, 1])
def test_mss_weights(batch, n, row_offset):
    log_w = E.mss_log_weights(batch, n, row_offset=row_offset)
    rows, m = batch - row_offset, batch - 1
    assert log_w.shape == (rows, batch) and log_w.dtype == F64
    # every row sums to 1 in probability space
    torch.testing.assert_close(torch.logsumexp(log_w, 1), torch.zeros(rows, dtype=F64))
    w = log_w.exp()
    for i in range(rows):
        g = i + row_offset
        k = (g + 1) % batch
        assert w[i, g].item() == pytest.approx(1 / n, rel=1e-12)  # self weight, global index
        assert w[i, k].item() == pytest.approx((n - m) / (n * m), rel=1e-12)
        others = [j for j in range(batch) if j not in (g, k)]
        torch.testing.assert_close(w[i, others], torch.full((len(others),), 1 / m, dtype=F64))
    torch.testing.assert_close(w, brute_weights("mss", rows, batch, n, row_offset))


def test_mss_weights_slice_of_rows():
    full = E.mss_log_weights(8, 100)
    torch.testing.assert_close(E.mss_log_weights(8, 100, row_offset=3, rows=2), full[3:5])


def buggy_stride_log_weights(batch: int, n: int) -> torch.Tensor:
    """The widely copied defect, reproduced as a reference: the 1/N entries are written at flat
    positions 0, B, 2B, ... of the row-major (B, B) matrix, i.e. with stride B instead of the
    diagonal's B + 1, so they land in column 0 of every row (and the stratum weight in
    column 1); the sample's own posterior then gets weight 1/M."""
    m = batch - 1
    w = torch.full((batch, batch), 1 / m, dtype=F64)
    w[:, 0] = 1 / n
    w[:, 1] = (n - m) / (n * m)
    return w.log()


def test_mss_mutual_information_far_above_log_batch():
    """N = 100000, B = 64, sigma = 0.01: the true MI (about log N) is far above log B = 4.16.
    Correct MSS stays within 5% of the full-data-set value; the stride-B defect collapses."""
    n, batch, dim = 100_000, 64, 3
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(n, dim, generator=g, dtype=F64)
    logvar = torch.full((n, dim), 2 * math.log(0.01), dtype=F64)
    prior = std_normal(dim)
    full = E.dataset_decomposition(mu, logvar, prior, num_queries=1000, generator=g).mi.item()
    assert full > 2 * math.log(batch)
    mss, stride_bug = [], []
    for _ in range(4):
        idx = torch.randperm(n, generator=g)[:batch]
        z = mu[idx] + 0.01 * torch.randn(batch, dim, generator=g, dtype=F64)
        d = E.decompose(z, mu[idx], logvar[idx], prior, dataset_size=n, per_dimension=False)
        mss.append(d.mi.item())
        own = E.log_posterior(z, mu[idx], logvar[idx])
        log_l = brute_log_density(z, mu[idx], logvar[idx])
        bug_q = torch.logsumexp(buggy_stride_log_weights(batch, n) + log_l, 1)
        stride_bug.append((own - bug_q).mean().item())
    mss_mi, bug_mi = sum(mss) / len(mss), sum(stride_bug) / len(stride_bug)
    print(f"\nMI: full={full:.4f} mss={mss_mi:.4f} stride-bug={bug_mi:.4f} log B={math.log(64):.4f}")
    assert abs(mss_mi - full) < 0.05 * full
    assert abs(bug_mi - full) > 0.05 * full  # the defect fails the same criterion
    assert bug_mi < math.log(batch) + 0.5  # ... because it is capped near log B


def test_weights_added_once_per_pair_not_per_dimension():
    """Adding log W per latent dimension (another copied defect) shifts MI by about
    (D - 1) log M; the estimator must match the once-per-pair brute force instead."""
    z, mu, logvar = posterior_batch(6, 4, seed=8)
    n = 1000
    log_w = brute_weights("mss", 6, 6, n).log()
    per_dim = torch.stack(
        [brute_log_density(z[:, d : d + 1], mu[:, d : d + 1], logvar[:, d : d + 1]) for d in range(4)]
    )
    wrong = torch.logsumexp((per_dim + log_w).sum(0), 1)
    got = E.log_aggregate_posterior(z, mu, logvar, dataset_size=n)
    torch.testing.assert_close(got, brute_log_q(z, mu, logvar, "mss", n), rtol=0, atol=1e-10)
    assert (got - wrong).abs().max() > 1.0


# ---------------------------------------------------------------------------------------------
# closed forms: a linear-Gaussian encoder


@pytest.fixture(scope="module")
def linear_gaussian():
    """x ~ N(0, Sx), q(z|x) = N(A x, diag s2), so q(z) = N(0, C), C = A Sx A^T + diag s2.

    Exact: H[q(z)] = 1/2 logdet(2 pi e C), I = H[q(z)] - sum_d 1/2 log(2 pi e s2_d),
    CE to p = N(m, diag v): 1/2 sum_d [log(2 pi v_d) + (C_dd + m_d^2)/v_d], KL = CE - H.
    """
    g = torch.Generator().manual_seed(1)
    n, dim = 20_000, 3
    a = torch.tensor([[1.0, 0.3, 0.0], [-0.4, 0.8, 0.2], [0.1, 0.0, 1.2]], dtype=F64)
    lx = torch.tensor([[1.0, 0, 0], [0.5, 0.8, 0], [-0.3, 0.2, 0.6]], dtype=F64)
    s2 = torch.tensor([0.05, 0.1, 0.02], dtype=F64)
    c = a @ lx @ lx.T @ a.T + torch.diag(s2)
    m = torch.tensor([0.5, -0.3, 0.2], dtype=F64)
    v = torch.tensor([1.5, 0.7, 1.2], dtype=F64)
    entropy = 0.5 * torch.logdet(2 * math.pi * math.e * c).item()
    posterior_entropy = 0.5 * torch.log(2 * math.pi * math.e * s2).sum().item()
    cross_entropy = (0.5 * torch.log(2 * math.pi * v).sum() + 0.5 * ((c.diag() + m**2) / v).sum()).item()
    truth = {
        "mi": entropy - posterior_entropy,
        "entropy": entropy,
        "cross_entropy": cross_entropy,
        "marginal_kl": cross_entropy - entropy,
    }
    x = torch.randn(n, dim, generator=g, dtype=F64) @ lx.T
    mu = x @ a.T
    logvar = s2.log().expand(n, dim).clone()
    prior = Independent(Normal(m, v.sqrt()), 1)
    return {"truth": truth, "mu": mu, "logvar": logvar, "prior": prior, "generator": g, "n": n}


def _mean_over_batches(lg, method, batch, repeats=4):
    g, n = lg["generator"], lg["n"]
    out = []
    for _ in range(repeats):
        idx = torch.randperm(n, generator=g)[:batch]
        mu, logvar = lg["mu"][idx], lg["logvar"][idx]
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=g, dtype=F64)
        out.append(
            E.decompose(z, mu, logvar, lg["prior"], dataset_size=n, method=method, per_dimension=False).as_dict()
        )
    return {k: sum(o[k] for o in out) / repeats for k in out[0]}


def _report(name, truth, est):
    cells = "  ".join(f"{k}: {truth[k]:.4f} vs {est[k]:.4f} ({est[k] - truth[k]:+.4f})" for k in truth)
    print(f"\n[{name}] true vs estimated  {cells}")


def test_full_estimator_matches_closed_form(linear_gaussian):
    lg = linear_gaussian
    d = E.dataset_decomposition(
        lg["mu"], lg["logvar"], lg["prior"], num_queries=4000, generator=lg["generator"]
    ).as_dict()
    _report("full, S=4000 of N=20000", lg["truth"], d)
    for key, value in lg["truth"].items():
        assert d[key] == pytest.approx(value, abs=0.05), key


def test_mss_estimator_matches_closed_form(linear_gaussian):
    lg = linear_gaussian
    est = _mean_over_batches(lg, "mss", 2048)
    _report("mss, B=2048, N=20000", lg["truth"], est)
    for key, value in lg["truth"].items():
        assert est[key] == pytest.approx(value, abs=0.1), key
    for name, method, batch in [("batch", "batch", 2048), ("mws", "mws", 2048)]:
        _report(f"{name}, B={batch} (for the record)", lg["truth"], _mean_over_batches(lg, method, batch, 2))


def test_infonce_is_below_true_mi(linear_gaussian):
    lg = linear_gaussian
    g, n, batch = lg["generator"], lg["n"], 256
    values = []
    for _ in range(4):
        idx = torch.randperm(n, generator=g)[:batch]
        mu, logvar = lg["mu"][idx], lg["logvar"][idx]
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=g, dtype=F64)
        values.append(E.infonce(z, mu, logvar).item())
    nce = sum(values) / len(values)
    print(f"\n[infonce, B=256] true MI {lg['truth']['mi']:.4f} vs InfoNCE {nce:.4f}")
    assert nce < lg["truth"]["mi"]
    assert nce <= math.log(batch)


# ---------------------------------------------------------------------------------------------
# telescoping and bounds


@pytest.mark.parametrize("method", E.METHODS)
def test_telescoping_is_exact(method):
    """-I + H = -mean log q(z_i|x_i) for any log q_hat; with z = mu + sigma * (+-1) per dimension
    that equals the analytic posterior entropy sum_d 1/2 log(2 pi e sigma^2) exactly."""
    _, mu, logvar = posterior_batch(12, 3, seed=9)
    g = torch.Generator().manual_seed(10)
    signs = torch.randint(0, 2, mu.shape, generator=g).to(F64) * 2 - 1
    z = mu + (0.5 * logvar).exp() * signs
    d = E.decompose(z, mu, logvar, std_normal(3), method=method, **method_kwargs(method, 500))
    mc_entropy = -E.log_posterior(z, mu, logvar).mean()
    torch.testing.assert_close(d.entropy - d.mi, mc_entropy, rtol=0, atol=1e-10)
    torch.testing.assert_close(d.entropy - d.mi, d.posterior_entropy, rtol=0, atol=1e-10)
    torch.testing.assert_close(d.marginal_kl, d.cross_entropy - d.entropy, rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    method=st.sampled_from(E.METHODS),
    batch=st.integers(2, 9),
    dim=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    mu_scale=st.floats(0.0, 5.0),
    n_extra=st.integers(0, 10_000),
)
def test_telescoping_property(method, batch, dim, seed, mu_scale, n_extra):
    z, mu, logvar = posterior_batch(batch, dim, seed, mu_scale=mu_scale, logvar_range=(-8.0, 3.0))
    d = E.decompose(z, mu, logvar, std_normal(dim), method=method, **method_kwargs(method, batch + n_extra))
    mc_entropy = -E.log_posterior(z, mu, logvar).mean()
    torch.testing.assert_close(d.entropy - d.mi, mc_entropy, rtol=0, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    method=st.sampled_from(["mss", "full", "batch"]),
    batch=st.integers(2, 9),
    dim=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    mu_scale=st.floats(0.0, 5.0),
    z_scale=st.floats(0.0, 10.0),
    n_extra=st.integers(0, 10_000),
)
def test_mi_upper_bound_holds_row_by_row(method, batch, dim, seed, mu_scale, z_scale, n_extra):
    """log q(z_i|x_i) - log q_hat(z_i) <= log N for every row and ANY z (W[i,i] >= 1/N); for the
    batch estimator (and InfoNCE) the cap is log B."""
    _, mu, logvar = posterior_batch(batch, dim, seed, mu_scale=mu_scale, logvar_range=(-8.0, 3.0))
    z = z_scale * torch.randn(batch, dim, dtype=F64, generator=torch.Generator().manual_seed(seed))
    n = batch if method == "full" else batch + n_extra
    log_q = E.log_aggregate_posterior(z, mu, logvar, method=method, **method_kwargs(method, n))
    per_row = E.log_posterior(z, mu, logvar) - log_q
    cap = math.log(batch) if method == "batch" else math.log(n)
    assert per_row.max().item() <= cap + 1e-9
    assert E.infonce(z, mu, logvar).item() <= math.log(batch) + 1e-9


@settings(max_examples=40, deadline=None)
@given(
    method=st.sampled_from(["mss", "full"]),
    batch=st.integers(2, 9),
    dim=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    mu_scale=st.floats(0.0, 5.0),
    n_extra=st.integers(0, 10_000),
)
def test_mi_between_zero_and_log_n(method, batch, dim, seed, mu_scale, n_extra):
    """0 <= I_hat <= log N, row by row, wherever it is a deterministic fact: the rows are at their
    posterior modes and the variance is shared across the batch, so L[i, i] >= L[i, j] and, the
    weights of a row summing to 1, log q_hat(z_i) <= L[i, i]. (At random samples from
    heteroscedastic posteriors a single batch may dip below 0; see the test after this one.)"""
    _, mu, logvar = posterior_batch(batch, dim, seed, mu_scale=mu_scale, logvar_range=(-8.0, 3.0))
    logvar = logvar[:1].expand_as(mu)
    n = batch if method == "full" else batch + n_extra
    d = E.decompose(mu.clone(), mu, logvar, std_normal(dim), method=method, **method_kwargs(method, n))
    per_row = E.log_posterior(mu, mu, logvar) - E.log_aggregate_posterior(
        mu, mu, logvar, method=method, **method_kwargs(method, n)
    )
    assert per_row.min().item() >= -1e-9
    assert per_row.max().item() <= math.log(n) + 1e-9
    assert -1e-9 <= d.mi.item() <= math.log(n) + 1e-9


@pytest.mark.parametrize("method", ["mss", "full"])
def test_mi_nonnegative_on_average_over_samples(method):
    """E_z[I_hat] >= I >= 0 (Jensen, for MSS; exact for full) on heteroscedastic batches."""
    for seed in range(5):
        _, mu, logvar = posterior_batch(16, 2, seed, logvar_range=(-6.0, 3.0))
        g = torch.Generator().manual_seed(100 + seed)
        values = []
        for _ in range(200):
            z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=g, dtype=F64)
            log_q = E.log_aggregate_posterior(z, mu, logvar, method=method, **method_kwargs(method, 16))
            values.append((E.log_posterior(z, mu, logvar) - log_q).mean().item())
        assert sum(values) / len(values) > 0


# ---------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("method", E.METHODS)
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_gradcheck(method, chunk_size, monkeypatch):
    monkeypatch.setattr(kernel, "_MAX_BLOCK_COLUMNS", 3)  # several column blocks, too
    z, mu, logvar = posterior_batch(5, 2, seed=11)
    inputs = tuple(t.clone().requires_grad_() for t in (z, mu, logvar))
    kwargs = method_kwargs(method, 20)

    def fn(z, mu, logvar):
        return E.log_aggregate_posterior(z, mu, logvar, method=method, chunk_size=chunk_size, **kwargs)

    assert torch.autograd.gradcheck(fn, inputs)
    if method != "full":
        assert torch.autograd.gradcheck(
            lambda z, mu, logvar: E.log_aggregate_posterior(
                z, mu, logvar, method=method, chunk_size=chunk_size, row_offset=2, **kwargs
            ),
            (inputs[0][2:4].detach().requires_grad_(), inputs[1], inputs[2]),
        )


def test_gradcheck_decomposition_and_infonce():
    z, mu, logvar = posterior_batch(4, 2, seed=12)
    inputs = tuple(t.clone().requires_grad_() for t in (z, mu, logvar))
    prior = std_normal(2)

    def terms(z, mu, logvar):
        d = E.decompose(z, mu, logvar, prior, dataset_size=10, chunk_size=1)
        return d.mi, d.entropy, d.total_correlation, d.dimwise_kl

    assert torch.autograd.gradcheck(terms, inputs)
    assert torch.autograd.gradcheck(lambda *a: E.infonce(*a, chunk_size=1), inputs)


# ---------------------------------------------------------------------------------------------
# decomposition, KL, InfoNCE critics, data-set estimator


def test_decomposition_identities_and_as_dict():
    z, mu, logvar = posterior_batch(10, 3, seed=13)
    prior = Independent(Normal(torch.tensor([0.2, -0.1, 0.0], dtype=F64), torch.tensor([1.0, 2.0, 0.5], dtype=F64)), 1)
    d = E.decompose(z, mu, logvar, prior, dataset_size=100)
    torch.testing.assert_close(d.marginal_kl, d.total_correlation + d.dimwise_kl.sum(), rtol=0, atol=1e-10)
    # per-dimension marginals, each with its own logsumexp and the same weights
    log_w = brute_weights("mss", 10, 10, 100).log()
    log_q_d = torch.stack(
        [
            torch.logsumexp(log_w + brute_log_density(z[:, k : k + 1], mu[:, k : k + 1], logvar[:, k : k + 1]), 1)
            for k in range(3)
        ],
        1,
    )
    tc = (brute_log_q(z, mu, logvar, "mss", 100) - log_q_d.sum(1)).mean()
    torch.testing.assert_close(d.total_correlation, tc, rtol=0, atol=1e-10)
    torch.testing.assert_close(d.dimwise_kl, (log_q_d - prior.base_dist.log_prob(z)).mean(0), rtol=0, atol=1e-10)
    analytic = torch.distributions.kl_divergence(Independent(Normal(mu, (0.5 * logvar).exp()), 1), prior)
    torch.testing.assert_close(d.kl, analytic.mean())
    # MC KL identity: mean(log q(z|x) - log p(z)) = mi + marginal_kl
    mc_kl = (E.log_posterior(z, mu, logvar) - prior.log_prob(z)).mean()
    torch.testing.assert_close(mc_kl, d.mi + d.marginal_kl, rtol=0, atol=1e-10)
    flat = d.as_dict()
    assert all(isinstance(v, float) for v in flat.values())
    assert {
        "mi",
        "entropy",
        "cross_entropy",
        "marginal_kl",
        "kl",
        "posterior_entropy",
        "total_correlation",
        "dimwise_kl_0",
        "dimwise_kl_2",
    } <= set(flat)


class LearnedPrior(nn.Module):
    """zuko-style lazy prior: forward() returns the distribution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim, dtype=F64))

    def forward(self) -> Independent:
        return Independent(Normal(self.loc, torch.ones_like(self.loc)), 1)


def test_priors_as_modules_and_non_factorised_priors():
    z, mu, logvar = posterior_batch(6, 2, seed=14)
    module = LearnedPrior(2)
    d = E.decompose(z, mu, logvar, module, dataset_size=50)
    d.cross_entropy.backward()
    assert module.loc.grad is not None and torch.isfinite(module.loc.grad).all()
    d = E.decompose(z, mu, logvar, mixture_prior(2), dataset_size=50)
    assert d.dimwise_kl is None and d.total_correlation is not None
    d = E.decompose(z, mu, logvar, lambda: std_normal(2), dataset_size=50)  # plain callable
    assert d.dimwise_kl.shape == (2,)


def test_kl_divergence_analytic_and_monte_carlo():
    z, mu, logvar = posterior_batch(6, 2, seed=15)
    closed = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
    torch.testing.assert_close(E.kl_divergence(mu, logvar, std_normal(2)), closed)
    torch.testing.assert_close(E.kl_divergence(mu, logvar, std_normal(2), method="analytic"), closed)
    mixture = mixture_prior(2)
    mc = E.log_posterior(z, mu, logvar) - mixture.log_prob(z)
    torch.testing.assert_close(E.kl_divergence(mu, logvar, mixture, z), mc)
    torch.testing.assert_close(
        E.kl_divergence(mu, logvar, std_normal(2), z, method="mc"),
        E.log_posterior(z, mu, logvar) - std_normal(2).log_prob(z),
    )
    many = torch.stack([z, 2 * z - mu])  # S = 2 samples per posterior, averaged
    torch.testing.assert_close(
        E.kl_divergence(mu, logvar, mixture, many),
        (
            E.log_posterior(z, mu, logvar)
            - mixture.log_prob(z)
            + E.log_posterior(2 * z - mu, mu, logvar)
            - mixture.log_prob(2 * z - mu)
        )
        / 2,
    )
    _raises("z", E.kl_divergence, mu, logvar, mixture, z[:3])
    mvn = MultivariateNormal(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    sampled = E.kl_divergence(mu.requires_grad_(), logvar, mvn)  # MC with rsample
    assert sampled.shape == (6,) and sampled.requires_grad
    with pytest.raises(EdvaeError, match="analytic"):
        E.kl_divergence(mu, logvar, mixture, method="analytic")


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_analytic_kl_to_a_diagonal_gaussian_is_torchs_to_the_bit(dtype):
    """The closed form taken without distribution objects gives torch's registered KL, value
    and gradients, bit for bit (so runs are unchanged by the shortcut)."""
    _, mu, logvar = posterior_batch(9, 3, seed=21)
    prior = Independent(
        Normal(torch.tensor([0.5, -1.0, 2.0], dtype=dtype), torch.tensor([0.7, 1.0, 3.0], dtype=dtype)), 1
    )
    results = []
    for ours in (True, False):
        m, lv = mu.to(dtype).requires_grad_(), logvar.to(dtype).requires_grad_()
        if ours:
            kl = E.kl_divergence(m, lv, prior, method="analytic")
        else:
            kl = torch.distributions.kl_divergence(Independent(Normal(m, torch.exp(0.5 * lv)), 1), prior)
        kl.sum().backward()
        results.append((kl.detach(), m.grad, lv.grad))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_narrow_posteriors_far_apart_match_brute_force(chunk_size):
    """Almost every pair log-density is below -700 (exp underflows: the estimator floors such
    exponents): values and gradients still equal the brute-force logsumexp."""
    z, mu, logvar = posterior_batch(8, 2, seed=22, mu_scale=30.0, logvar_range=(-12.0, -10.0))
    for method in ("mss", "batch"):
        inputs = [t.clone().requires_grad_() for t in (z, mu, logvar)]
        got = E.log_aggregate_posterior(*inputs, method=method, dataset_size=100, chunk_size=chunk_size)
        (got * torch.arange(1.0, 9.0, dtype=F64)).sum().backward()
        reference = [t.clone().requires_grad_() for t in (z, mu, logvar)]
        expected = brute_log_q(*reference, method, 100)
        (expected * torch.arange(1.0, 9.0, dtype=F64)).sum().backward()
        assert float(brute_log_density(z, mu, logvar).fill_diagonal_(-math.inf).max()) < -700
        # the expanded square carries ~1e-16 * z^2 / sigma^2 ~ 1e-16 * 1e3 * 2e5 of rounding
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)
        for a, b in zip(inputs, reference, strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)


def test_infonce_with_learned_critics():
    z, mu, logvar = posterior_batch(8, 3, seed=16)
    for critic in (BilinearCritic(3).double(), MLPCritic(3, hidden=16, embedding=4).double()):
        value = E.infonce(z, mu, logvar, critic=critic)
        assert value.item() <= math.log(8) + 1e-12
        value.backward()
        assert all(p.grad is not None for p in critic.parameters())
        half = E.infonce(z[4:], mu, logvar, critic=critic, row_offset=4)
        scores = critic(z, mu)
        ref = (scores.diagonal() - torch.logsumexp(scores, 1))[4:].mean() + math.log(8)
        torch.testing.assert_close(half, ref)
    with pytest.raises(EdvaeError, match="critic"):
        E.infonce(z, mu, logvar, critic=lambda z, mu: z @ mu[:3].T)


def test_infonce_default_critic_equals_batch_mi():
    z, mu, logvar = posterior_batch(8, 3, seed=17)
    d = E.decompose(z, mu, logvar, std_normal(3), method="batch")
    torch.testing.assert_close(E.infonce(z, mu, logvar), d.mi, rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 12), dim=st.integers(1, 4), seed=st.integers(0, 2**31 - 1), logvar_low=st.floats(-12.0, 0.0)
)
def test_infonce_never_exceeds_log_batch(batch, dim, seed, logvar_low):
    z, mu, logvar = posterior_batch(batch, dim, seed, mu_scale=3.0, logvar_range=(logvar_low, 1.0))
    assert E.infonce(z, mu, logvar).item() <= math.log(batch) + 1e-9
    critic = BilinearCritic(dim).double()
    with torch.no_grad():
        critic.weight.mul_(50.0)
    assert E.infonce(z, mu, logvar, critic=critic).item() <= math.log(batch) + 1e-9


def test_dataset_decomposition_equals_full_decompose():
    _, mu, logvar = posterior_batch(40, 2, seed=18)
    prior = mixture_prior(2)
    d = E.dataset_decomposition(
        mu, logvar, prior, generator=torch.Generator().manual_seed(3), per_dimension=True, chunk_size=7
    )
    noise = torch.randn(mu.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    z = mu + (0.5 * logvar).exp() * noise
    ref = E.decompose(z, mu, logvar, prior, method="full")
    for key, value in ref.as_dict().items():
        assert d.as_dict()[key] == pytest.approx(value, abs=1e-10), key
    sub = E.dataset_decomposition(mu, logvar, prior, num_queries=10, generator=torch.Generator().manual_seed(4))
    again = E.dataset_decomposition(mu, logvar, prior, num_queries=10, generator=torch.Generator().manual_seed(4))
    assert sub.as_dict() == again.as_dict()
    assert sub.total_correlation is None


# ---------------------------------------------------------------------------------------------
# bad input: one EdvaeError (a ValueError) naming the argument


def _raises(name, fn, *args, **kwargs):
    with pytest.raises(EdvaeError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, ValueError)
    assert name in str(info.value), str(info.value)
    return str(info.value)


def test_bad_inputs_are_named():
    z, mu, logvar = posterior_batch(6, 3, seed=19)
    lagp = E.log_aggregate_posterior
    _raises("logvar", lagp, z, mu, logvar[:, :2], dataset_size=10)
    _raises("z", lagp, z[:, :2], mu, logvar, dataset_size=10)
    _raises("mu", lagp, z, mu[0], logvar, dataset_size=10)
    _raises("z", lagp, z[None], mu, logvar, dataset_size=10)
    _raises("row_offset", lagp, z[:4], mu, logvar, dataset_size=10, row_offset=3)
    _raises("row_offset", lagp, z, mu, logvar, dataset_size=10, row_offset=-1)
    _raises("dataset_size", lagp, z, mu, logvar)  # missing for mss
    _raises("dataset_size", lagp, z, mu, logvar, method="mws")
    _raises("dataset_size", lagp, z, mu, logvar, dataset_size=5)  # smaller than B
    _raises("dataset_size", lagp, z, mu, logvar, dataset_size=10, method="full")
    message = _raises("method", lagp, z, mu, logvar, dataset_size=10, method="chen")
    assert all(m in message for m in E.METHODS)
    _raises("batch size", lagp, z[:1], mu[:1], logvar[:1], dataset_size=10)  # mss with B = 1
    _raises("chunk_size", lagp, z, mu, logvar, dataset_size=10, chunk_size=0)
    for name in ("mu", "logvar", "z"):
        bad = {"z": z.clone(), "mu": mu.clone(), "logvar": logvar.clone()}
        bad[name][2, 1] = float("nan")
        _raises(name, lagp, bad["z"], bad["mu"], bad["logvar"], dataset_size=10)
    bad_mu = mu.clone()
    bad_mu[0, 0] = float("inf")
    lagp(z, bad_mu, logvar, dataset_size=10, validate=False)  # the check can be switched off
    message = _raises("prior", E.decompose, z, mu, logvar, std_normal(2), dataset_size=10)
    assert "D=3" in message
    _raises("prior", E.kl_divergence, mu, logvar, Normal(0.0, 1.0))
    _raises("prior", E.decompose, z, mu, logvar, object(), dataset_size=10)
    _raises("num_queries", E.dataset_decomposition, mu, logvar, std_normal(3), num_queries=0)
    _raises("logvar", E.dataset_decomposition, mu, logvar.clone().fill_(float("nan")), std_normal(3))
    _raises("method", E.kl_divergence, mu, logvar, std_normal(3), method="exact")
    _raises("dataset_size", E.mss_log_weights, 4, 3)


@pytest.mark.parametrize(("chunk_size", "columns"), [(None, None), (2, 3), (3, 2)])
def test_several_methods_from_one_pass(chunk_size, columns, monkeypatch):
    """method=(...) gives each method's estimate and gradients, also in blocks and for row slices."""
    if columns:
        monkeypatch.setattr(kernel, "_MAX_BLOCK_COLUMNS", columns)
    z, mu, logvar = posterior_batch(7, 2, seed=21)
    methods = ("mss", "batch", "mws")
    both = E.log_aggregate_posterior(z, mu, logvar, dataset_size=40, method=methods, chunk_size=chunk_size)
    assert both.shape == (3, 7)
    for k, method in enumerate(methods):
        torch.testing.assert_close(both[k], brute_log_q(z, mu, logvar, method, 40), rtol=0, atol=1e-10)
    inputs = tuple(t.clone().requires_grad_() for t in (z, mu, logvar))
    assert torch.autograd.gradcheck(
        lambda z, mu, logvar: E.log_aggregate_posterior(
            z, mu, logvar, dataset_size=40, method=("batch", "mss"), chunk_size=chunk_size
        ),
        inputs,
    )
    assert torch.autograd.gradcheck(
        lambda z, mu, logvar: E.log_aggregate_posterior(
            z[2:5],
            mu,
            logvar,
            dataset_size=40,
            method=("mss", "batch"),
            row_offset=2,
            chunk_size=chunk_size,
        ),
        inputs,
    )
