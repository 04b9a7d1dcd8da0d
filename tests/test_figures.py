"""Figures of trained (here: freshly built) VAEs: every kind is written as a valid PNG for image,
colour, 2-D and flat data, with and without labels, and the 2-D view is a true PCA."""

from __future__ import annotations

import pytest
import torch

from edvae.config import validate_config
from edvae.data import DataSplits
from edvae.errors import EdvaeError
from edvae.figures import (
    FIGURE_KINDS,
    _aggregate_samples,
    _in_plane,
    comparison_figures,
    plot_aggregate_posterior,
    plot_reconstructions,
    write_figures,
)
from edvae.model import build_model

PNG = b"\x89PNG\r\n\x1a\n"


def _data(x_shape, likelihood="bernoulli", labels=True, n=60) -> DataSplits:
    gen = torch.Generator().manual_seed(0)
    parts = {}
    for split in ("train", "val", "test"):
        x = torch.rand((n, *x_shape), generator=gen)
        parts[split] = x if likelihood == "bernoulli" else 3 * x - 1
        parts[f"{split}_labels"] = torch.arange(n) % 10 if labels else None
    return DataSplits(name="toy", x_shape=x_shape, likelihood=likelihood, **parts)


def _model(data, latent_dim=8, network="mlp"):
    torch.manual_seed(0)
    return build_model(
        validate_config({"model": {"latent_dim": latent_dim, "hidden": [16], "network": network}}).model, data
    )


def _assert_pngs(paths):
    for path in paths:
        assert path.is_file() and path.stat().st_size > 1000
        assert path.read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    "x_shape, likelihood, labels, latent_dim, network",
    [
        ((1, 8, 8), "bernoulli", True, 8, "conv"),  # grey images, labels, PCA view
        ((3, 6, 6), "gaussian", False, 2, "mlp"),  # colour, continuous values, 2-D latent as is
        ((6, 7), "bernoulli", True, 3, "conv"),  # (H, W) images
        ((5,), "gaussian", True, 1, "mlp"),  # flat vectors, 1-D latent
    ],
)
def test_write_figures_writes_every_kind(tmp_path, x_shape, likelihood, labels, latent_dim, network):
    data = _data(x_shape, likelihood, labels)
    paths = write_figures(_model(data, latent_dim, network), data, tmp_path / "figs", prefix="toy-")
    assert [p.name for p in paths] == [f"toy-{kind}.png" for kind in FIGURE_KINDS]
    _assert_pngs(paths)


def test_comparison_figures_one_panel_per_model(tmp_path):
    data = _data((1, 8, 8))
    models = {"a": _model(data), "b": _model(data, latent_dim=4), "c": _model(data, network="conv")}
    paths = comparison_figures(models, data, tmp_path, prefix="digits-", n=6, samples=9, dims=3, steps=5)
    assert [p.name for p in paths] == [f"digits-{kind}.png" for kind in FIGURE_KINDS]
    _assert_pngs(paths)
    with pytest.raises(EdvaeError, match="at least one model"):
        comparison_figures({}, data, tmp_path)


def test_two_dimensional_view_is_the_principal_components_and_says_so():
    data = _data((1, 8, 8))
    with torch.inference_mode():
        z, labels = _aggregate_samples(_model(data, latent_dim=6), data, "test", 2000, 0)
        points, text = _in_plane(z)
    assert points.shape == (60, 2) and labels.tolist() == data.test_labels.tolist()
    assert "first two principal components" in text and "6-D" in text
    cov = torch.cov(torch.from_numpy(points).T)
    assert abs(float(cov[0, 1])) < 1e-8 * float(cov[0, 0]) + 1e-12 and float(cov[0, 0]) >= float(cov[1, 1])
    with torch.inference_mode():
        _, text = _in_plane(_aggregate_samples(_model(data, latent_dim=2), data, "test", 2000, 0)[0])
    assert "principal" not in text


def test_bad_figure_options_are_clear(tmp_path):
    data = _data((1, 8, 8))
    model = _model(data)
    with pytest.raises(EdvaeError, match="n must be an integer >= 1"):
        plot_reconstructions(model, data, tmp_path / "r.png", n=0)
    with pytest.raises(EdvaeError, match="split must be 'train', 'val' or 'test'"):
        plot_aggregate_posterior(model, data, tmp_path / "a.png", split="dev")
