"""Synthetic data with a known generative process (see :mod:`edvae.data.ground_truth`).

    z ~ p_true(z),    x = g(z) + N(0, noise_std^2 I)

* ``gaussian``: p_true is the standard normal (``edvae.priors.make("normal")``).
* ``complex``: p_true is a non-Gaussian prior with an exact log-density, ``mog_ring`` by
  default; option ``prior`` names any other registered prior (``banana``, ``student_t``,
  ``laplace``, ...) and ``prior_options`` passes its options.

The generator g is fixed by the data-set definition: it is built from ``generator_seed``
(default :data:`GENERATOR_SEED`), not from the data seed, so every seed of a data set
samples from the same process and runs with different seeds are replicates of one problem.
``seed`` draws the latents and the noise; train, val and test use independent streams
derived from it, so changing ``n_train`` leaves the test set unchanged.

g (:class:`SyntheticGenerator`) is injective by construction: ``g(z) = Q [a z ; m(z)]``, a
random rotation Q of a linear copy of z (a = ``0.5``) stacked on a tanh MLP m(z). Points with
different z therefore always have different g(z), the posterior p(z|x) has a single mode for
small noise, and g stays O(1) in scale for z of O(1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from edvae import priors
from edvae.data.ground_truth import GroundTruth
from edvae.data.sampling import derive_seed
from edvae.data.splits import SPLIT_NAMES, DataSplits
from edvae.errors import EdvaeError, require_int

__all__ = ["GENERATOR_SEED", "SyntheticGenerator", "complex_dataset", "gaussian_dataset", "make_ground_truth"]

#: Seed of the generator network g of the synthetic data sets (fixed by their definition).
GENERATOR_SEED = 1234


class SyntheticGenerator(nn.Module):
    """A fixed, seeded, injective smooth map g: R^D -> R^obs_dim.

    ``g(z) = Q [skip * z ; W_L tanh(... tanh(W_1 z + b_1) ...) + b_L]`` with Q a random
    orthogonal matrix; weights are N(0, gain^2 / fan_in) (gain 1.5 in the hidden layers, 1
    at the output), biases N(0, 0.5^2), all drawn from ``torch.Generator().manual_seed(seed)``.
    Its parameters are frozen.
    """

    def __init__(
        self,
        latent_dim: int,
        obs_dim: int,
        *,
        hidden_sizes: Sequence[int] = (32, 32),
        seed: int = GENERATOR_SEED,
        skip: float = 0.5,
    ) -> None:
        super().__init__()
        if obs_dim <= latent_dim:
            raise EdvaeError(f"obs_dim ({obs_dim}) must exceed latent_dim ({latent_dim}) for an injective generator")
        gen = torch.Generator().manual_seed(seed)
        sizes = [latent_dim, *hidden_sizes, obs_dim - latent_dim]
        self.latent_dim, self.obs_dim, self.skip = latent_dim, obs_dim, float(skip)
        self.layers = nn.ModuleList()
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layer = nn.Linear(fan_in, fan_out)
            gain = 1.0 if i == len(sizes) - 2 else 1.5
            with torch.no_grad():
                layer.weight.copy_(torch.randn(fan_out, fan_in, generator=gen) * gain / math.sqrt(fan_in))
                layer.bias.copy_(0.5 * torch.randn(fan_out, generator=gen))
            self.layers.append(layer)
        q, r = torch.linalg.qr(torch.randn(obs_dim, obs_dim, generator=gen, dtype=torch.float64))
        self.rotation = nn.Linear(obs_dim, obs_dim, bias=False)
        with torch.no_grad():
            self.rotation.weight.copy_((q * torch.sign(torch.diagonal(r))).to(torch.float32))
        self.requires_grad_(False)

    def forward(self, z: Tensor) -> Tensor:
        h = z
        for layer in self.layers[:-1]:
            h = torch.tanh(layer(h))
        return self.rotation(torch.cat([self.skip * z, self.layers[-1](h)], dim=-1))


def _make_prior(dataset: str, name: str, dim: int, options: dict[str, Any], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # pins any randomness in the prior's construction
        try:
            return priors.make(name, dim=dim, **options)
        except EdvaeError as exc:
            raise EdvaeError(f"dataset '{dataset}' could not build its true prior: {exc}") from None


def make_ground_truth(
    dataset: str,
    prior: str,
    prior_options: dict[str, Any] | None,
    *,
    latent_dim: int,
    obs_dim: int,
    noise_std: float,
    generator_seed: int,
    hidden_sizes: Sequence[int] = (32, 32),
) -> GroundTruth:
    """The generative process of a synthetic data set, with its options validated."""
    require_int(f"dataset '{dataset}': option latent_dim", latent_dim, 1)
    require_int(f"dataset '{dataset}': option obs_dim", obs_dim, 2)
    require_int(f"dataset '{dataset}': option generator_seed", generator_seed, 0)
    if obs_dim <= latent_dim:
        raise EdvaeError(
            f"dataset '{dataset}': obs_dim ({obs_dim}) must be larger than latent_dim ({latent_dim}) so that "
            "g is injective; raise obs_dim"
        )
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not (0 < noise_std < math.inf):
        raise EdvaeError(f"dataset '{dataset}': option noise_std must be a positive number, got {noise_std!r}")
    try:
        hidden = tuple(int(h) for h in hidden_sizes)
    except (TypeError, ValueError):
        hidden = ()
    if not hidden or min(hidden) < 1:
        raise EdvaeError(
            f"dataset '{dataset}': option hidden_sizes must be a list of positive integers, got {hidden_sizes!r}"
        )
    if not isinstance(prior, str):
        raise EdvaeError(f"dataset '{dataset}': option prior must be a prior name such as 'mog_ring', got {prior!r}")
    if prior_options is not None and not isinstance(prior_options, dict):
        raise EdvaeError(f"dataset '{dataset}': option prior_options must be a dict, got {prior_options!r}")
    options = dict(prior_options or {})
    module = _make_prior(dataset, prior, latent_dim, options, generator_seed)
    generator = SyntheticGenerator(latent_dim, obs_dim, hidden_sizes=hidden, seed=generator_seed)
    return GroundTruth(module, generator, float(noise_std), prior_name=prior, prior_options=options)


def _labels(truth: GroundTruth, z: Tensor) -> Tensor | None:
    """For a mixture prior: the most probable component of each true z (else ``None``)."""
    prior = truth.prior
    if not isinstance(prior, torch.distributions.MixtureSameFamily):
        return None
    with torch.no_grad():
        log_mix = torch.log_softmax(prior.mixture_distribution.logits, -1)
        log_comp = prior.component_distribution.log_prob(z.unsqueeze(-2).to(log_mix.dtype))
        return (log_mix + log_comp).argmax(-1).to(torch.int64)


def _sample_splits(name: str, truth: GroundTruth, seed: int, sizes: dict[str, int], info: dict[str, Any]) -> DataSplits:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise EdvaeError(f"dataset '{name}': seed must be an integer, got {seed!r}")
    parts: dict[str, Any] = {}
    for split in SPLIT_NAMES:
        x, z = truth.sample(sizes[split], seed=derive_seed(seed, "synthetic", split))
        parts[split] = x
        parts[f"{split}_labels"] = _labels(truth, z)
        truth.latents[split] = z
    return DataSplits(
        name=name,
        x_shape=(truth.obs_dim,),
        likelihood="gaussian",
        binarize="none",
        ground_truth=truth,
        info=dict(info, seed=seed),
        **parts,
    )


def _synthetic_dataset(
    name: str,
    prior: str,
    prior_options: dict[str, Any] | None,
    info: dict[str, Any],
    *,
    seed: int,
    sizes: Sequence[int],
    generator_seed: int,
    **process: Any,
) -> DataSplits:
    """The shared body of the synthetic data sets: build the ground truth, sample the splits."""
    truth = make_ground_truth(name, prior, prior_options, generator_seed=generator_seed, **process)
    checked = {s: require_int(f"dataset '{name}': option n_{s}", v, 1) for s, v in zip(SPLIT_NAMES, sizes, strict=True)}
    return _sample_splits(name, truth, seed, checked, {"generator_seed": generator_seed, **info})


def gaussian_dataset(
    *,
    seed: int,
    latent_dim: int = 2,
    obs_dim: int = 16,
    noise_std: float = 0.1,
    n_train: int = 10_000,
    n_val: int = 2_000,
    n_test: int = 2_000,
    generator_seed: int = GENERATOR_SEED,
    hidden_sizes: Sequence[int] = (32, 32),
) -> DataSplits:
    """z ~ N(0, I) in ``latent_dim`` dimensions, x = g(z) + N(0, noise_std^2 I) in ``obs_dim``."""
    return _synthetic_dataset(
        "gaussian",
        "normal",
        None,
        {},
        seed=seed,
        latent_dim=latent_dim,
        obs_dim=obs_dim,
        noise_std=noise_std,
        sizes=(n_train, n_val, n_test),
        generator_seed=generator_seed,
        hidden_sizes=hidden_sizes,
    )


def complex_dataset(
    *,
    seed: int,
    prior: str = "mog_ring",
    prior_options: dict[str, Any] | None = None,
    latent_dim: int = 2,
    obs_dim: int = 16,
    noise_std: float = 0.1,
    n_train: int = 10_000,
    n_val: int = 2_000,
    n_test: int = 2_000,
    generator_seed: int = GENERATOR_SEED,
    hidden_sizes: Sequence[int] = (32, 32),
) -> DataSplits:
    """z ~ a non-Gaussian prior (``prior``, default ``mog_ring``), x = g(z) + N(0, noise_std^2 I)."""
    return _synthetic_dataset(
        "complex",
        prior,
        prior_options,
        {"prior": prior},
        seed=seed,
        latent_dim=latent_dim,
        obs_dim=obs_dim,
        noise_std=noise_std,
        sizes=(n_train, n_val, n_test),
        generator_seed=generator_seed,
        hidden_sizes=hidden_sizes,
    )
