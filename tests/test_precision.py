"""The precision rule of the (R, B) pass over log q(z_i | x_j), proven against float64.

float32 inputs with D <= ``_DIRECT_MAX_DIM`` take the float32 direct-difference kernel
(``edvae.estimators.kernel._Direct``). The rule it must keep: every entry of L[i, j] = log q(z_i|x_j)
within 1e-3 nats of a float64 brute force on the same (float32) inputs wherever |L| <= 1000
(every entry that can carry weight next to the row's own posterior) and within 2e-6 |L|
elsewhere (float32 cannot even represent such values more finely); log q_hat, mi, entropy and
InfoNCE within 1e-3 nats; gradients within 1e-4 of the float64 gradient, relative to the
largest gradient entry of each input. The grids include narrow posteriors (sigma = 1e-3, where
the expanded square z^2 - 2 z mu + mu^2 would cancel) at large offsets |mu| = 300.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edvae import estimators as E
from edvae.estimators import kernel as K

F32, F64 = torch.float32, torch.float64
LOG_2PI = math.log(2 * math.pi)
ENTRY_TOL = 1e-3  # nats, |L| <= 1000
RELATIVE_TOL = 2e-6  # of |L| beyond
ESTIMATE_TOL = 1e-3  # nats
GRAD_TOL = 1e-4  # relative to the largest gradient entry
SIGMAS = (1e-3, 0.1, 1.0, "mixed")
OFFSETS = (0.0, 50.0, -300.0)
SPREADS = (0.01, 3.0)
WORST: dict[str, float] = {}  # largest error seen per quantity, printed at the end


def _record(name: str, value: float) -> None:
    WORST[name] = max(WORST.get(name, 0.0), value)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print("\n[float32 vs float64, worst] " + ", ".join(f"{k} {v:.2e}" for k, v in sorted(WORST.items())))


def float32_batch(batch: int, dim: int, sigma, offset: float, spread: float, seed: int):
    """float32 mu, logvar and z = mu + sigma * eps computed in float32, as an encoder does."""
    g = torch.Generator().manual_seed(seed)
    mu = (offset + spread * torch.randn(batch, dim, generator=g, dtype=F64)).to(F32)
    if sigma == "mixed":  # sigma from 1e-3 to 3, heteroscedastic
        logvar = 2 * math.log(1e-3) + 2 * math.log(3e3) * torch.rand(batch, dim, generator=g, dtype=F64)
    else:
        logvar = torch.full((batch, dim), 2 * math.log(sigma), dtype=F64)
    logvar = logvar.to(F32)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(batch, dim, generator=g, dtype=F64).to(F32)
    return z, mu, logvar


def brute_log_density(z, mu, logvar):
    """float64 L[i, j] from the explicit (R, B, D) differences of the upcast inputs."""
    z, mu, logvar = z.double(), mu.double(), logvar.double()
    diff = z[:, None, :] - mu[None, :, :]
    return (-0.5 * (diff**2 / logvar.exp()[None] + logvar[None] + LOG_2PI)).sum(-1)


def brute_log_q(z, mu, logvar, log_w):
    return torch.logsumexp(log_w + brute_log_density(z, mu, logvar), dim=1)


def kernel_matrix(z, mu, logvar, chunk_rows, chunk_columns):
    """Every entry of L as the float32 kernel computes it, assembled from its blocks."""
    kernel = K._kernel(z, mu, logvar)
    assert isinstance(kernel, K._Direct)
    out = torch.empty(z.shape[0], mu.shape[0], dtype=F32)
    for r0, c0, block, _ in K._blocks(kernel, chunk_rows, chunk_columns):
        out[r0 : r0 + block.shape[0], c0 : c0 + block.shape[1]] = block
    return out


def check_entries(z, mu, logvar, chunk_rows=1000, chunk_columns=1000):
    got, ref = kernel_matrix(z, mu, logvar, chunk_rows, chunk_columns).double(), brute_log_density(z, mu, logvar)
    err = (got - ref).abs()
    near = ref.abs() <= 1000
    if near.any():
        _record("entry |L|<=1000", err[near].max().item())
        assert err[near].max().item() <= ENTRY_TOL
    if (~near).any():
        relative = (err[~near] / ref[~near].abs()).max().item()
        _record("entry relative |L|>1000", relative)
        assert relative <= RELATIVE_TOL
    # the row's own posterior always lies in the accurate range
    assert near.diagonal().all()


GRID = list(itertools.product((5, 96), (1, 2, 4), SIGMAS, OFFSETS, SPREADS))


@pytest.mark.parametrize("batch,dim,sigma,offset,spread", GRID)
def test_every_entry_within_the_rule(batch, dim, sigma, offset, spread):
    z, mu, logvar = float32_batch(batch, dim, sigma, offset, spread, seed=batch + dim)
    check_entries(z, mu, logvar)


def test_blocked_entries_are_the_single_block_entries():
    z, mu, logvar = float32_batch(23, 3, "mixed", 5.0, 2.0, seed=1)
    whole = kernel_matrix(z, mu, logvar, 1000, 1000)
    assert torch.equal(kernel_matrix(z, mu, logvar, 4, 7), whole)


def dispatches_to_float32(z, mu, logvar):
    return isinstance(K._kernel(z, mu, logvar), K._Direct)


def test_dispatch_float32_small_d_only():
    z, mu, logvar = float32_batch(4, K._DIRECT_MAX_DIM, 1.0, 0.0, 1.0, seed=0)
    assert dispatches_to_float32(z, mu, logvar)
    assert not dispatches_to_float32(z.double(), mu, logvar)  # any float64 input: float64
    wide = float32_batch(4, K._DIRECT_MAX_DIM + 1, 1.0, 0.0, 1.0, seed=0)
    assert not dispatches_to_float32(*wide)
    assert E.log_aggregate_posterior(*wide, dataset_size=10).dtype == F32


def log_weights(method, rows, batch, n, row_offset=0):
    if method == "mss":
        return E.mss_log_weights(batch, n, row_offset=row_offset, rows=rows)
    if method == "mws":
        return torch.full((rows, batch), -math.log(n * batch), dtype=F64)
    return torch.full((rows, batch), -math.log(batch), dtype=F64)


def grads(fn, inputs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    fn(*leaves).backward()
    return [t.grad for t in leaves]


def check_gradients(fn, inputs, scale_fn=None):
    """fn of float32 inputs against fn of the same inputs upcast (the float64 path, itself
    checked against brute force and gradcheck in test_estimators.py), relative to the largest
    float64 gradient entry of ``scale_fn`` (default: fn). A difference of two terms whose
    gradients nearly cancel (mi = mean log q(z_i|x_i) - mean log q_hat(z_i) for narrow
    posteriors) is measured against the gradient of its log q_hat term: float32 cannot do
    better than a relative rounding of each term."""
    scales = grads(scale_fn or fn, [t.double() for t in inputs])
    for name, got, ref, scale in zip(
        ("z", "mu", "logvar"), grads(fn, inputs), grads(fn, [t.double() for t in inputs]), scales, strict=True
    ):
        assert got.dtype == F32
        scale = scale.abs().max().item()
        err = (got.double() - ref).abs().max().item() / max(scale, 1e-30)
        _record(f"grad {name} (relative to max)", err)
        assert err <= GRAD_TOL, name


ESTIMATE_GRID = list(itertools.product((2, 64), (1, 2, 4), SIGMAS, (0.0, -300.0)))


@pytest.mark.parametrize("batch,dim,sigma,offset", ESTIMATE_GRID)
def test_log_q_hat_and_gradients_within_the_rule(batch, dim, sigma, offset):
    n = 10 * batch
    z, mu, logvar = float32_batch(batch, dim, sigma, offset, 1.0, seed=7 * batch + dim)
    methods = ("mss", "batch", "mws")
    got = E.log_aggregate_posterior(z, mu, logvar, dataset_size=n, method=methods)
    assert got.dtype == F32
    for k, method in enumerate(methods):
        ref = brute_log_q(z, mu, logvar, log_weights(method, batch, batch, n))
        err = (got[k].double() - ref).abs().max().item()
        _record(f"log q_hat {method}", err)
        assert err <= ESTIMATE_TOL
    full = E.log_aggregate_posterior(z, mu, logvar, method="full")
    ref = brute_log_q(z, mu, logvar, log_weights("full", batch, batch, batch))
    _record("log q_hat full", (full.double() - ref).abs().max().item())
    assert (full.double() - ref).abs().max().item() <= ESTIMATE_TOL

    def loss(z, mu, logvar):  # the edvae-paper combination: MSS entropy, batch InfoNCE, weights
        both = E.log_aggregate_posterior(z, mu, logvar, dataset_size=n, method=("mss", "batch"))
        return both[0].mean() - 2.0 * both[1].mean()

    check_gradients(loss, (z, mu, logvar))


@pytest.mark.parametrize("sigma,offset", list(itertools.product(SIGMAS, (0.0, -300.0))))
def test_decomposition_and_infonce_within_the_rule(sigma, offset):
    z, mu, logvar = float32_batch(48, 2, sigma, offset, 1.0, seed=3)
    prior = torch.distributions.Independent(torch.distributions.Normal(torch.full((2,), offset), torch.ones(2)), 1)
    prior64 = torch.distributions.Independent(
        torch.distributions.Normal(torch.full((2,), offset, dtype=F64), torch.ones(2, dtype=F64)), 1
    )
    got = E.decompose(z, mu, logvar, prior, dataset_size=480)
    ref = E.decompose(z.double(), mu.double(), logvar.double(), prior64, dataset_size=480)
    for name in ("mi", "entropy", "total_correlation"):
        err = abs(getattr(got, name).item() - getattr(ref, name).item())
        _record(name, err)
        assert err <= ESTIMATE_TOL, name
    # brute force for the mean log q_hat behind the entropy
    brute = brute_log_q(z, mu, logvar, log_weights("mss", 48, 48, 480)).mean().item()
    assert abs(-got.entropy.item() - brute) <= ESTIMATE_TOL
    nce, nce64 = E.infonce(z, mu, logvar), E.infonce(z.double(), mu.double(), logvar.double())
    _record("infonce", abs(nce.item() - nce64.item()))
    assert nce.dtype == F32 and abs(nce.item() - nce64.item()) <= ESTIMATE_TOL

    def log_q_hat(method):
        return lambda *a: E.log_aggregate_posterior(*a, dataset_size=480, method=method).mean()

    check_gradients(lambda *a: E.infonce(*a), (z, mu, logvar), log_q_hat("batch"))
    check_gradients(lambda *a: E.decompose(*a, prior64, dataset_size=480).mi, (z, mu, logvar), log_q_hat("mss"))
    check_gradients(lambda *a: E.decompose(*a, prior64, dataset_size=480).entropy, (z, mu, logvar))


@pytest.mark.parametrize("chunk_size", [1, 5, None])
def test_blocks_and_row_offset_within_the_rule(chunk_size, monkeypatch):
    monkeypatch.setattr(K, "_MAX_BLOCK_COLUMNS", 8)  # several column blocks merged by logaddexp
    z, mu, logvar = float32_batch(20, 3, "mixed", 10.0, 1.0, seed=9)
    rows, offset = slice(6, 15), 6
    got = E.log_aggregate_posterior(
        z[rows], mu, logvar, dataset_size=200, method="mss", row_offset=offset, chunk_size=chunk_size
    )
    ref = brute_log_q(z[rows], mu, logvar, log_weights("mss", 9, 20, 200, row_offset=offset))
    assert (got.double() - ref).abs().max().item() <= ESTIMATE_TOL
    check_gradients(
        lambda z, mu, logvar: E.log_aggregate_posterior(
            z[rows], mu, logvar, dataset_size=200, method=("mss", "batch"), row_offset=offset, chunk_size=chunk_size
        ).sum(),
        (z, mu, logvar),
    )


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(2, 40),
    dim=st.integers(1, K._DIRECT_MAX_DIM),
    log10_sigma=st.floats(-3.0, 0.7),
    offset=st.floats(-300.0, 300.0),
    spread=st.floats(0.0, 5.0),
    seed=st.integers(0, 2**16),
)
def test_random_batches_within_the_rule(batch, dim, log10_sigma, offset, spread, seed):
    z, mu, logvar = float32_batch(batch, dim, 10.0**log10_sigma, offset, spread, seed)
    check_entries(z, mu, logvar)
    got = E.log_aggregate_posterior(z, mu, logvar, method="batch")
    ref = brute_log_q(z, mu, logvar, log_weights("batch", batch, batch, batch))
    _record("log q_hat batch", (got.double() - ref).abs().max().item())
    assert (got.double() - ref).abs().max().item() <= ESTIMATE_TOL
