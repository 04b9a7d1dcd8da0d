"""The names of the estimators of log q(z) and of the KL methods that the objectives accept.

A leaf module without torch, so that the config can validate ``objective.mi_estimator``,
``objective.entropy_estimator`` and ``objective.kl`` before torch loads; :mod:`edvae.objectives`
and :mod:`edvae.estimators` check their arguments against the same names. Each list is written
once, as a ``Literal`` (the config's field type); the tuples are read from it.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["ENTROPY_ESTIMATORS", "EntropyEstimator", "KLMethod", "KL_METHODS", "MIEstimator", "MI_ESTIMATORS"]

#: log q_hat for the entropy (and, shared, the mutual information): minibatch stratified
#: sampling, minibatch weighted sampling, the plain batch mean (see edvae.estimators).
EntropyEstimator = Literal["mss", "mws", "batch"]
#: the entropy estimators, plus InfoNCE (a lower bound on I, <= log B with the encoder as critic)
MIEstimator = Literal[EntropyEstimator, "infonce"]
#: KL(q(z|x) || p(z)): closed form where registered, else Monte Carlo ("auto"); or either, forced
KLMethod = Literal["auto", "analytic", "mc"]

ENTROPY_ESTIMATORS: tuple[str, ...] = get_args(EntropyEstimator)
MI_ESTIMATORS: tuple[str, ...] = get_args(MIEstimator)
KL_METHODS: tuple[str, ...] = get_args(KLMethod)
