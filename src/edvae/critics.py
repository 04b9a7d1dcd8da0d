r"""InfoNCE critics: lower bounds on the mutual information I(x; z) of the encoder, each capped.

InfoNCE (van den Oord et al., 2018) scores a query code z_i against one positive candidate
(paired with the same x_i) and K' candidates drawn independently of it (negatives):

    I_NCE = mean_i [ f(z_i, c_i+) - log( exp f(z_i, c_i+) + sum_k exp f(z_i, c_ik) ) ] + log(K' + 1),

and I(x; z) >= I_NCE (in expectation over batches). Every term in the bracket is <= 0 (the
positive is one of the summands), so a single batch never gives more than log(K' + 1): a critic
can at best *identify* the positive among K' + 1 candidates. The critics differ in the score f
and in where the negatives come from:

* ``"encoder"`` (:class:`EncoderCritic`): f(z_i, x_j) = log q(z_i | x_j), the other B - 1 codes
  of the batch as negatives; I_NCE <= log B. It equals the mutual information of
  ``edvae.estimators.decompose(..., method="batch")`` and has no parameters.
* ``"bilinear"`` (:class:`ScoreCritic` around :class:`BilinearCritic`):
  f(z_i, x_j) = z_i^T W mu_j with W learned; I_NCE <= log B.
* ``"mlp"`` (:class:`ScoreCritic` around :class:`MLPCritic`): f(z_i, x_j) =
  g(z_i)^T h(mu_j) / sqrt(k) with two learned MLPs; I_NCE <= log B.
* ``"momentum"`` (:class:`MomentumCritic`, MoCo-style, He et al., 2020): f = cosine / tau between
  the query code and keys of a slowly updated copy of the encoder, the last K keys of past
  batches (a queue) as negatives; I_NCE <= log(K + 1), independent of the batch size.

All of them are ``nn.Module`` s called alike, ``critic(z, mu, logvar, x)`` -> 0-d estimate in
nats, so an objective need not know which one it holds; ``critic.bound(batch_size)`` is the cap
and ``critic.update(encoder)`` is what a trainer calls after every optimiser step (a no-op except
for the momentum critic). Build one by name with :func:`make_critic`: each critic's options are
a pydantic model registered in :data:`CRITICS` under its name (their defaults written there
once), whose ``build`` makes the critic.

This module is mathematics: it imports torch, pydantic, ``edvae.errors``, ``edvae.registry``,
``edvae.estimators`` and ``edvae.priors.base`` (one positive-integer check) only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import torch
from pydantic import ConfigDict, Field
from torch import Tensor, nn
from torch.nn import functional as F

from edvae.errors import EdvaeError
from edvae.estimators import infonce
from edvae.priors.base import positive_int
from edvae.registry import Registry, Settings

__all__ = [
    "BilinearCritic",
    "BilinearOptions",
    "CRITICS",
    "Critic",
    "CriticOptions",
    "EncoderCritic",
    "EncoderOptions",
    "MLPCritic",
    "MLPOptions",
    "MomentumCritic",
    "MomentumOptions",
    "ScoreCritic",
    "make_critic",
    "parse_critic",
]


class Critic(nn.Module):
    r"""Base of every critic: ``forward(z, mu, logvar, x=None, *, row_offset=0)`` returns the
    InfoNCE estimate of I(x; z) for the batch (0-d, nats, in z's dtype), never above
    :meth:`bound`.

    ``z`` (R, D) are the rows (codes sampled from the online encoder, z_i ~ q(z | x_{i+o}),
    o = ``row_offset``), ``mu``/``logvar`` (B, D) the posterior parameters of the batch's columns
    and ``x`` (R, ...) the inputs of the rows (needed by critics that encode x themselves).
    """

    def bound(self, batch_size: int) -> float:
        """The largest value a batch of ``batch_size`` columns can give: log B."""
        return math.log(batch_size)

    def update(self, encoder: nn.Module, gather: Callable[[Tensor], Tensor] | None = None) -> None:
        """Called by the trainer after each optimiser step; stateless critics do nothing."""

    def skip(self) -> None:
        """Called instead of :meth:`update` after a skipped step (non-finite loss or gradient):
        forget what the last estimate kept for the update; stateless critics do nothing."""


class EncoderCritic(Critic):
    r"""The encoder as critic, f(z_i, x_j) = log q(z_i | x_j):

        I_NCE = mean_i [ log q(z_i|x_{i+o}) - log (1/B) sum_j q(z_i|x_j) ] <= log B,

    :func:`edvae.estimators.infonce` with its default critic; no parameters.
    """

    def forward(
        self,
        z: Tensor,
        mu: Tensor,
        logvar: Tensor,
        x: Tensor | None = None,
        *,
        row_offset: int = 0,
        validate: bool = True,
    ) -> Tensor:
        return infonce(z, mu, logvar, row_offset=row_offset, validate=validate)


class BilinearCritic(nn.Module):
    r"""Bilinear critic f(x_j, z_i) = z_i^T W mu_j, scores of shape (R, B).

    ``W`` (D, D) starts at the identity. Call as ``critic(z, mu)`` with rows ``z`` (R, D) and
    columns ``mu`` (B, D).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim))

    def forward(self, z: Tensor, mu: Tensor) -> Tensor:
        return z @ self.weight @ mu.T


class MLPCritic(nn.Module):
    r"""Separable MLP critic f(x_j, z_i) = g(z_i)^T h(mu_j) / sqrt(k), scores (R, B).

    g and h are two-layer MLPs R^D -> R^k (``embedding`` = k). Separable critics cost one
    (R, k) x (k, B) product instead of a network evaluation per pair. h's last layer has no
    bias: a bias b would add g(z_i)^T b to every score of row i, which InfoNCE's log-softmax
    over j removes, so nothing could learn it.
    """

    def __init__(self, dim: int, hidden: int, embedding: int) -> None:
        super().__init__()
        self.rows = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, embedding))
        self.columns = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, embedding, bias=False))
        self.scale = embedding**-0.5

    def forward(self, z: Tensor, mu: Tensor) -> Tensor:
        return self.scale * self.rows(z) @ self.columns(mu).T


class ScoreCritic(Critic):
    r"""A learned score f(z_i, mu_j), (R, B) scores from ``score(z, mu)`` (e.g.
    :class:`BilinearCritic` or :class:`MLPCritic`), the batch's columns as negatives:

        I_NCE = mean_i [ f(z_i, mu_{i+o}) - logsumexp_j f(z_i, mu_j) ] + log B <= log B.

    The score's parameters are trained with the model (maximising I_NCE tightens the bound).
    """

    def __init__(self, score: nn.Module) -> None:
        super().__init__()
        self.score = score

    def forward(
        self,
        z: Tensor,
        mu: Tensor,
        logvar: Tensor,
        x: Tensor | None = None,
        *,
        row_offset: int = 0,
        validate: bool = True,
    ) -> Tensor:
        return infonce(z, mu, logvar, critic=self.score, row_offset=row_offset, validate=validate)


class MomentumCritic(Critic):
    r"""MoCo-style InfoNCE: a momentum copy of the encoder gives the keys, a queue of the last
    K keys gives the negatives.

    Embeddings: e(v) = g(v) / ||g(v)||_2, with g the identity (the code itself; the default) or a
    small projection head (``projection`` = output size, a two-layer MLP with ``hidden`` units).

    * Query (online): u_i = e(z_i), with z_i ~ q_theta(z | x_i) the code the model sampled
      (reparameterised, so the gradient reaches the encoder and the head).
    * Positive key (momentum encoder xi, no gradient): k_i = e_xi(m_xi(x_i)), the key encoder's
      posterior mean (``key="mean"``, the default) or a sample of its posterior
      (``key="sample"``). Our data are vectors with no natural augmentations, so the "two views"
      of x_i are the online encoder's random code and the key encoder's (slightly older)
      encoding of the same x_i: the positive pair shares x_i and nothing else.
    * Negatives: the n <= K keys in the queue, n_k, from past batches (independent of x_i).

    Logits l_i0 = u_i . k_i / tau and l_ik = u_i . n_k / tau, and

        I_NCE = mean_i [ l_i0 - logsumexp(l_i0, l_i1, ..., l_in) ] + log(n + 1)
              <= log(n + 1) <= log(K + 1)

    in the codes' precision, exactly (the logsumexp includes l_i0, so each term is <= 0).
    It is a lower bound on I(x; z) in expectation when the negatives are keys of independent
    x's under the same key encoder; the queue's keys are up to K / B steps old, a drift of order
    (1 - m) per step that MoCo accepts (m near 1 keeps old and new keys consistent). Cosines lie
    in [-1, 1], so with
    tau the gap between the positive and a negative is at most 2 / tau nats: the bound is near
    log(K + 1) only when K exp(-2/tau) << 1 (tau = 0.1, K = 4096: 4096 e^-20 ~ 8e-6).
    The queue is used as filled so far: before K keys have been enqueued it holds n < K keys
    and the estimate is capped at log(n + 1) (0 at the first step), never scored against
    placeholder noise.

    Momentum update after each optimiser step (:meth:`momentum_update`):
    xi <- m xi + (1 - m) theta for every parameter of the encoder (and of the head); the
    encoder's buffers, if any, are copied. The key encoder starts as a copy of the encoder.

    State: the key encoder and key head are submodules with ``requires_grad=False``; the queue
    (K, E), the write ``pointer`` and the fill ``size`` (int64 0-d) are buffers, so
    ``state_dict`` holds everything and a resumed run continues exactly. Keys are computed under
    ``torch.no_grad``: no gradient ever reaches the key encoder or the queue.
    """

    pending: Tensor | None
    queue: Tensor
    pointer: Tensor
    size: Tensor

    def __init__(self, encoder: nn.Module, dim: int, **options: Any) -> None:
        """``options``: any of :class:`MomentumOptions` (K = ``queue_size``, tau = ``temperature``,
        m = ``momentum``, ``projection``, ``hidden``, ``key``); the rest take its defaults."""
        super().__init__()
        o = MomentumOptions.parse(options, "critic 'momentum'")
        self.queue_size, self.temperature, self.momentum, self.key = o.queue_size, o.temperature, o.momentum, o.key
        self.head: nn.Module = (
            nn.Identity()
            if o.projection is None
            else nn.Sequential(nn.Linear(dim, o.hidden), nn.SiLU(), nn.Linear(o.hidden, o.projection))
        )
        self.key_encoder = _frozen_copy(encoder)
        self.key_head = _frozen_copy(self.head)
        embedding = dim if o.projection is None else o.projection
        self.register_buffer("queue", torch.zeros(o.queue_size, embedding))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("size", torch.zeros((), dtype=torch.long))
        self.pending = None

    def bound(self, batch_size: int = 0) -> float:
        """log(K + 1), whatever the batch size."""
        return math.log(self.queue_size + 1)

    def embed(self, codes: Tensor) -> Tensor:
        """Query embeddings e(z) = g(z) / ||g(z)||, (R, E), differentiable."""
        return F.normalize(self.head(codes), dim=1)

    @torch.no_grad()
    def keys(self, x: Tensor, key_noise: Tensor | None = None) -> Tensor:
        """Key embeddings of inputs ``x`` from the momentum encoder, (R, E), no gradient.

        ``key="sample"`` draws mu + exp(logvar / 2) * eps with eps = ``key_noise`` or, if None,
        from torch's global generator.
        """
        mu, logvar = self.key_encoder(x)
        codes = mu
        if self.key == "sample":
            eps = torch.randn_like(mu) if key_noise is None else key_noise
            codes = mu + torch.exp(0.5 * logvar) * eps
        return F.normalize(self.key_head(codes), dim=1)

    def estimate(self, z: Tensor, x: Tensor, key_noise: Tensor | None = None) -> Tensor:
        r"""I_NCE of queries ``z`` (R, D) against the keys of ``x`` (R, ...) and the queue's
        negatives (class docstring), 0-d in z's dtype, <= log(n + 1). With gradients enabled
        (a training step) the batch's keys are appended to :attr:`pending` (every micro-batch
        of a step, in order) for :meth:`update` to enqueue; under ``torch.no_grad``
        (evaluation) they are not."""
        if not isinstance(z, Tensor) or z.dim() != 2 or not isinstance(x, Tensor) or x.shape[0] != z.shape[0]:
            raise EdvaeError(
                f"the momentum critic needs codes z (R, D) and their R inputs x, got z {_shape(z)} "
                f"and x {_shape(x)}; pass the batch's inputs as x."
            )
        queries = self.embed(z)
        keys = self.keys(x, key_noise).to(queries.dtype)
        # a copy, so that enqueueing before the backward pass leaves the saved negatives intact
        negatives = self.queue[: int(self.size)].to(queries.dtype, copy=True)
        positive = (queries * keys).sum(1, keepdim=True)
        logits = torch.cat([positive, queries @ negatives.T], dim=1) / self.temperature
        if torch.is_grad_enabled():  # a training step (its micro-batches in order); evaluation feeds no queue
            self.pending = keys if self.pending is None else torch.cat([self.pending, keys])
        # mean_i log_softmax(l_i)_0: one fused pass, <= 0 in any precision (l_i0 - max <= 0 and
        # logsumexp - max >= 0), so the estimate never exceeds log(n + 1)
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return -torch.nn.functional.cross_entropy(logits, target) + math.log(logits.shape[1])

    def forward(
        self,
        z: Tensor,
        mu: Tensor | None = None,
        logvar: Tensor | None = None,
        x: Tensor | None = None,
        *,
        row_offset: int = 0,
        validate: bool = True,
        key_noise: Tensor | None = None,
    ) -> Tensor:
        """:meth:`estimate` of ``z`` and ``x``; ``mu``, ``logvar`` and ``row_offset`` are unused
        (the negatives come from the queue, not from the batch's columns)."""
        if x is None:
            raise EdvaeError("the momentum critic needs the batch's inputs; call critic(z, mu, logvar, x).")
        return self.estimate(z, x, key_noise)

    @torch.no_grad()
    def momentum_update(self, encoder: nn.Module) -> None:
        """xi <- m xi + (1 - m) theta for the key encoder (from ``encoder``) and the key head
        (from :attr:`head`); buffers are copied."""
        for target, source in ((self.key_encoder, encoder), (self.key_head, self.head)):
            params = dict(source.named_parameters())
            keys = [name for name, _ in target.named_parameters()]
            if sorted(keys) != sorted(params) or any(p.shape != params[n].shape for n, p in target.named_parameters()):
                raise EdvaeError(
                    f"momentum_update got an encoder of type {type(source).__name__} whose parameters "
                    "differ from the key encoder's; pass the (unwrapped) encoder the critic was built from."
                )
            for name, p in target.named_parameters():
                p.lerp_(params[name].to(p.dtype), 1.0 - self.momentum)
            buffers = dict(source.named_buffers())
            for name, b in target.named_buffers():
                b.copy_(buffers[name])

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` (n, E) into the ring buffer at :attr:`pointer` (wrapping around; of
        more than K keys only the last K are kept), advance the pointer by n mod K and the fill
        size to min(size + n, K). Keys are cast to the queue's dtype and device."""
        if not isinstance(keys, Tensor) or keys.dim() != 2 or keys.shape[1] != self.queue.shape[1]:
            raise EdvaeError(
                f"enqueue needs keys of shape (n, {self.queue.shape[1]}), got {_shape(keys)}; pass the "
                "output of critic.keys(x)."
            )
        n, k = keys.shape[0], self.queue_size
        kept = keys[max(0, n - k) :].to(dtype=self.queue.dtype, device=self.queue.device)
        start = (int(self.pointer) + n - kept.shape[0]) % k
        index = (start + torch.arange(kept.shape[0], device=self.queue.device)) % k
        self.queue[index] = kept
        self.pointer.fill_((int(self.pointer) + n) % k)
        self.size.fill_(min(int(self.size) + n, k))

    def skip(self) -> None:
        """A skipped step: its keys are not enqueued and the key encoder does not move."""
        self.pending = None

    def update(self, encoder: nn.Module, gather: Callable[[Tensor], Tensor] | None = None) -> None:
        """After an optimiser step: :meth:`momentum_update` from ``encoder``, then enqueue the
        keys of the training :meth:`estimate` s since the last update (all processes' keys, in rank order,
        when ``gather`` maps the local (n, E) keys to the concatenation over processes)."""
        self.momentum_update(encoder)
        if self.pending is not None:
            self.enqueue(self.pending if gather is None else gather(self.pending))
            self.pending = None


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def _frozen_copy(module: nn.Module) -> nn.Module:
    clone = copy.deepcopy(module)
    clone.requires_grad_(False)
    return clone


# --------------------------------------------------------------------------------------------
# construction by name

#: A positive integer (a size); strict: 2.5, "8" and true are refused.
_Size = Annotated[int, Field(ge=1)]


class CriticOptions(Settings):
    """The options of one critic, a subclass per critic registered in :data:`CRITICS` under
    its name; :meth:`build` makes the critic. Strict: an option of the wrong type (``"0.9"``,
    ``true``, ``2.5`` for a size) is refused, not converted."""

    model_config = ConfigDict(strict=True)

    def build(self, dim: int, encoder: nn.Module | None = None) -> Critic:
        """The critic for codes of dimension ``dim`` (``encoder``: x -> (mu, logvar), read by
        critics that encode x themselves)."""
        raise NotImplementedError


#: critic name -> its options model (which builds it); installed packages may add critics
#: through the entry-point group ``edvae.critics``
CRITICS: Registry[type[CriticOptions]] = Registry("critic", plugins="edvae.critics")


@CRITICS.register("encoder")
class EncoderOptions(CriticOptions):
    """``"encoder"``: f = log q(z|x), no options; <= log B."""

    def build(self, dim: int, encoder: nn.Module | None = None) -> Critic:
        return EncoderCritic()


@CRITICS.register("bilinear")
class BilinearOptions(CriticOptions):
    """``"bilinear"``: f = z^T W mu, no options; <= log B."""

    def build(self, dim: int, encoder: nn.Module | None = None) -> Critic:
        return ScoreCritic(BilinearCritic(dim))


@CRITICS.register("mlp")
class MLPOptions(CriticOptions):
    """``"mlp"``: f = g(z)^T h(mu) / sqrt(k) (:class:`MLPCritic`); <= log B."""

    hidden: _Size = 128
    embedding: _Size = Field(32, description="k, the output size of g and h")

    def build(self, dim: int, encoder: nn.Module | None = None) -> Critic:
        return ScoreCritic(MLPCritic(dim, hidden=self.hidden, embedding=self.embedding))


@CRITICS.register("momentum")
class MomentumOptions(CriticOptions):
    """``"momentum"``: MoCo-style (:class:`MomentumCritic`), needs the encoder; <= log(K + 1)."""

    queue_size: _Size = Field(4096, description="K, the negatives kept from past batches")
    temperature: float = Field(0.1, gt=0, description="tau, the logits' scale: cosine / tau")
    momentum: float = Field(0.99, ge=0, lt=1, description="m of the key encoder's update xi <- m xi + (1 - m) theta")
    projection: _Size | None = Field(None, description="None: the code itself; a size: a projection head's output")
    hidden: _Size = Field(128, description="the projection head's width")
    key: Literal["mean", "sample"] = Field("mean", description="the key encoder's posterior mean, or a sample")

    def build(self, dim: int, encoder: nn.Module | None = None) -> Critic:
        if not isinstance(encoder, nn.Module):
            raise EdvaeError(
                "critic='momentum' needs the encoder (an nn.Module x -> (mu, logvar)) to copy; pass "
                "make_critic('momentum', dim, encoder=model.encoder)."
            )
        return MomentumCritic(encoder, dim, **self.model_dump())


def parse_critic(name: object, options: Mapping[str, Any]) -> CriticOptions:
    """The options of critic ``name`` (a name of :data:`CRITICS`), validated and with their
    defaults filled in; a bad name or option raises a one-line :class:`EdvaeError`. What
    :func:`make_critic` checks, without building anything (a config validates with it)."""
    return CRITICS.get(name).parse(options, f"critic {name!r}")


def make_critic(name: str, dim: int, encoder: nn.Module | None = None, **options: Any) -> Critic:
    r"""The InfoNCE critic ``name`` for codes of dimension ``dim`` (see the module docstring),
    built by its options model in :data:`CRITICS`:

    * ``"encoder"``: f = log q(z|x), no options; <= log B.
    * ``"bilinear"``: f = z^T W mu, no options; <= log B.
    * ``"mlp"``: f = g(z)^T h(mu) / sqrt(k), options ``hidden``, ``embedding`` k
      (:class:`MLPOptions`); <= log B.
    * ``"momentum"``: MoCo-style (:class:`MomentumCritic`), needs ``encoder`` (x -> (mu, logvar));
      options ``queue_size`` K, ``temperature`` tau, ``momentum`` m, ``projection``, ``hidden``,
      ``key`` (:class:`MomentumOptions`); <= log(K + 1).

    ``encoder`` is ignored by the other critics. Bad names or options raise one-line
    :class:`EdvaeError` s.
    """
    settings = parse_critic(name, options)
    return settings.build(positive_int("dim", dim), encoder)
