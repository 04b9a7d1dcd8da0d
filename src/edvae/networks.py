"""Encoders, decoders and observation likelihoods.

The encoder maps x to the parameters of a diagonal Gaussian posterior
q(z|x) = N(mu(x), diag exp(logvar(x))), with log-variances clamped to :data:`LOGVAR_RANGE`
so that exp(logvar) neither underflows nor overflows in float32. The decoder maps z to the
parameters of p(x|z); a likelihood turns those parameters into log p(x|z), summed over every
observed dimension, so ELBO values are log-densities in nats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from edvae.errors import EdvaeError

__all__ = [
    "LOGVAR_RANGE",
    "LOG_SCALE_MIN",
    "DECODER_SCALES",
    "mlp",
    "Encoder",
    "MLPEncoder",
    "ConvEncoder",
    "MLPDecoder",
    "ConvDecoder",
    "GaussianLikelihood",
    "BernoulliLikelihood",
]

#: Range of the encoder's log-variances: sigma between exp(-6) ~ 2.5e-3 and exp(4) ~ 55.
LOGVAR_RANGE: tuple[float, float] = (-12.0, 8.0)

#: Lower bound of the Gaussian likelihood's learned log standard deviation.
LOG_SCALE_MIN: float = -7.0


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """A multilayer perceptron ``sizes[0] -> ... -> sizes[-1]``, activation between layers."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Base of every encoder: a body producing features and a linear Gaussian head.

    ``forward(x)`` returns ``(mu, logvar)``, each ``(B, latent_dim)``, with
    ``logvar`` clamped to :data:`LOGVAR_RANGE`.
    """

    def __init__(self, body: nn.Module, features: int, latent_dim: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(features, 2 * latent_dim)
        self.latent_dim = latent_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)


class MLPEncoder(Encoder):
    """MLP encoder on flattened inputs of shape ``x_shape``."""

    def __init__(self, x_shape: Sequence[int], latent_dim: int, hidden: Sequence[int]) -> None:
        n_in = math.prod(x_shape)
        body = nn.Sequential(nn.Flatten(), mlp([n_in, *hidden]), nn.SiLU()) if hidden else nn.Flatten()
        super().__init__(body, hidden[-1] if hidden else n_in, latent_dim)


class MLPDecoder(nn.Module):
    """MLP decoder: z -> likelihood parameters of shape ``(B, *x_shape)``."""

    def __init__(self, x_shape: Sequence[int], latent_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.net = mlp([latent_dim, *hidden, math.prod(x_shape)])

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], *self.x_shape)


def _conv_plan(x_shape: Sequence[int], max_down: int = 2) -> tuple[int, int, int, int]:
    """Channels, height, width and the number of stride-2 halvings for an image shape.

    ``(H, W)`` is read as one channel. A size is halved only while both sides stay even, so odd
    sizes (e.g. 7x9) keep full resolution and a larger linear layer instead.
    """
    if len(x_shape) not in (2, 3):
        raise EdvaeError(
            f"model.network='conv' needs image data of shape (channels, height, width) or (height, width), "
            f"got {tuple(x_shape)}; set data.options.x_shape (e.g. [1, 28, 28]) or use model.network='mlp'"
        )
    c, h, w = (int(s) for s in (1, *x_shape)[-3:])
    n_down = 0
    while n_down < max_down and h % (2 ** (n_down + 1)) == 0 and w % (2 ** (n_down + 1)) == 0:
        n_down += 1
    return c, h, w, n_down


class ConvEncoder(Encoder):
    """Convolutional encoder: stride-2 4x4 convolutions halve the image while its size allows
    (twice at most: 28x28 -> 14 -> 7, 8x8 -> 4 -> 2), then a hidden linear layer."""

    def __init__(
        self, x_shape: Sequence[int], latent_dim: int, channels: Sequence[int] = (32, 64), hidden: int = 256
    ) -> None:
        c, h, w, n_down = _conv_plan(x_shape, len(channels))
        layers: list[nn.Module] = []
        c_in = c
        for i, c_out in enumerate(channels):
            stride = 2 if i < n_down else 1
            kernel = 4 if stride == 2 else 3
            layers += [nn.Conv2d(c_in, c_out, kernel, stride, 1), nn.SiLU()]
            c_in = c_out
        n_flat = c_in * (h // 2**n_down) * (w // 2**n_down)
        body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(n_flat, hidden), nn.SiLU())
        super().__init__(body, hidden, latent_dim)
        self.image_shape = (c, h, w)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return super().forward(x.reshape(x.shape[0], *self.image_shape))


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: linear layers, then transposed convolutions doubling the size."""

    def __init__(
        self, x_shape: Sequence[int], latent_dim: int, channels: Sequence[int] = (32, 64), hidden: int = 256
    ) -> None:
        super().__init__()
        c, h, w, n_down = _conv_plan(x_shape, len(channels))
        self.x_shape = tuple(int(s) for s in x_shape)
        rev = list(channels)[::-1]
        self.start = (rev[0], h // 2**n_down, w // 2**n_down)
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, math.prod(self.start)), nn.SiLU()
        )
        layers: list[nn.Module] = []
        for i, c_in in enumerate(rev):
            c_out = rev[i + 1] if i + 1 < len(rev) else c
            upsample = i >= len(rev) - n_down
            conv = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1) if upsample else nn.Conv2d(c_in, c_out, 3, 1, 1)
            layers.append(conv)
            if i + 1 < len(rev):
                layers.append(nn.SiLU())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.deconv(self.fc(z).view(z.shape[0], *self.start)).reshape(z.shape[0], *self.x_shape)


#: How the Gaussian decoder's scale is set: see :class:`GaussianLikelihood`.
DECODER_SCALES: tuple[str, ...] = ("learned", "optimal", "fixed")

#: Weight of the newest batch in the running maximum-likelihood variance of ``scale="optimal"``.
RUNNING_SCALE_MOMENTUM: float = 0.1


class GaussianLikelihood(nn.Module):
    """p(x|z) = N(x; m(z), diag s^2) with a per-dimension standard deviation s.

    log p(x|z) = sum_d [ -0.5 ((x_d - m_d)/s_d)^2 - log s_d - 0.5 log(2 pi) ], with
    log s_d >= :data:`LOG_SCALE_MIN`, so the ELBO is a true log-density rather than a rescaled
    squared error. ``scale`` chooses how s is set:

    * ``"learned"``: log s is a parameter trained with the rest, starting at ``init_log_scale``
      (Adam moves it by about the learning rate per step).
    * ``"optimal"`` (the calibrated decoder of Rybkin, Daniilidis & Levine, 2021): in training
      mode s is the maximum-likelihood scale of the batch's residuals,
      s_d^2 = mean_i (x_id - m_d(z_i))^2, which maximises sum_i log p(x_i|z_i) over s exactly.
      It carries no gradient; as d/ds of the batch log-likelihood vanishes at s*, detaching it
      leaves the gradients of every other parameter unchanged (envelope theorem). The buffer
      ``running_log_scale`` keeps a running mean of s^2 (momentum :data:`RUNNING_SCALE_MOMENTUM`,
      reduced across processes), and every training step copies it to ``log_scale``, the scale
      of eval mode (validation during training); :meth:`calibrate` sets ``log_scale`` alone to
      the training-set value at the end of training (:func:`edvae.model.calibrate_decoder`), so
      a run resumed for more epochs continues from the running value exactly as an uninterrupted
      run. In eval mode ``log_scale`` is used, so ELBO and IWAE are bounds of one fixed model.
    * ``"fixed"``: s = exp(``init_log_scale``), a buffer.
    """

    log_scale: Tensor
    running_log_scale: Tensor  # scale="optimal" only

    def __init__(self, x_shape: Sequence[int], scale: str = "learned", init_log_scale: float = 0.0) -> None:
        super().__init__()
        if scale not in DECODER_SCALES:
            raise EdvaeError(f"decoder scale {scale!r} is unknown; use one of {', '.join(DECODER_SCALES)}")
        self.scale = scale
        log_scale = torch.full(tuple(x_shape), float(init_log_scale))
        if scale == "learned":
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        if scale == "optimal":
            self.register_buffer("running_log_scale", log_scale.clone())

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x|z) per example, ``(B,)``, for decoder outputs ``params`` (the means)."""
        residual = x - params
        if self.scale == "optimal" and self.training:
            log_s = self._batch_log_scale(residual.detach())
        else:
            log_s = self.log_scale.clamp(min=LOG_SCALE_MIN)
        r = residual * torch.exp(-log_s)
        log_p = -0.5 * r.square() - log_s - 0.5 * math.log(2 * math.pi)
        return log_p.flatten(1).sum(1)

    def _batch_log_scale(self, residual: Tensor) -> Tensor:
        """The batch's maximum-likelihood log s for the (detached) ``residual`` x - m(z) (over
        every process's rows), and a step of the running variance kept in the ``log_scale`` buffer."""
        squares = residual.square().sum(0)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            count = torch.full((1,), float(residual.shape[0]), device=residual.device)  # no host copy, no sync
            sums = torch.cat([squares.flatten(), count])
            torch.distributed.all_reduce(sums)
            variance = (sums[:-1] / sums[-1]).view_as(self.log_scale)
        else:
            variance = squares / residual.shape[0]
        with torch.no_grad():
            previous = (2 * self.running_log_scale).exp()
            running = (1 - RUNNING_SCALE_MOMENTUM) * previous + RUNNING_SCALE_MOMENTUM * variance
            self.running_log_scale.copy_(0.5 * running.clamp(min=math.exp(2 * LOG_SCALE_MIN)).log())
            self.log_scale.copy_(self.running_log_scale)
        return 0.5 * variance.clamp(min=math.exp(2 * LOG_SCALE_MIN)).log()

    @torch.no_grad()
    def calibrate(self, mean_square_residual: Tensor) -> None:
        """Set the scale of a non-learned decoder to the maximum-likelihood value for residuals
        with this per-dimension mean square: log s_d = 0.5 log mean_n (x_nd - m_d(z_n))^2."""
        if self.scale == "learned":
            raise EdvaeError("a learned decoder scale is trained, not calibrated; use scale='optimal' or 'fixed'")
        variance = mean_square_residual.to(self.log_scale).view_as(self.log_scale)
        self.log_scale.copy_(0.5 * variance.clamp(min=math.exp(2 * LOG_SCALE_MIN)).log())

    def mean(self, params: Tensor) -> Tensor:
        """E[x|z]: the decoder output itself."""
        return params

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x ~ p(x|z)."""
        device = params.device if generator is None else generator.device  # draw where the generator lives
        noise = torch.randn(params.shape, generator=generator, dtype=params.dtype, device=device).to(params.device)
        return params + noise * self.log_scale.clamp(min=LOG_SCALE_MIN).exp()


class BernoulliLikelihood(nn.Module):
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(l_d(z))); decoder outputs are logits.

    log p(x|z) = sum_d [ x_d l_d - softplus(l_d) ], defined for x in {0, 1} (for x in [0, 1] it
    is the cross-entropy, not a normalised density).
    """

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x|z) per example, ``(B,)``, for logits ``params``."""
        return -F.binary_cross_entropy_with_logits(params, x, reduction="none").flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        """E[x|z] = sigmoid(logits)."""
        return torch.sigmoid(params)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x ~ p(x|z)."""
        probs = torch.sigmoid(params)
        if generator is None or generator.device == probs.device:
            return torch.bernoulli(probs, generator=generator)
        return torch.bernoulli(probs.to(generator.device), generator=generator).to(probs.device)
