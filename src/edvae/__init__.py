"""edvae: Entropy-Decomposed Variational Autoencoders.

The average ELBO over a data set splits into named terms (Hoffman & Johnson, 2016)::

    mean_n ELBO(x_n) = R - I_q(x;z) + H[q(z)] - H[q(z), p(z)]

with R the expected reconstruction log-likelihood, I_q the mutual information between data
and code, H[q(z)] the entropy of the aggregate posterior and H[q(z), p(z)] its cross-entropy
to the prior. edvae estimates each term correctly, lets each be weighted on its own, and
accepts any prior: analytic, learned, or known only through samples.
"""

from edvae.errors import EdvaeError

__version__ = "0.1.0"

__all__ = ["EdvaeError", "__version__"]
