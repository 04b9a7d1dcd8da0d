"""MIG and DCI on constructed codes with known answers.

The codes have N = 1200 examples of three discrete factors with 4, 6 and 5 values (a seeded
sample, so the factors are independent up to sampling). With posterior standard deviation
sigma = 1e-3, far below the spacing of the code values, the log-sum-exp estimators are exact
up to rounding: q(z_nj) and q(z_nj | v_k = c) count the examples whose code value equals z_nj's
(every other component is exp(-(spacing / sigma)^2 / 2) = 0 in float64), so

    I(z_j; v_k) = plug-in mutual information between the code value z_j and v_k,

computed independently here from contingency tables. That gives exact MIG references, to the
rounding of the estimators' expanded square (about 1e-16 z^2 / sigma^2 <= 1e-7 nats here).
"""

from __future__ import annotations

import math

import pytest
import torch

from edvae.disentanglement import (
    dci,
    discretize_factors,
    factor_entropy,
    mutual_information_gap,
    mutual_information_matrix,
)
from edvae.errors import EdvaeError

N = 1200
SIZES = (4, 6, 5)
TINY = math.log(1e-6)  # logvar of sigma = 1e-3


@pytest.fixture(scope="module")
def factors() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.stack([torch.randint(0, s, (N,), generator=gen) for s in SIZES], 1).to(torch.float64)


def _standardised(v: torch.Tensor) -> torch.Tensor:
    return (v - v.mean(0)) / v.std(0)


def _plugin_mi(a: torch.Tensor, b: torch.Tensor) -> float:
    """Plug-in mutual information (nats) of two discrete sequences, from their contingency table."""
    _, ia = torch.unique(a, return_inverse=True)
    _, ib = torch.unique(b, return_inverse=True)
    joint = torch.zeros(int(ia.max()) + 1, int(ib.max()) + 1, dtype=torch.float64)
    joint.index_put_((ia, ib), torch.ones(len(a), dtype=torch.float64), accumulate=True)
    joint /= len(a)
    outer = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    nz = joint > 0
    return float((joint[nz] * (joint[nz] / outer[nz]).log()).sum())


def _reference_gaps(code: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """(I^(1) - I^(2)) / H(v_k) per factor with plug-in informations of the code values."""
    gaps = []
    for k in range(factors.shape[1]):
        info = sorted((_plugin_mi(code[:, j], factors[:, k]) for j in range(code.shape[1])), reverse=True)
        gaps.append((info[0] - info[1]) / _plugin_mi(factors[:, k], factors[:, k]))
    return torch.tensor(gaps, dtype=torch.float64)


def _mig(code, factors, logvar=TINY):
    logvar = torch.full_like(code, logvar)
    return mutual_information_gap(code, logvar, factors, generator=torch.Generator().manual_seed(1))


def test_a_copy_of_the_factors_scores_its_exact_value_near_1(factors):
    code = _standardised(factors)
    result = _mig(code, factors)
    reference = _reference_gaps(code, factors)
    torch.testing.assert_close(result.per_factor, reference, atol=1e-7, rtol=0)
    entropies = torch.tensor([_plugin_mi(c, c) for c in factors.T], dtype=torch.float64)
    torch.testing.assert_close(result.factor_entropy, entropies)
    # the diagonal informations are H(v_k); the off-diagonal ones the plug-in I(v_j; v_k) ~ 1e-3
    assert result.score > 0.99 and result.score == pytest.approx(float(reference.mean()), abs=1e-7)


def test_a_45_degree_rotation_of_two_factors_loses_their_gap(factors):
    """z_0 = (a + b)/sqrt 2 and z_1 = (a - b)/sqrt 2 each take 4 x 6 distinct values, so each
    determines both factors: I(z_0; v_k) = I(z_1; v_k) = H(v_k) for k = 0, 1 and their gaps
    are 0; only the copied factor 2 keeps its gap, and MIG ~ 1/3."""
    v = _standardised(factors)
    code = torch.stack([(v[:, 0] + v[:, 1]) / math.sqrt(2), (v[:, 0] - v[:, 1]) / math.sqrt(2), v[:, 2]], 1)
    for j in (0, 1):  # precondition: distinct (a, b) pairs stay distinct and far apart vs sigma
        values = code[:, j].unique()
        assert values.numel() == SIZES[0] * SIZES[1] and float(values.diff().min()) > 1e-2
    result = _mig(code, factors)
    reference = _reference_gaps(code, factors)
    assert float(reference[:2].abs().max()) < 1e-12
    torch.testing.assert_close(result.per_factor, reference, atol=1e-7, rtol=0)
    assert 0.3 < result.score < 0.34 < 0.99 < _mig(_standardised(factors), factors).score


def test_codes_without_a_factor_per_dimension_score_near_0(factors):
    gen = torch.Generator().manual_seed(2)
    # noise with unit posterior variance: every I(z_j; v_k) estimates 0; the estimator's
    # positive bias (finite subsets of ~N/6 examples) is ~1e-3 nats, so the gaps are << 0.02
    noise = _mig(torch.randn(N, 3, generator=gen, dtype=torch.float64), factors, logvar=0.0)
    assert 0 <= noise.score < 0.02 and float(noise.mutual_information.abs().max()) < 0.02
    # every dimension a different permutation of an index grid (spacing 0.01 >> sigma): each
    # z_j identifies the example, so I(z_j; v_k) = H(v_k) for all j and every gap is exactly 0
    grid = torch.arange(N, dtype=torch.float64) * 0.01
    identity = torch.stack([grid[torch.randperm(N, generator=gen)] for _ in range(3)], 1)
    result = _mig(identity, factors)
    torch.testing.assert_close(result.mutual_information, result.factor_entropy.expand(3, 3), atol=1e-7, rtol=0)
    assert abs(result.score) < 1e-7


def test_continuous_factors_are_cut_into_equal_count_bins():
    gen = torch.Generator().manual_seed(3)
    v = torch.stack([torch.randn(1000, generator=gen), torch.randint(0, 3, (1000,), generator=gen).float()], 1)
    codes = discretize_factors(v, bins=20)
    assert torch.bincount(codes[:, 0]).tolist() == [50] * 20
    assert torch.equal(codes[:, 1], v[:, 1].long())  # few distinct values: kept as they are
    assert float(factor_entropy(codes)[0]) == pytest.approx(math.log(20), abs=1e-12)
    assert bool((torch.diff(v[:, 0][codes[:, 0].argsort(stable=True)].reshape(20, 50).amax(1)) > 0).all())


def test_the_metrics_refuse_what_they_cannot_score(factors):
    code = _standardised(factors)
    with pytest.raises(EdvaeError, match="constant"):
        _mig(code, torch.cat([factors, torch.ones(N, 1, dtype=torch.float64)], 1))
    with pytest.raises(EdvaeError, match="rows"):
        _mig(code, factors[:10])
    with pytest.raises(EdvaeError, match="at least 2 latent"):
        _mig(code[:, :1], factors)
    with pytest.raises(EdvaeError, match="2 factors"):
        dci(code, factors[:, :1])
    with pytest.raises(EdvaeError, match="NaN"):
        dci(code * float("nan"), factors)
    with pytest.raises(EdvaeError, match="int64 factor codes"):
        mutual_information_matrix(code, torch.zeros_like(code), factors)


def test_dci_disentanglement_of_copied_rotated_and_noise_codes(factors):
    v = _standardised(factors)
    copy = dci(v, factors)
    # a forest splitting on z_k reaches pure leaves for v_k, so no other dimension gets importance
    assert copy.disentanglement > 0.99 and copy.completeness > 0.99
    assert torch.allclose(copy.importance.argmax(0), torch.arange(3))
    rotated = torch.stack([(v[:, 0] + v[:, 1]) / math.sqrt(2), (v[:, 0] - v[:, 1]) / math.sqrt(2), v[:, 2]], 1)
    # importance of z_0 and z_1 split evenly over v_0 and v_1: D_j = 1 - log 2 / log 3 for
    # j = 0, 1 and 1 for z_2, each with weight 1/3
    expected = (2 * (1 - math.log(2) / math.log(3)) + 1) / 3
    assert dci(rotated, factors).disentanglement == pytest.approx(expected, abs=0.05)
    noise = dci(torch.randn(N, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64), factors)
    assert noise.disentanglement < 0.1 and noise.completeness < 0.1
