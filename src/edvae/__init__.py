"""edvae: Entropy-Decomposed Variational Autoencoders.

The average ELBO over a data set splits into named terms (Hoffman & Johnson, 2016)::

    mean_n ELBO(x_n) = R - I_q(x;z) + H[q(z)] - H[q(z), p(z)]

with R the expected reconstruction log-likelihood, I_q the mutual information between data
and code, H[q(z)] the entropy of the aggregate posterior and H[q(z), p(z)] its cross-entropy
to the prior. edvae estimates each term correctly, lets each be weighted on its own, and
accepts any prior: analytic, learned, or known only through samples.

Train on your own array: ``run = edvae.fit(x, out="runs/mine")``, then ``run.evaluate()`` and
``run.decompose()``; ``edvae.load("runs/mine")`` gives the run back (:mod:`edvae.api`).
"""

from typing import Any

from edvae._version import __version__
from edvae.errors import EdvaeError

__all__ = ["EdvaeError", "Run", "__version__", "fit", "load"]

#: Names imported from :mod:`edvae.api` on first use, so that ``import edvae`` stays torch-free.
_API = ("Run", "fit", "load")


def __getattr__(name: str) -> Any:
    if name in _API:
        from edvae import api

        return getattr(api, name)
    raise AttributeError(f"module 'edvae' has no attribute {name!r}")
