"""The names of the estimators of log q(z) that the objectives accept.

A leaf module without torch, so that the config can validate ``objective.mi_estimator`` and
``objective.entropy_estimator`` before torch loads; :mod:`edvae.objectives` checks its
arguments against the same tuples.
"""

from __future__ import annotations

__all__ = ["ENTROPY_ESTIMATORS", "MI_ESTIMATORS"]

#: log q_hat for the entropy (and, shared, the mutual information): minibatch stratified
#: sampling, minibatch weighted sampling, the plain batch mean (see edvae.estimators).
ENTROPY_ESTIMATORS: tuple[str, ...] = ("mss", "mws", "batch")
#: the entropy estimators, plus InfoNCE (a lower bound on I, <= log B with the encoder as critic)
MI_ESTIMATORS: tuple[str, ...] = (*ENTROPY_ESTIMATORS, "infonce")
