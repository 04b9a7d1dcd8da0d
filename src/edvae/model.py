"""The VAE module: encoder, decoder, likelihood and prior in one ``nn.Module``.

The model only computes; the objective (:mod:`edvae.objectives`) decides how the pieces are
combined. ``forward(x, eps)`` draws z = mu + sigma * eps by reparameterisation and returns
everything an objective needs in one :class:`ModelOutput`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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

__all__ = [
    "ModelOutput",
    "VAE",
    "build_model",
    "calibrate_decoder",
    "check_fits_memory",
    "model_likelihood",
    "training_memory_bytes",
]


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

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: GaussianLikelihood | BernoulliLikelihood,
        prior: nn.Module,
        latent_dim: int,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.prior = prior
        self.latent_dim = latent_dim
        self._prior_checked_on: torch.device | None = None  # see prior_distribution

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, logvar)``, each ``(B, D)``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Likelihood parameters for codes ``z`` (means, or logits for Bernoulli)."""
        return self.decoder(z)

    def prior_distribution(self) -> Distribution:
        """The prior p(z) as a distribution.

        The first call on each device checks that the distribution's tensors lie on the model's
        device (:func:`edvae.priors.check_prior_device`; devices only, no host synchronisation),
        so a prior that builds its tensors elsewhere (``torch.ones(dim)`` inside ``forward()``)
        is refused with one line naming it, not a device mismatch deep inside torch.
        """
        dist = self.prior()
        first = next(itertools.chain(self.encoder.parameters(), self.parameters()), None)
        if first is not None and first.device != self._prior_checked_on:
            priors.check_prior_device(dist, first.device, self.prior)
            self._prior_checked_on = first.device
        return dist

    def forward(self, x: Tensor, eps: Tensor | None = None) -> ModelOutput:
        """Encode, sample z = mu + exp(logvar / 2) * eps, decode and score log p(x|z)."""
        mu, logvar = self.encoder(x)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        x_params = self.decoder(z)
        return ModelOutput(mu, logvar, z, self.likelihood.log_prob(x, x_params), x_params)


def model_likelihood(config: ModelConfig, data: DataSplits) -> str:
    """The likelihood p(x|z) a model of ``config`` uses on ``data``: ``config.likelihood``, or the
    data set's own (``data.likelihood``) when it is ``"auto"``."""
    return data.likelihood if config.likelihood == "auto" else config.likelihood


def _build_prior(
    config: ModelConfig, data: DataSplits, encoder: nn.Module, fit: bool = True, state: Any = None
) -> nn.Module:
    """The prior the config names, from the registry (:func:`edvae.priors.make`), given the data
    and encoder of the model being built; its event dimension must be the latent dimension."""
    dim = config.latent_dim
    context = priors.PriorContext(dim=dim, data=data, encoder=encoder, fit=fit, state=state)
    prior = priors.make(config.prior, dim, context=context, **config.prior_options)
    prior_dim = priors.event_dim(prior)
    if prior_dim != dim:
        raise EdvaeError(
            f"model.prior '{config.prior}' is {prior_dim}-dimensional but model.latent_dim is {dim}; make them agree"
        )
    return prior


def training_memory_bytes(config: ModelConfig, x_shape: tuple[int, ...], batch_size: int) -> int:
    """A lower estimate of the memory one training step needs, in bytes (float32).

    With F = prod(x_shape) features, D = latent_dim and MLP widths h_1..h_L, the encoder
    F -> h_1 -> ... -> h_L -> 2D and the mirrored decoder have P = sum of (n_in + 1) n_out
    weights; Adam keeps 4 copies of them (weights, gradients, two moments). Each of the B
    examples of a batch keeps its activations for the backward pass, about 2 (F + sum h + 3D)
    values (a convolutional network: 64 F). Estimate: 4 (4P + 2 B A) bytes, A the activations
    per example; it leaves out the objective's (B, B, D) terms, which are computed blockwise."""
    features = math.prod(x_shape)
    dim = config.latent_dim
    if config.network == "mlp":
        sizes = [features, *config.hidden, 2 * dim]
        params = 2 * sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        activations = 2 * (features + sum(config.hidden) + 3 * dim)
    else:
        params, activations = 0, 64 * features
    return 4 * (4 * params + 2 * batch_size * activations)


def check_fits_memory(needed: int, available: int, what: str, fix: str) -> None:
    """Refuse (:class:`EdvaeError`, one line) work estimated at ``needed`` bytes on a machine
    with ``available`` bytes of memory, before any of it is allocated."""
    if needed > available:
        raise EdvaeError(
            f"{what} needs about {needed / 2**30:.3g} GiB of memory, more than this machine's "
            f"{available / 2**30:.3g} GiB; {fix}"
        )


def build_model(config: ModelConfig, data: DataSplits, *, fit_prior: bool = True, weights: Any = None) -> VAE:
    """Build the VAE a :class:`~edvae.config.ModelConfig` describes, for data shaped like ``data``.

    ``fit_prior=False`` builds a prior known only by samples (``"samples:PATH"``) without fitting
    it (a flow is not trained, a KDE bandwidth is not cross-validated): use it when a state dict
    is loaded next, which restores the fitted flow weights and the bandwidth. ``weights``: that
    state dict, when known; the prior is then sized from it (its ``prior.*`` entries), so a
    ``samples:PATH`` prior does not read its file.
    """
    x_shape = tuple(data.x_shape)
    if config.network == "mlp":
        encoder: nn.Module = MLPEncoder(x_shape, config.latent_dim, config.hidden)
        decoder: nn.Module = MLPDecoder(x_shape, config.latent_dim, list(reversed(config.hidden)))
    else:
        encoder = ConvEncoder(x_shape, config.latent_dim)
        decoder = ConvDecoder(x_shape, config.latent_dim)
    kind = model_likelihood(config, data)
    likelihood: GaussianLikelihood | BernoulliLikelihood
    if kind == "gaussian":
        likelihood = GaussianLikelihood(x_shape, scale=config.decoder_scale, init_log_scale=config.decoder_log_scale)
    else:
        likelihood = BernoulliLikelihood()
    state = None
    if not fit_prior and isinstance(weights, dict):
        state = {
            k.removeprefix("prior."): v for k, v in weights.items() if isinstance(k, str) and k.startswith("prior.")
        }
    prior = _build_prior(config, data, encoder, fit=fit_prior, state=state)
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
    if not isinstance(likelihood, GaussianLikelihood) or likelihood.scale != "optimal":
        return False
    was_training = model.training
    model.eval()
    total = torch.zeros(likelihood.log_scale.shape, dtype=torch.float64)
    device = next(model.encoder.parameters()).device
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size].to(device)
        mu, logvar = model.encode(batch)
        eps = torch.randn(mu.shape, generator=generator).to(mu)
        residual = batch - model.decode(mu + torch.exp(0.5 * logvar) * eps)
        total += residual.double().square().sum(0).cpu()
    likelihood.calibrate(total / x.shape[0])
    model.train(was_training)
    return True
