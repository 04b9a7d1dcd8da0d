"""Figures of a trained VAE on image (or any) data: what a reader checks first.

Every function takes a trained :class:`~edvae.model.VAE`, the :class:`~edvae.data.DataSplits` it
was trained on and an output path, and writes one PNG (matplotlib's Agg canvas through the
object-oriented API: no pyplot, no change of the global backend):

* :func:`plot_reconstructions`: test inputs x (top row) next to E[x | z = mu(x)], the decoder
  mean at the posterior mean (below).
* :func:`plot_prior_samples`: E[x | z] for z ~ p(z), the model's own prior (learned or fixed).
* :func:`plot_traversals`: starting from the posterior mean of one test input, one latent
  coordinate at a time is swept over its range in the aggregate posterior (the 5 % to 95 %
  quantiles of mu_d(x) over the split); rows are the coordinates with the largest
  Var_x mu_d(x) (the most active units), columns the swept values.
* :func:`plot_aggregate_posterior`: one sample z ~ q(z|x) per example of the split, i.e.
  samples of the aggregate posterior q(z) = (1/N) sum_n q(z|x_n), coloured by label. With more
  than two latent dimensions the samples are projected on their first two principal
  components (the title says so and gives the share of variance they explain).

:func:`comparison_figures` draws the same four views with one panel per model, so that models
trained on the same data can be compared side by side (used by the ``real`` study).
:func:`draw_aggregate_posterior` draws the aggregate-posterior view from samples on any
matplotlib axes (also used by a study's report, :mod:`edvae.report`).

Image layout: ``x_shape`` ``(C, H, W)`` with C = 1 is drawn in grey, C = 3 in colour (other C:
the first channel); ``(H, W)`` in grey; a flat ``(D,)`` example as a one-pixel-high strip.
Bernoulli decoders are drawn through their mean sigmoid(logits) in [0, 1]; Gaussian data are
scaled by the training split's minimum and maximum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from edvae.data import DataSplits
from edvae.errors import EdvaeError, require_int
from edvae.model import VAE

__all__ = [
    "plot_reconstructions",
    "plot_prior_samples",
    "plot_traversals",
    "plot_aggregate_posterior",
    "draw_aggregate_posterior",
    "write_figures",
    "comparison_figures",
    "FIGURE_KINDS",
]

#: The figure kinds, in the order :func:`write_figures` and :func:`comparison_figures` write them.
FIGURE_KINDS = ("reconstructions", "samples", "traversals", "latent")

_PAD = 1  # pixels between tiles


# ----------------------------------------------------------------------------- image helpers
def _value_range(data: DataSplits) -> tuple[float, float]:
    if data.likelihood == "bernoulli":
        return 0.0, 1.0
    lo, hi = float(data.train.min()), float(data.train.max())
    return lo, hi if hi > lo else lo + 1.0


def _as_images(x: Tensor, data: DataSplits) -> np.ndarray:
    """``(N, *x_shape)`` values -> ``(N, H, W)`` grey or ``(N, H, W, 3)`` colour images in [0, 1]."""
    lo, hi = _value_range(data)
    a = ((x.detach().double().cpu() - lo) / (hi - lo)).clamp(0, 1).numpy()
    shape = data.x_shape
    if len(shape) == 1:
        return a.reshape(a.shape[0], 1, shape[0])
    if len(shape) == 2:
        return a
    a = a.reshape(a.shape[0], shape[0], -1, shape[-1]) if len(shape) > 3 else a
    if shape[0] == 3:
        return np.moveaxis(a, 1, -1)
    return a[:, 0]


def _mosaic(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Tile rows of images (each ``(n, H, W[, 3])``, same n) into one array with white gaps."""
    first = rows[0]
    n, h, w = first.shape[:3]
    colour = first.shape[3:]
    out = np.ones((len(rows) * (h + _PAD) - _PAD, n * (w + _PAD) - _PAD, *colour))
    for r, images in enumerate(rows):
        for c in range(images.shape[0]):
            out[r * (h + _PAD) : r * (h + _PAD) + h, c * (w + _PAD) : c * (w + _PAD) + w] = images[c]
    return out


def _show(ax: Any, mosaic: np.ndarray, row_names: Sequence[str], tile_height: int, title: str) -> None:
    ax.imshow(
        mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto" if tile_height == 1 else "equal"
    )
    ax.set_xticks([])
    ax.set_yticks(
        [r * (tile_height + _PAD) + tile_height / 2 - 0.5 for r in range(len(row_names))], row_names, fontsize=7
    )
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=8)


def _decoded_mean(model: VAE, z: Tensor) -> Tensor:
    return model.likelihood.mean(model.decode(z))


def _on_model(model: VAE, x: Tensor) -> Tensor:
    """``x`` on the model's device (the data stay on the CPU; the model may not)."""
    return x.to(next(model.parameters()).device)


def _split(data: DataSplits, split: str) -> tuple[Tensor, Tensor | None]:
    if split not in ("train", "val", "test"):
        raise EdvaeError(f"split must be 'train', 'val' or 'test', got {split!r}")
    return getattr(data, split), getattr(data, f"{split}_labels")


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------- drawers
def _draw_reconstructions(ax: Any, models: Mapping[str, VAE], data: DataSplits, *, n: int, split: str) -> None:
    x, _ = _split(data, split)
    x = x[:n]
    rows = [_as_images(x, data)]
    for model in models.values():
        rows.append(_as_images(_decoded_mean(model, model.encode(_on_model(model, x))[0]), data))
    names = ["input", *(f"{name}" if len(models) > 1 else "reconstruction" for name in models)]
    _show(ax, _mosaic(rows), names, rows[0].shape[1], f"{split} inputs and reconstructions E[x | z = mu(x)]")


def _prior_sample(model: VAE, n: int, seed: int) -> Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model.prior_distribution().sample((n,))


def _draw_samples(ax: Any, model: VAE, data: DataSplits, *, n: int, seed: int, title: str) -> None:
    images = _as_images(_decoded_mean(model, _prior_sample(model, n, seed)), data)
    per_row = max(1, math.ceil(math.sqrt(n)))
    rows = [images[i : i + per_row] for i in range(0, n, per_row)]
    if rows[-1].shape[0] < per_row:  # pad the last row with blank tiles
        blank = np.ones((per_row - rows[-1].shape[0], *images.shape[1:]))
        rows[-1] = np.concatenate([rows[-1], blank])
    _show(ax, _mosaic(rows), [""] * len(rows), images.shape[1], title)


def _draw_traversals(ax: Any, model: VAE, data: DataSplits, *, dims: int, steps: int, split: str, title: str) -> None:
    x, _ = _split(data, split)
    mu = model.encode(_on_model(model, x))[0]
    order = torch.argsort(mu.double().var(dim=0), descending=True)[: min(dims, mu.shape[1])]
    fractions = torch.linspace(0.05, 0.95, steps)
    rows, names = [], []
    for d in order.tolist():
        values = torch.quantile(mu[:, d].double(), fractions.double().to(mu.device)).to(mu.dtype)
        z = mu[:1].repeat(steps, 1)
        z[:, d] = values
        rows.append(_as_images(_decoded_mean(model, z), data))
        names.append(f"z{d}")
    _show(ax, _mosaic(rows), names, rows[0].shape[1], title)


def _aggregate_samples(
    model: VAE, data: DataSplits, split: str, max_points: int, seed: int
) -> tuple[Tensor, Tensor | None]:
    """One z ~ q(z|x) per example of the first ``max_points`` of ``split``, and their labels."""
    x, labels = _split(data, split)
    x = x[:max_points]
    mu, logvar = model.encode(_on_model(model, x))
    gen = torch.Generator().manual_seed(seed)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen).to(mu.device)
    return z, None if labels is None else labels[: x.shape[0]]


def _in_plane(z: Tensor) -> tuple[np.ndarray, str]:
    """Latent samples ``(N, D)`` as 2-D points and the axis text: as they are for D <= 2 (a 1-D
    latent on a horizontal line), else their first two principal components."""
    z = z.detach().double().cpu()
    dim = z.shape[1]
    if dim == 1:
        points = torch.cat([z, torch.zeros_like(z)], dim=1)
        text = "z (1-D latent; vertical axis unused)"
    elif dim == 2:
        points = z
        text = "z1, z2"
    else:
        centred = z - z.mean(0)
        _, s, v = torch.linalg.svd(centred, full_matrices=False)
        points = centred @ v[:2].T
        share = float((s[:2].square().sum() / s.square().sum()).clamp(max=1))
        text = f"first two principal components\nof the {dim}-D samples ({100 * share:.0f}% of variance)"
    return points.numpy(), text


def draw_aggregate_posterior(
    ax: Any,
    z: Tensor,
    labels: Tensor | None = None,
    *,
    title: str,
    prior_density: tuple[Tensor, Tensor] | None = None,
    legend: bool = True,
) -> None:
    """Draw samples z_n ~ q(z|x_n), one per example (samples of the aggregate posterior
    q(z) = (1/N) sum_n q(z|x_n)), on the matplotlib axes ``ax``, coloured by label.

    More than two latent dimensions are projected on their first two principal components
    (:func:`_in_plane`; the title says so). ``prior_density = (ticks, log_p)`` shades the prior
    density exp(log p(z)) under the points, ``log_p[i, j]`` at z = (ticks[i], ticks[j]) (2-D only).
    """
    points, text = _in_plane(z)
    if prior_density is not None and z.shape[1] == 2:
        ticks, log_p = (t.detach().double().cpu().numpy() for t in prior_density)
        ax.contourf(ticks, ticks, np.exp(log_p).T, levels=20, cmap="Blues")
    size = float(np.clip(3000 / len(points), 2, 10))  # larger markers for small splits
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.5, color="darkred", linewidths=0)
    else:
        label_values = labels.cpu().numpy()
        classes = np.unique(label_values)
        cmap = "tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "viridis"
        sc = ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.8, c=label_values, cmap=cmap, linewidths=0)
        if legend and len(classes) <= 20:
            handles, names = sc.legend_elements(num=list(classes))
            ax.legend(handles, names, fontsize=6, markerscale=0.6, loc="best", title="label", title_fontsize=6)
    in_latent = z.shape[1] == 2
    ax.set_xlabel("z[0] (latent units)" if in_latent else "principal component 1 of z (latent units)", fontsize=6)
    ax.set_ylabel("z[1] (latent units)" if in_latent else "principal component 2 of z (latent units)", fontsize=6)
    ax.tick_params(labelsize=5)
    ax.set_title(f"{title}\n{text}", fontsize=7)


def _draw_latent(
    ax: Any, model: VAE, data: DataSplits, *, split: str, max_points: int, seed: int, title: str, legend: bool = True
) -> None:
    z, labels = _aggregate_samples(model, data, split, max_points, seed)
    draw_aggregate_posterior(ax, z, labels, title=title, legend=legend)


# ----------------------------------------------------------------------------- one model
def plot_reconstructions(model: VAE, data: DataSplits, path: str | Path, *, n: int = 10, split: str = "test") -> Path:
    """The first ``n`` examples of ``split`` above their reconstructions E[x | z = mu(x)]."""
    require_int("n", n)
    model.eval()
    with torch.inference_mode():
        fig = _new_figure(max(3.0, 0.6 * n), 1.6)
        _draw_reconstructions(fig.add_subplot(), {"model": model}, data, n=n, split=split)
        return _save(fig, path)


def plot_prior_samples(model: VAE, data: DataSplits, path: str | Path, *, n: int = 64, seed: int = 0) -> Path:
    """E[x | z] for ``n`` codes z ~ p(z) drawn from the model's prior (seeded)."""
    require_int("n", n)
    model.eval()
    with torch.inference_mode():
        fig = _new_figure(4.0, 4.2)
        _draw_samples(fig.add_subplot(), model, data, n=n, seed=seed, title="samples E[x|z], z ~ p(z)")
        return _save(fig, path)


def plot_traversals(
    model: VAE, data: DataSplits, path: str | Path, *, dims: int = 8, steps: int = 9, split: str = "test"
) -> Path:
    """Sweep the ``dims`` most active latent coordinates of one input's posterior mean, ``steps`` values each."""
    require_int("dims", dims)
    require_int("steps", steps, 2)
    model.eval()
    with torch.inference_mode():
        fig = _new_figure(max(3.0, 0.5 * steps), 0.5 * min(dims, model.latent_dim) + 0.8)
        _draw_traversals(
            fig.add_subplot(),
            model,
            data,
            dims=dims,
            steps=steps,
            split=split,
            title="latent traversals (5%..95% quantiles of mu_d over the split)",
        )
        return _save(fig, path)


def plot_aggregate_posterior(
    model: VAE, data: DataSplits, path: str | Path, *, split: str = "test", max_points: int = 2000, seed: int = 0
) -> Path:
    """Samples of the aggregate posterior q(z) on ``split``, coloured by label; PCA to 2-D if D > 2."""
    require_int("max_points", max_points)
    model.eval()
    with torch.inference_mode():
        fig = _new_figure(4.2, 4.2)
        _draw_latent(
            fig.add_subplot(),
            model,
            data,
            split=split,
            max_points=max_points,
            seed=seed,
            title=f"aggregate posterior, {split} split",
        )
        return _save(fig, path)


def write_figures(model: VAE, data: DataSplits, out_dir: str | Path, *, prefix: str = "") -> list[Path]:
    """All four figures of one model as ``out_dir/{prefix}{kind}.png`` (kinds: :data:`FIGURE_KINDS`)."""
    out_dir = Path(out_dir)
    writers: dict[str, Callable[..., Path]] = {
        "reconstructions": plot_reconstructions,
        "samples": plot_prior_samples,
        "traversals": plot_traversals,
        "latent": plot_aggregate_posterior,
    }
    return [writers[kind](model, data, out_dir / f"{prefix}{kind}.png") for kind in FIGURE_KINDS]


# ----------------------------------------------------------------------------- several models
def comparison_figures(
    models: Mapping[str, VAE],
    data: DataSplits,
    out_dir: str | Path,
    *,
    prefix: str = "",
    n: int = 10,
    samples: int = 36,
    dims: int = 6,
    steps: int = 9,
    max_points: int = 2000,
    seed: int = 0,
) -> list[Path]:
    """The four views with one panel (or row) per model: ``out_dir/{prefix}{kind}.png``.

    Reconstructions share one mosaic (inputs on top, one row per model); samples, traversals
    and the aggregate posterior get one panel per model, in the order of ``models``.
    """
    if not models:
        raise EdvaeError("comparison_figures needs at least one model")
    out_dir = Path(out_dir)
    names = list(models)
    k = len(names)
    for model in models.values():
        model.eval()
    written = []
    with torch.inference_mode():
        fig = _new_figure(max(4.0, 0.55 * n + 1.2), 0.5 * (k + 1) + 0.6)
        _draw_reconstructions(fig.add_subplot(), models, data, n=n, split="test")
        written.append(_save(fig, out_dir / f"{prefix}reconstructions.png"))

        panels = {
            "samples": lambda ax, name: _draw_samples(
                ax, models[name], data, n=samples, seed=seed, title=f"{name}: z ~ p(z)"
            ),
            "traversals": lambda ax, name: _draw_traversals(
                ax, models[name], data, dims=dims, steps=steps, split="test", title=f"{name}: traversals"
            ),
            "latent": lambda ax, name: _draw_latent(
                ax,
                models[name],
                data,
                split="test",
                max_points=max_points,
                seed=seed,
                title=name,
                legend=name == names[0],
            ),
        }
        for kind in FIGURE_KINDS[1:]:
            cols = min(k, 3)
            n_rows = math.ceil(k / cols)
            height = 3.0 * min(dims, 64) / steps + 0.6 if kind == "traversals" else 3.1  # traversal panels are wide
            fig = _new_figure(3.0 * cols, height * n_rows)
            for i, name in enumerate(names):
                panels[kind](fig.add_subplot(n_rows, cols, i + 1), name)
            written.append(_save(fig, out_dir / f"{prefix}{kind}.png"))
    return written
