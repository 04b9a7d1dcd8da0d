"""The convergence criterion on constructed validation histories and on a real run's log."""

from __future__ import annotations

import json
import math

import pytest

from edvae.convergence import CONVERGENCE_TOL, convergence, validation_elbos


def test_a_plateau_converges_and_a_climb_does_not() -> None:
    plateau = [1 - math.exp(-e / 3) for e in range(100)]  # gains ~1e-13 nats over the last tenth
    assert convergence(plateau)["converged"]
    climb = [0.05 * e for e in range(100)]  # still gains 0.05 nats per epoch
    result = convergence(climb)
    assert not result["converged"] and result["window"] == 10
    assert result["improvement"] == pytest.approx(0.05 * 99 - 0.05 * 89)


def test_the_threshold_is_the_gain_of_the_best_value() -> None:
    history = [0.0] * 18 + [0.0, CONVERGENCE_TOL * 0.9]
    assert convergence(history) == {"converged": True, "improvement": pytest.approx(CONVERGENCE_TOL * 0.9), "window": 2}
    history[-1] = CONVERGENCE_TOL * 1.1
    assert not convergence(history)["converged"]
    assert convergence([5.0, 4.0, 3.0])["converged"]  # getting worse is not getting better
    assert not convergence([1.0])["converged"] and convergence([])["window"] == 0


def test_validation_elbos_reads_the_last_record_of_each_epoch(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    records = [
        {"split": "train", "step": 1, "epoch": 1, "elbo": -9.0},
        {"split": "val", "step": 2, "epoch": 1, "elbo": -3.0},
        {"split": "val", "step": 4, "epoch": 2, "elbo_mc": -2.0},
        {"split": "val", "step": 4, "epoch": 2, "elbo_mc": -1.5},  # written again after a resume
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert validation_elbos(path) == [-3.0, -1.5]


def test_a_trained_run_logs_one_validation_elbo_per_epoch(tiny_config, tmp_path) -> None:
    from edvae.training import train

    cfg = tiny_config(train={"epochs": 4})
    train(cfg, tmp_path / "run")
    elbos = validation_elbos(tmp_path / "run" / "metrics.jsonl")
    assert len(elbos) == 4 and all(math.isfinite(v) for v in elbos)
