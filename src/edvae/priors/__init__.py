r"""Priors p(z) over R^D: analytic families, learned priors and priors known only by samples.

A prior is anything that yields a :class:`torch.distributions.Distribution` with
``batch_shape == ()`` and ``event_shape == (D,)``. Following zuko's lazy-distribution
convention, every prior here is an ``nn.Module`` whose ``forward()`` builds and returns that
distribution, so learned parameters live on the module, move with ``.to()`` / ``.double()``,
and are trained through the cross-entropy term H[q(z), p(z)] = -E_q(z)[log p(z)]::

    prior = make("mog_ring", dim=2)
    p = prior()                      # a torch Distribution, event_shape (2,)
    cross_entropy = -p.log_prob(z).mean()

Names (``make(name, dim, **options)``, see :func:`names`):

* ``normal``       N(0, I).
* ``diag_normal``  N(loc, diag scale^2), optionally learnable.
* ``student_t``    prod_d t_df(z_d; loc, scale), heavy-tailed.
* ``laplace``      prod_d Laplace(z_d; loc, scale).
* ``mixture``      sum_k pi_k N(m_k, diag s_k^2), learnable by default.
* ``mog_ring``     8 equal Gaussians on a circle of radius 2 in dimensions (0, 1).
* ``banana``       a volume-preserving curved warp of a Gaussian.
* ``flow``         a learnable zuko neural spline flow.
* ``vamp``         the VampPrior (1/K) sum_k q(z | u_k) with learned pseudo-inputs u_k.
* ``samples``      a prior known only by samples in a file (KDE or a fitted flow);
                   ``"samples:PATH"`` names the file.
* ``true``         the data set's own generating prior (synthetic data, in a model).

Priors known only through samples s_1..s_K get a density from :func:`from_samples`: a
Gaussian kernel density estimate or a flow fitted by maximum likelihood.

Modules: :mod:`~edvae.priors.base` (the :class:`Prior` module and :func:`distribution_of`, the
one conversion of a prior-like object into a distribution), :mod:`~edvae.priors.analytic`,
:mod:`~edvae.priors.learned`, :mod:`~edvae.priors.samples`, :mod:`~edvae.priors.io`,
:mod:`~edvae.priors.kmeans` and :mod:`~edvae.priors.registry`.

Add a prior of your own by name, from any module imported before the config is built::

    from edvae.priors import FactorizedPrior, register
    from torch.distributions import Cauchy

    @register("cauchy")
    def cauchy(dim, *, scale=1.0):
        return FactorizedPrior(Cauchy, dim, loc=0.0, scale=scale)

after which ``model.prior="cauchy"`` (and ``model.prior_options={"scale": 2}``) works in
configs and on the command line. A factory that declares a ``context`` parameter receives a
:class:`PriorContext` with the model's data and encoder.
"""

from edvae.priors.analytic import BananaPrior, BananaTransform, FactorizedPrior, GaussianMixturePrior
from edvae.priors.base import (
    DistributionPrior,
    Prior,
    as_prior,
    check_prior_device,
    distribution_of,
    distribution_tensors,
    event_dim,
    map_distribution_tensors,
)
from edvae.priors.io import load_samples
from edvae.priors.learned import FlowPrior, VampPrior
from edvae.priors.registry import PriorContext, make, names, register
from edvae.priors.samples import KDEPrior, KernelDensity, from_samples, scott_bandwidth

__all__ = [
    "BananaPrior",
    "BananaTransform",
    "DistributionPrior",
    "FactorizedPrior",
    "FlowPrior",
    "GaussianMixturePrior",
    "KDEPrior",
    "KernelDensity",
    "Prior",
    "PriorContext",
    "VampPrior",
    "as_prior",
    "check_prior_device",
    "distribution_of",
    "distribution_tensors",
    "event_dim",
    "from_samples",
    "load_samples",
    "make",
    "map_distribution_tensors",
    "names",
    "register",
    "scott_bandwidth",
]
