"""Shared fixtures: tiny configurations that train in a second or two."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)

#: The priors edvae registers itself, read before any test module registers one of its own.
BUILTIN_PRIORS: tuple[str, ...] = tuple(__import__("edvae.priors", fromlist=["names"]).names())


def tiny_raw(**sections: Any) -> dict[str, Any]:
    """A raw run config small enough for unit tests, with section overrides merged in."""
    from edvae.experiments.variants import merge

    base = {
        "name": "tiny",
        "data": {"name": "complex", "options": {"n_train": 512, "n_val": 256, "n_test": 256}},
        "model": {"latent_dim": 2, "hidden": [32, 32], "prior": "true"},
        "objective": {"kind": "ed"},
        "train": {"epochs": 3, "batch_size": 64, "lr": 3e-3, "progress": False, "log_every": 2},
        "eval": {"iwae_samples": 50},
    }
    return merge(base, sections)


@pytest.fixture
def tiny_config():
    from edvae.config import validate_config

    def make(**sections: Any):
        return validate_config(tiny_raw(**sections))

    return make


@pytest.fixture
def poison_objective(monkeypatch):
    """``poison_objective(term, bad)`` makes ``term`` (and the loss) NaN at the training steps
    where ``bad(step)``; returns the step counter ``{"n": ...}`` so a test can reset it.

    It registers, for every objective kind, a subclass whose call poisons the real result
    (the registry :data:`edvae.objective_kinds.OBJECTIVES` is the extension point)."""

    def apply(term, bad):
        from edvae.objective_kinds import OBJECTIVES
        from edvae.objectives import Objective

        calls = {"n": 0}

        def poisoned(cls):
            class Poisoned(cls):
                def __call__(self, *args, **options):
                    obj = super().__call__(*args, **options)
                    if torch.is_grad_enabled():
                        calls["n"] += 1
                        if bad(calls["n"]):
                            return Objective(
                                obj.loss * float("nan"), dict(obj.terms, **{term: torch.tensor(float("nan"))})
                            )
                    return obj

            return Poisoned

        monkeypatch.setattr(OBJECTIVES, "_entries", dict(OBJECTIVES._entries))  # restored after the test
        for kind, cls in OBJECTIVES.items():
            OBJECTIVES.add(kind, poisoned(cls), replace=True)
        return calls

    return apply


def run_small_study(study: Any, keep: set[tuple[str, str]], out_dir: Any, metrics: list[str]) -> dict[str, Any]:
    """Run the (data set, model) pairs ``keep`` of ``study`` in one process and check that every
    record holds a finite value of each of ``metrics``; returns results.json's content."""
    import math

    from edvae.experiments import run_study

    study.runs = [r for r in study.runs if (r.dataset, r.model) in keep]
    result = run_study(study, out_dir, workers=1, progress=False)
    assert len(result["records"]) == len(keep)
    for record in result["records"]:
        for metric in metrics:
            assert math.isfinite(record["metrics"][metric]), (record["model"], metric)
    return result
