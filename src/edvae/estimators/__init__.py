r"""Estimators of the aggregate posterior and of the terms of the ED-VAE decomposition.

The encoder is a diagonal Gaussian, q(z|x_j) = N(mu_j, diag exp(logvar_j)), and the aggregate
posterior over a data set of N examples is q(z) = (1/N) sum_n q(z|x_n). Every estimator here
reduces the matrix of pairwise log-densities

    L[i, j] = log q(z_i | x_j) = -1/2 sum_d [ (z_id - mu_jd)^2 exp(-logvar_jd) + logvar_jd + log 2 pi ]

(summed over the latent dimensions *before* any logsumexp) with a logsumexp over the columns j:

    log q_hat(z_i) = logsumexp_j ( log W[i, j] + L[i, j] ).

Methods (``METHODS``), for a minibatch of B posteriors out of N (``dataset_size``):

* ``"mss"``, minibatch stratified sampling (Chen et al., 2018), M = B - 1: in every row i,
  W[i, i] = 1/N, W[i, k(i)] = (N - M)/(N M) for k(i) = (i + 1) mod B, and W[i, j] = 1/M for
  the remaining B - 2 columns (i and k(i) are global indices, see ``row_offset``). Each row
  sums to 1, so log q(z_i|x_i) - log q_hat(z_i) <= log N.
* ``"mws"``, minibatch weighted sampling: W[i, j] = 1/(N B) (rows sum to 1/N; kept for
  comparison with published numbers).
* ``"batch"``, the batch as the data set: W[i, j] = 1/B. The resulting mutual information is
  InfoNCE with the encoder as critic and never exceeds log B.
* ``"full"``, evaluation: the columns are *all* N posteriors and W[i, j] = 1/N.

Distributed training: ``z`` holds the R rows of this process, ``mu`` and ``logvar`` the B
columns of the global batch, and ``z[i]`` was drawn from column ``i + row_offset``. Every
per-row value then equals the corresponding row of a single-process computation on the whole
global batch.

How L is computed (blocks, the float32 direct and float64 expanded kernels, one exponential
pass for several methods, the hand-written backward) is :mod:`edvae.estimators.kernel`'s
docstring. The package, one concept per module:

* :mod:`~edvae.estimators.checks`: argument checks and the dtype rules;
* :mod:`~edvae.estimators.posterior`: log q(z|x), its entropy, KL to the prior, the prior;
* :mod:`~edvae.estimators.weights`: the weights W of each method;
* :mod:`~edvae.estimators.kernel`: the blockwise weighted logsumexp over L and its backward;
* :mod:`~edvae.estimators.aggregate`: log q_hat(z) and its one-dimensional marginals;
* :mod:`~edvae.estimators.decomposition`: the ED-VAE decomposition, per batch and per data set;
* :mod:`~edvae.estimators.contrastive`: InfoNCE.
"""

from __future__ import annotations

from edvae.estimators.aggregate import log_aggregate_marginals, log_aggregate_posterior
from edvae.estimators.contrastive import infonce
from edvae.estimators.decomposition import (
    Decomposition,
    DecompositionTerms,
    dataset_decomposition,
    dataset_decomposition_terms,
    decompose,
)
from edvae.estimators.posterior import (
    KL_METHODS,
    PriorLike,
    factorised_log_prob,
    kl_divergence,
    log_posterior,
    own_posteriors,
    posterior_entropy,
    resolve_prior,
)
from edvae.estimators.weights import METHODS, mss_log_weights

__all__ = [
    "METHODS",
    "KL_METHODS",
    "Decomposition",
    "DecompositionTerms",
    "PriorLike",
    "dataset_decomposition",
    "dataset_decomposition_terms",
    "decompose",
    "infonce",
    "factorised_log_prob",
    "kl_divergence",
    "log_aggregate_marginals",
    "log_aggregate_posterior",
    "log_posterior",
    "mss_log_weights",
    "own_posteriors",
    "posterior_entropy",
    "resolve_prior",
]
