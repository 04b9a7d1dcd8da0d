"""The Python API: edvae.fit on an array, Run.evaluate / Run.decompose, edvae.load round trips."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import edvae
from edvae.errors import EdvaeError

ROOT = Path(__file__).resolve().parents[1]
FAST = {"train.batch_size": 64, "train.progress": False, "model.hidden": [16, 16], "eval.iwae_samples": 20}


@pytest.fixture(scope="module")
def array() -> np.ndarray:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 2))
    return (np.tanh(z @ rng.normal(size=(2, 6))) + 0.1 * rng.normal(size=(400, 6))).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(array, tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "mine"
    return edvae.fit(array, out=out, prior="mixture", objective="ed", epochs=2, overrides=FAST)


def test_import_edvae_stays_torch_free_and_exports_the_api_lazily():
    code = (
        "import sys, edvae; assert 'torch' not in sys.modules; edvae.fit; assert 'torch' in sys.modules; "
        "print(edvae.Run.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "Run", done.stderr


def test_fit_trains_on_the_array_and_evaluate_matches_the_cli(fitted, array):
    from typer.testing import CliRunner

    from edvae.cli import app

    assert fitted.config.model.prior == "mixture" and fitted.config.objective.kind == "ed"
    assert fitted.config.train.epochs == 2 and fitted.config.train.batch_size == 64
    splits = fitted.data
    assert splits.train.shape[0] + splits.val.shape[0] + splits.test.shape[0] == 400
    rows = {tuple(r) for r in np.round(array, 6).tolist()}
    assert all(tuple(r) in rows for r in np.round(splits.test.numpy(), 6).tolist())  # the user's rows
    metrics = fitted.evaluate()
    result = CliRunner().invoke(app, ["evaluate", str(fitted.dir), "--json"])
    assert result.exit_code == 0, result.stderr
    cli = json.loads(result.stdout)
    assert set(cli) == set(metrics)
    assert all(cli[k] == pytest.approx(metrics[k], rel=1e-12, nan_ok=True) for k in metrics if k != "train_seconds")
    assert fitted.evaluate(iwae_samples=5)["iwae"] != metrics["iwae"]
    with pytest.raises(EdvaeError, match="iwae_samples"):
        fitted.evaluate(iwae_samples=0)


def test_decompose_is_the_full_data_set_decomposition_and_load_gives_the_same_run(fitted):
    terms = fitted.decompose()
    assert set(terms) == {"mi", "entropy", "cross_entropy", "marginal_kl", "kl", "posterior_entropy"}
    assert terms["marginal_kl"] == pytest.approx(terms["cross_entropy"] - terms["entropy"], abs=1e-5)
    # the unbiased full-data-set estimate of I(x; z) <= log N can read a hair below 0 for a collapsed posterior
    assert -0.02 <= terms["mi"] <= np.log(fitted.data.test.shape[0]) + 1e-6
    from edvae.estimators import dataset_decomposition

    with torch.inference_mode():
        mu, logvar = fitted.model.encode(fitted.data.test)
        direct = dataset_decomposition(
            mu, logvar, fitted.model.prior_distribution(), generator=torch.Generator().manual_seed(0)
        )
    assert terms == {k: float(getattr(direct, k)) for k in terms}
    # mean KL(q(z|x) || p(z)) = I + KL(q(z) || p(z)), up to the Monte-Carlo error of one draw per example
    assert terms["mi"] + terms["marginal_kl"] == pytest.approx(terms["kl"], abs=0.5)
    again = edvae.load(fitted.dir)
    assert again.config == fitted.config
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.model.state_dict().values(), fitted.model.state_dict().values(), strict=True)
    )
    assert again.decompose() == terms
    assert again.decompose(fitted.data.test) == terms  # x given explicitly: the same rows, the same draws
    with pytest.raises(EdvaeError, match=r"x must have shape \(N, \*\(6,\)\)"):
        again.decompose(np.zeros((10, 5)))


def test_objectives_and_overrides_in_every_form(array, tmp_path):
    run = edvae.fit(
        array,
        out=tmp_path / "vae",
        objective="vae",
        epochs=1,
        overrides=[f"{k}={json.dumps(v)}" for k, v in FAST.items()],
    )
    assert run.config.objective.kind == "elbo" and run.config.model.prior == "normal"
    run = edvae.fit(
        array, out=tmp_path / "w", objective={"kind": "ed", "entropy_weight": 1.5}, epochs=1, overrides=FAST
    )
    assert run.config.objective.entropy_weight == 1.5
    with pytest.raises(EdvaeError, match="unknown objective 'nope'; use one of"):
        edvae.fit(array, out=tmp_path / "x", objective="nope")
    with pytest.raises(EdvaeError, match="already holds a run"):
        edvae.fit(array, out=tmp_path / "w", epochs=1, overrides=FAST)


def test_a_distribution_prior_is_trained_saved_and_needs_the_object_to_load(array, tmp_path):
    prior = torch.distributions.Independent(torch.distributions.Laplace(torch.zeros(3), torch.ones(3)), 1)
    labels = (array[:, 0] > 0).astype(np.int64)
    run = edvae.fit((torch.from_numpy(array), labels), out=tmp_path / "laplace", prior=prior, epochs=1, overrides=FAST)
    assert run.config.model.latent_dim == 3  # from the prior's dimension
    assert run.model.prior_distribution().log_prob(torch.zeros(3)) == pytest.approx(
        float(prior.log_prob(torch.zeros(3)))
    )
    assert 0 <= run.evaluate()["probe_accuracy"] <= 1  # the labels reached the evaluation
    code = f"import edvae; edvae.load({str(run.dir)!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (
        done.returncode != 0 and "pass an object of the same kind again: edvae.load(run_dir, prior=...)" in done.stderr
    )
    code = (
        "import torch, edvae; d = torch.distributions.Independent(torch.distributions.Laplace(torch.zeros(3), "
        "torch.ones(3)), 1); "
        f"print(edvae.load({str(run.dir)!r}, prior=d).decompose()['kl'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == pytest.approx(run.decompose()["kl"], rel=1e-6)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros(10), r"x must have shape \(N, features...\)"),
        (np.array([[1.0, np.nan]] * 10), "contains NaN"),
        (np.array([["a", "b"]] * 10), "x must hold real numbers"),
        ((np.zeros((10, 2)), np.zeros(9)), "labels must be 10 whole numbers"),
        ((np.zeros((10, 2)),), "a pair"),
    ],
)
def test_bad_arrays_are_one_line_errors(x, message, tmp_path):
    with pytest.raises(EdvaeError, match=message) as info:
        edvae.fit(x, out=tmp_path / "bad", epochs=1, overrides=FAST)
    assert "\n" not in str(info.value)


def test_bad_arguments_are_one_line_errors(array, tmp_path):
    for kwargs, message in [
        ({"out": ""}, "out must be a non-empty folder path"),
        ({"out": tmp_path / "a", "prior": "nope"}, "unknown prior name 'nope'"),
        ({"out": tmp_path / "a", "overrides": {"train.nope": 1}}, "unknown config key 'train.nope'"),
        ({"out": tmp_path / "a", "overrides": "train.epochs=2"}, "overrides must be a dict"),
        ({"out": tmp_path / "a", "epochs": 0}, "invalid value for 'train.epochs'"),
        ({"out": tmp_path / "a", "likelihood": "bernoulli"}, "outside \\[0, 1\\]"),
    ]:
        with pytest.raises(EdvaeError, match=message):
            edvae.fit(array, **{"epochs": 1, "overrides": FAST, **kwargs})


def test_the_readme_example_runs(tmp_path, monkeypatch):
    """The README's "Train on your own array" block, executed as written (fewer epochs)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Train on your own array from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "edvae.fit(" in code and len(code.strip().splitlines()) <= 8
    code = code.replace("epochs=20", "epochs=1")
    assert "epochs=1" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "mine" / "checkpoint.pt").is_file()
    assert edvae.load(tmp_path / "runs" / "mine").config.model.prior == "mixture"


def test_accelerator_reaches_training_and_evaluation(fitted, array, tmp_path, monkeypatch):
    """``fit(accelerator=)`` is train.accelerator (an unknown value or a missing GPU is one
    EdvaeError); ``Run.evaluate(accelerator=)`` evaluates there, the CPU's numbers unchanged."""
    import edvae.accelerator

    with pytest.raises(EdvaeError, match="train.accelerator"):
        edvae.fit(array, out=tmp_path / "bad", epochs=1, overrides=FAST, accelerator="tpu")
    if not edvae.accelerator.gpu_available():
        with pytest.raises(EdvaeError, match="torch sees no GPU"):
            edvae.fit(array, out=tmp_path / "gpu", epochs=1, overrides=FAST, accelerator="gpu")
        with pytest.raises(EdvaeError, match="torch sees no GPU"):
            fitted.evaluate(accelerator="gpu")
    monkeypatch.setattr(edvae.accelerator, "gpu_available", lambda: True)  # auto must still pick the CPU here
    run = edvae.fit(array, out=tmp_path / "auto", epochs=1, overrides=FAST, accelerator="auto")
    assert run.config.train.accelerator == "auto"
    assert fitted.evaluate(accelerator="cpu") == fitted.evaluate()
    monkeypatch.setattr(edvae.accelerator, "AUTO_GPU_MIN_MACS", 10**15)  # evaluation's pass is large: raise the bar
    assert fitted.evaluate(accelerator="auto") == fitted.evaluate()
