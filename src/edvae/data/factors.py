r"""Data with known, independent generating factors, made offline from a seed.

Every example is generated from a vector of factor values v = (v_1, ..., v_K) with independent
components, and the values are returned with the data (``DataSplits.{split}_factors``, columns
named by ``DataSplits.factor_names``), so that disentanglement metrics
(:mod:`edvae.disentanglement`) can compare a code with the truth.

* ``sprites`` (:func:`sprites_dataset`): binary images in the spirit of dSprites. Factors:
  shape (0 square, 1 ellipse, 2 heart), scale (``scales`` values in [0.5, 1]), orientation
  (``orientations`` values 2 pi k / orientations, k = 0 .. orientations - 1), position x and
  y (``positions`` values each in [0.2, 0.8], fractions of the image width). The ``n``
  examples are a seeded sample *without replacement* from the full factor grid (so the
  factors are independent up to the finite-population correction), split train/val/test.
  A shape of scale s at centre c and angle t covers the pixel centres p with
  R(-t) (p - c) / (0.16 s) inside the unit shape (square max(|u|, |v|) <= 0.8; ellipse
  u^2 + 4 v^2 <= 1; heart (X^2 + Y^2 - 1)^3 - X^2 Y^3 <= 0 with X = 1.15 u,
  Y = 1.15 v + 0.25). Pixels are 1 inside and 0 outside: Bernoulli likelihood, no
  binarisation. As in dSprites, symmetric shapes repeat their images along the orientation
  factor (the square every pi/2, the ellipse every pi); only the heart has a distinct image at
  every angle.
* ``nongaussian-factors`` (:func:`nongaussian_factors_dataset`): K independent factors of
  zero mean and unit variance from non-Gaussian families, cycled in the order ``uniform``
  (U(-sqrt 3, sqrt 3)), ``bimodal`` (+-sqrt(1 - 0.3^2) with equal probability plus
  N(0, 0.3^2)), ``laplace`` (scale 1/sqrt 2) and ``exponential`` (Exp(1) - 1), pushed through
  the fixed seeded injective map g of :class:`~edvae.data.synthetic.SyntheticGenerator`:
  x = g(v) + N(0, noise_std^2 I). A model with a N(0, I) prior is misspecified on these data.
  Gaussian likelihood.

As in :mod:`edvae.data.synthetic`, the map g is fixed by ``generator_seed`` (part of the data
set's definition) and ``seed`` draws the examples; the splits use independent streams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from edvae.data.splits import SPLIT_NAMES, DataSplits, check_split, derive_seed, split_sizes
from edvae.data.synthetic import GENERATOR_SEED, SyntheticGenerator
from edvae.errors import EdvaeError, require_int

__all__ = [
    "FACTOR_FAMILIES",
    "SPRITE_FACTORS",
    "SPRITE_SHAPES",
    "nongaussian_factors_dataset",
    "render_sprites",
    "sample_factors",
    "sprite_factor_values",
    "sprites_dataset",
]

SPRITE_SHAPES = ("square", "ellipse", "heart")
SPRITE_FACTORS = ("shape", "scale", "orientation", "position_x", "position_y")
FACTOR_FAMILIES = ("uniform", "bimodal", "laplace", "exponential")

_HALF_WIDTH = 0.16  # half-size of a shape of scale 1, as a fraction of the image
_POSITION_RANGE = (0.2, 0.8)  # shape centres stay inside the image at every scale and angle
_BIMODAL_SPREAD = 0.3
_RENDER_CHUNK = 2048


def sprite_factor_values(scales: int, orientations: int, positions: int) -> tuple[Tensor, ...]:
    """The values of each sprite factor, in :data:`SPRITE_FACTORS` order (float32 tensors)."""
    low, high = _POSITION_RANGE
    return (
        torch.arange(len(SPRITE_SHAPES), dtype=torch.float32),
        torch.linspace(0.5, 1.0, scales),
        torch.arange(orientations, dtype=torch.float32) * (2 * math.pi / orientations),
        torch.linspace(low, high, positions),
        torch.linspace(low, high, positions),
    )


def render_sprites(factors: Tensor, size: int) -> Tensor:
    """Binary float32 images (N, 1, size, size) of sprites with factor values ``factors`` (N, 5).

    Columns as in :data:`SPRITE_FACTORS` (shape index, scale, angle in radians, centre x and y as
    fractions of the width); see the module docstring for the shapes. Pixel (row r, column c)
    has centre ((c + 1/2)/size, (r + 1/2)/size).
    """
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    chunks = []
    for part in factors.to(torch.float64).split(_RENDER_CHUNK):
        shape, scale, angle, cx, cy = (col[:, None, None] for col in part.unbind(1))
        dx = centres[None, None, :] - cx
        dy = cy - centres[None, :, None]  # image rows grow downwards; v points up
        cos, sin = torch.cos(angle), torch.sin(angle)
        half = _HALF_WIDTH * scale
        u = (cos * dx + sin * dy) / half
        v = (cos * dy - sin * dx) / half
        square = torch.maximum(u.abs(), v.abs()) <= 0.8
        ellipse = u.square() + 4 * v.square() <= 1
        x, y = 1.15 * u, 1.15 * v + 0.25
        heart = (x.square() + y.square() - 1) ** 3 - x.square() * y**3 <= 0
        image = torch.where(shape == 0, square, torch.where(shape == 1, ellipse, heart))
        chunks.append(image.to(torch.float32)[:, None])
    return torch.cat(chunks) if chunks else torch.zeros(0, 1, size, size)


def sprites_dataset(
    *,
    seed: int,
    size: int = 32,
    n: int = 10_000,
    scales: int = 6,
    orientations: int = 40,
    positions: int | None = None,
    split: Sequence[float] = (0.8, 0.1, 0.1),
) -> DataSplits:
    """dSprites-like binary images of ``size`` x ``size`` (e.g. 32, or 64 as in dSprites).

    ``n`` examples drawn without replacement from the grid of 3 shapes x ``scales`` x
    ``orientations`` x ``positions`` x ``positions`` (``positions`` defaults to size // 2),
    split into train/val/test by ``split``; the factor values are in ``{split}_factors``.
    """
    name = "sprites"
    size = require_int(f"dataset '{name}': option size", size, 8)
    scales = require_int(f"dataset '{name}': option scales", scales, 1)
    orientations = require_int(f"dataset '{name}': option orientations", orientations, 1)
    positions = require_int(f"dataset '{name}': option positions", size // 2 if positions is None else positions, 1)
    values = sprite_factor_values(scales, orientations, positions)
    counts = [len(v) for v in values]
    grid = math.prod(counts)
    n = require_int(f"dataset '{name}': option n", n, 3)
    if n > grid:
        raise EdvaeError(
            f"dataset 'sprites': n={n} exceeds the {grid} distinct images of the factor grid "
            f"{' x '.join(map(str, counts))}; lower n or raise scales/orientations/positions"
        )
    fractions = check_split(split, f"dataset '{name}'")
    sizes = split_sizes(n, fractions, f"dataset '{name}'")
    generator = torch.Generator().manual_seed(derive_seed(seed, name, "grid"))
    flat = torch.randperm(grid, generator=generator)[:n]
    columns = []
    for count, value in zip(reversed(counts), reversed(values), strict=True):  # mixed-radix digits of flat
        columns.append(value[flat % count])
        flat = flat // count
    factors = torch.stack(columns[::-1], dim=1)
    parts: dict[str, Any] = {}
    start = 0
    for split_name, rows in zip(SPLIT_NAMES, sizes, strict=True):
        part = factors[start : start + rows]
        start += rows
        parts[split_name] = render_sprites(part, size)
        parts[f"{split_name}_factors"] = part.contiguous()
    info = {
        "seed": seed,
        "size": size,
        "factor_sizes": dict(zip(SPRITE_FACTORS, counts, strict=True)),
        "split": tuple(fractions),
    }
    return DataSplits(
        name=name,
        x_shape=(1, size, size),
        likelihood="bernoulli",
        binarize="none",
        factor_names=SPRITE_FACTORS,
        info=info,
        **parts,
    )


def sample_factors(n: int, families: Sequence[str], generator: torch.Generator) -> Tensor:
    """n draws (n, K) of independent zero-mean unit-variance factors of the given families
    (:data:`FACTOR_FAMILIES`; see the module docstring), by inverse transforms of uniforms."""
    u = torch.rand(n, len(families), generator=generator, dtype=torch.float64)
    noise = torch.randn(n, len(families), generator=generator, dtype=torch.float64)
    u = u.clamp(1e-12, 1 - 1e-12)
    columns = []
    for k, family in enumerate(families):
        uk = u[:, k]
        if family == "uniform":
            col = math.sqrt(3.0) * (2 * uk - 1)
        elif family == "bimodal":
            mode = math.sqrt(1 - _BIMODAL_SPREAD**2)
            col = torch.where(uk < 0.5, -mode, mode) + _BIMODAL_SPREAD * noise[:, k]
        elif family == "laplace":
            col = -torch.sign(uk - 0.5) * torch.log1p(-2 * (uk - 0.5).abs()) / math.sqrt(2.0)
        elif family == "exponential":
            col = -torch.log1p(-uk) - 1
        else:
            raise EdvaeError(f"unknown factor family {family!r}; choose from {', '.join(FACTOR_FAMILIES)}")
        columns.append(col)
    return torch.stack(columns, dim=1).to(torch.float32)


def nongaussian_factors_dataset(
    *,
    seed: int,
    n_factors: int = 4,
    obs_dim: int = 16,
    noise_std: float = 0.1,
    n_train: int = 10_000,
    n_val: int = 2_000,
    n_test: int = 2_000,
    generator_seed: int = GENERATOR_SEED,
) -> DataSplits:
    """x = g(v) + N(0, noise_std^2 I) with ``n_factors`` independent non-Gaussian factors v."""
    name = "nongaussian-factors"
    n_factors = require_int(f"dataset '{name}': option n_factors", n_factors, 1)
    obs_dim = require_int(f"dataset '{name}': option obs_dim", obs_dim, n_factors + 1)
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not noise_std >= 0:
        raise EdvaeError(f"dataset '{name}': option noise_std must be a number >= 0, got {noise_std!r}")
    families = [FACTOR_FAMILIES[k % len(FACTOR_FAMILIES)] for k in range(n_factors)]
    g = SyntheticGenerator(n_factors, obs_dim, seed=generator_seed)
    parts: dict[str, Any] = {}
    for split_name, count in zip(SPLIT_NAMES, (n_train, n_val, n_test), strict=True):
        count = require_int(f"dataset '{name}': option n_{split_name}", count, 1)
        generator = torch.Generator().manual_seed(derive_seed(seed, name, split_name))
        v = sample_factors(count, families, generator)
        noise = torch.randn(count, obs_dim, generator=generator)
        with torch.no_grad():
            parts[split_name] = (g(v) + float(noise_std) * noise).contiguous()
        parts[f"{split_name}_factors"] = v
    return DataSplits(
        name=name,
        x_shape=(obs_dim,),
        likelihood="gaussian",
        binarize="none",
        factor_names=tuple(f"{family}_{k}" for k, family in enumerate(families)),
        info={"seed": seed, "generator_seed": generator_seed, "families": tuple(families)},
        **parts,
    )
