"""The disentanglement study and the evaluation's metrics on data with known factors."""

from __future__ import annotations

import math

import torch
from torch.distributions import Independent, Normal

from conftest import run_small_study
from edvae.evaluate import disentanglement_metrics
from edvae.experiments import STUDIES, get_study
from edvae.experiments.disentangle import METRICS, MODELS


def test_the_study_builds_every_model_on_both_data_sets_with_the_presets():
    assert "disentangle" in STUDIES
    study = get_study("disentangle", seeds=2)
    assert study.reference == "vae" and study.extra_figures is not None
    assert len(study.runs) == 2 * 2 * len(MODELS)
    assert {spec.dataset for spec in study.runs} == {"sprites", "nongaussian-factors"}
    objectives = {spec.model: spec.config.objective for spec in study.runs}
    assert objectives["vae"].kind == "elbo"
    assert (objectives["beta-vae"].kind, objectives["beta-vae"].kl_weight) == ("beta-vae", 4.0)
    tcvae = objectives["beta-tcvae"]
    assert (tcvae.mi_weight, tcvae.tc_weight, tcvae.dimwise_kl_weight, tcvae.entropy_estimator) == (
        1.0,
        6.0,
        1.0,
        "mss",
    )
    assert all(spec.config.model.prior == "normal" for spec in study.runs)
    quick = get_study("disentangle", quick=True, overrides={"train": {"epochs": 2}})
    assert len(quick.runs) == 2 * 2 * len(MODELS) and all(s.config.train.epochs == 2 for s in quick.runs)


def test_disentanglement_metrics_of_a_code_that_copies_the_factors_and_of_noise():
    """A code whose dimension j is factor j plus narrow noise scores high; a code of pure noise
    scores near 0; the TC of independent dimensions is near 0 and their dimension-wise KL is
    that of N(0, 1) posteriors means against N(0, 1) (the aggregate has variance 1 + s^2)."""
    gen = torch.Generator().manual_seed(0)
    n, k = 600, 3
    factors = torch.randint(0, 4, (n, k), generator=gen).float()
    standard = (factors - 1.5) / math.sqrt(1.25)
    logvar = torch.full((n, k), math.log(0.05**2))
    prior = Independent(Normal(torch.zeros(k), torch.ones(k)), 1)
    copy = disentanglement_metrics(standard, logvar, factors, prior, seed=1)
    noise = disentanglement_metrics(torch.randn(n, k, generator=gen), torch.zeros(n, k), factors, prior, seed=1)
    assert copy["mig"] > 0.8 and copy["dci"] > 0.8
    assert noise["mig"] < 0.1 and noise["dci"] < copy["dci"] - 0.3
    assert abs(noise["tc"]) < 0.1 and set(copy) == {"mig", "dci", "dci_completeness", "tc", "dimwise_kl"}


def test_a_tiny_disentangle_study_runs_end_to_end(tmp_path):
    tiny = {"model": {"hidden": [16]}, "train": {"epochs": 1}, "eval": {"iwae_samples": 4}}
    study = get_study("disentangle", seeds=1, overrides=tiny)
    keep = {("sprites", "beta-tcvae"), ("nongaussian-factors", "vae"), ("nongaussian-factors", "beta-vae")}
    for spec in study.runs:  # smaller data sets
        options = {"n": 600} if spec.dataset == "sprites" else {"n_train": 400, "n_val": 100, "n_test": 200}
        spec.config = spec.config.model_copy(
            update={"data": spec.config.data.model_copy(update={"options": {**spec.config.data.options, **options}})}
        )
    run_small_study(study, keep, tmp_path, METRICS)
    md = (tmp_path / "results.md").read_text()
    assert "| model | mig | dci |" in md
    png = tmp_path / "figures" / "sprites-traversals.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
