"""The VAE module: encoder, decoder, likelihood and prior in one ``nn.Module``.

The model only computes; the objective (:mod:`edvae.objectives`) decides how the pieces are
combined. ``forward(x, eps)`` draws z = mu + sigma * eps by reparameterisation and returns
everything an objective needs in one :class:`ModelOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from edvae import priors
from edvae.errors import EdvaeError
from edvae.networks import (
    BernoulliLikelihood,
    ConvDecoder,
    ConvEncoder,
    GaussianLikelihood,
    MLPDecoder,
    MLPEncoder,
)

if TYPE_CHECKING:
    from edvae.config import ModelConfig
    from edvae.data import DataSplits

__all__ = ["ModelOutput", "VAE", "build_model", "calibrate_decoder", "resolve_likelihood"]


@dataclass
class ModelOutput:
    """One forward pass: posterior parameters, the sampled code and log p(x|z) per example."""

    mu: Tensor
    logvar: Tensor
    z: Tensor
    log_px: Tensor
    x_params: Tensor


class VAE(nn.Module):
    """A VAE with a diagonal Gaussian encoder q(z|x), decoder p(x|z) and any prior p(z).

    ``prior`` is a module whose ``forward()`` returns a ``torch.distributions.Distribution``
    with ``event_shape == (latent_dim,)`` (see :mod:`edvae.priors`).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: nn.Module, prior: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.prior = prior
        self.latent_dim = latent_dim

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, logvar)``, each ``(B, D)``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Likelihood parameters for codes ``z`` (means, or logits for Bernoulli)."""
        return self.decoder(z)

    def prior_distribution(self) -> Distribution:
        """The prior p(z) as a distribution."""
        return self.prior()

    def forward(self, x: Tensor, eps: Tensor | None = None) -> ModelOutput:
        """Encode, sample z = mu + exp(logvar / 2) * eps, decode and score log p(x|z)."""
        mu, logvar = self.encoder(x)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        x_params = self.decoder(z)
        return ModelOutput(mu, logvar, z, self.likelihood.log_prob(x, x_params), x_params)


def resolve_likelihood(config: "ModelConfig", data: "DataSplits") -> str:
    """The likelihood to use: the configured one, or the data set's own for ``"auto"``."""
    return data.likelihood if config.likelihood == "auto" else config.likelihood


#: N(0, I) draws whose k-means centres start the means of a learned mixture prior.
_MIXTURE_INIT_DRAWS = 4096


def _build_prior(config: "ModelConfig", data: "DataSplits", encoder: nn.Module, fit: bool = True) -> nn.Module:
    dim = config.latent_dim
    name = config.prior
    options = dict(config.prior_options)
    if name == "true":
        if data.ground_truth is None:
            raise EdvaeError(
                f"model.prior='true' needs synthetic data with a known prior, but data set '{data.name}' has none; "
                f"choose one of: {', '.join(priors.names())}"
            )
        prior = priors.as_prior(data.ground_truth.prior)
    elif name.startswith("samples:"):
        samples = priors.load_samples(name.partition(":")[2], dim=dim)
        prior = priors.from_samples(samples, **(options if fit else _unfitted(options)))
    elif name == "samples" and not fit:
        prior = priors.make(name, dim, **_unfitted(options))
    elif name == "vamp":
        options.setdefault("n_components", 50)
        n = options["n_components"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise EdvaeError(f"model.prior_options.n_components must be a positive integer, got {n!r}; e.g. 50")
        if "init" not in options:
            gen = torch.Generator().manual_seed(0)
            idx = torch.randperm(data.train.shape[0], generator=gen)[: options["n_components"]]
            options["init"] = data.train[idx].clone()
        prior = priors.make("vamp", dim, encoder=encoder, input_shape=tuple(data.x_shape), **options)
    elif name == "mixture" and "init" not in options:
        # K raw N(0, I) draws clump, and a mixture grown from clumped means keeps merged modes;
        # the k-means centres of many N(0, I) draws spread the means evenly over its mass.
        spread = torch.randn(_MIXTURE_INIT_DRAWS, dim, generator=torch.Generator().manual_seed(0))
        prior = priors.make(name, dim, init=spread, **options)
    else:
        prior = priors.make(name, dim, **options)
    prior_dim = priors.event_dim(prior)
    if prior_dim != dim:
        raise EdvaeError(f"model.prior '{name}' is {prior_dim}-dimensional but model.latent_dim is {dim}; make them agree")
    return prior


def _unfitted(options: dict) -> dict:
    """Options of a prior known by samples that skip its fitting (no flow training, no bandwidth
    cross-validation): the fitted values are buffers and parameters that a state dict restores."""
    cheap = {"bandwidth": "scott"} if options.get("bandwidth", "cv") == "cv" else {}
    return {**options, "flow_steps": 0, **cheap}


def build_model(config: "ModelConfig", data: "DataSplits", *, fit_prior: bool = True) -> VAE:
    """Build the VAE a :class:`~edvae.config.ModelConfig` describes, for data shaped like ``data``.

    ``fit_prior=False`` builds a prior known only by samples (``"samples:PATH"``) without fitting
    it (a flow is not trained, a KDE bandwidth is not cross-validated): use it when a state dict
    is loaded next, which restores the fitted flow weights and the bandwidth.
    """
    x_shape = tuple(data.x_shape)
    if config.network == "mlp":
        encoder: nn.Module = MLPEncoder(x_shape, config.latent_dim, config.hidden)
        decoder: nn.Module = MLPDecoder(x_shape, config.latent_dim, list(reversed(config.hidden)))
    else:
        encoder = ConvEncoder(x_shape, config.latent_dim)
        decoder = ConvDecoder(x_shape, config.latent_dim)
    kind = resolve_likelihood(config, data)
    likelihood: nn.Module
    if kind == "gaussian":
        likelihood = GaussianLikelihood(x_shape, scale=config.decoder_scale, init_log_scale=config.decoder_log_scale)
    else:
        likelihood = BernoulliLikelihood()
    prior = _build_prior(config, data, encoder, fit=fit_prior)
    return VAE(encoder, decoder, likelihood, prior, config.latent_dim)


@torch.no_grad()
def calibrate_decoder(model: VAE, x: Tensor, *, generator: torch.Generator, batch_size: int = 1024) -> bool:
    """Set a calibrated (``scale="optimal"``) Gaussian decoder's scale to its maximum-likelihood
    value on ``x`` (the training split), the rule evaluation relies on:

        s_d^2 = mean_n (x_nd - m_d(z_n))^2,   z_n = mu(x_n) + sigma(x_n) * eps_n,  eps_n ~ N(0, I),

    which maximises the Monte-Carlo reconstruction term sum_n log p(x_n|z_n) over s. The noise
    comes from ``generator`` (seeded by the caller, so a seed fixes it). Returns whether the
    model has such a decoder (a learned or fixed scale, or a Bernoulli decoder, is left alone).
    """
    likelihood = model.likelihood
    if getattr(likelihood, "scale", None) != "optimal":
        return False
    was_training = model.training
    model.eval()
    total = torch.zeros(likelihood.log_scale.shape, dtype=torch.float64)
    for start in range(0, x.shape[0], batch_size):
        batch = x[start:start + batch_size]
        mu, logvar = model.encode(batch)
        eps = torch.randn(mu.shape, generator=generator).to(mu)
        residual = batch - model.decode(mu + torch.exp(0.5 * logvar) * eps)
        total += residual.double().square().sum(0).cpu()
    likelihood.calibrate(total / x.shape[0])
    model.train(was_training)
    return True
