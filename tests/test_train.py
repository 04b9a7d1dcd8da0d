"""The training loop: it learns, it logs every term, it checkpoints, it resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from edvae.checkpoint import load_checkpoint
from edvae.errors import EdvaeError, TrainingError
from edvae.evaluate import evaluate_run
from edvae.train import train


def _params(run_dir):
    return load_checkpoint(run_dir)["model"]


def test_training_improves_the_validation_elbo_and_logs_every_term(tmp_path, tiny_config):
    cfg = tiny_config(train={"epochs": 4})
    result = train(cfg, tmp_path / "run")
    assert result.completed and result.epoch == 4 and result.step == 4 * (512 // 64)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert len(val) == 4
    assert val[-1]["elbo_mc"] > val[0]["elbo_mc"]
    train_rows = [r for r in rows if r["split"] == "train"]
    for term in ("reconstruction", "mi", "entropy", "cross_entropy", "loss"):
        assert term in train_rows[0]
    assert any((tmp_path / "run" / "tensorboard").iterdir())


@pytest.mark.parametrize("stop_at", [3, 8, 13])
def test_resume_is_bit_exact(tmp_path, tiny_config, stop_at):
    """Stopped at an arbitrary step (mid-epoch or on an epoch boundary) and resumed, a run ends
    with parameters and logs identical to an uninterrupted one."""
    cfg = tiny_config(objective={"kind": "elbo", "kl": "mc"}, train={"epochs": 3, "log_every": 3})
    straight = train(cfg, tmp_path / "straight")
    partial = train(cfg, tmp_path / "resumed", stop_at_step=stop_at)
    assert partial.stopped_by == "stop_at_step" and partial.step == stop_at
    resumed = train(cfg, tmp_path / "resumed", resume=True)
    assert resumed.step == straight.step
    a, b = _params(tmp_path / "straight"), _params(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a = (tmp_path / "straight" / "metrics.jsonl").read_text()
    log_b = (tmp_path / "resumed" / "metrics.jsonl").read_text()
    assert log_a == log_b


def test_resume_is_bit_exact_for_the_ed_objective_with_periodic_checkpoints(tmp_path, tiny_config):
    cfg = tiny_config(train={"epochs": 2, "checkpoint_every": 5})
    train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "resumed", stop_at_step=11)
    train(cfg, tmp_path / "resumed", resume=True)
    a, b = _params(tmp_path / "straight"), _params(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_to_overwrite_another_run(tmp_path, tiny_config):
    cfg = tiny_config(train={"epochs": 1})
    train(cfg, tmp_path / "run")
    with pytest.raises(EdvaeError, match="already holds a run"):
        train(cfg, tmp_path / "run")
    train(cfg, tmp_path / "run", overwrite=True)


def test_non_finite_loss_stops_naming_the_term_and_keeps_the_last_good_checkpoint(tmp_path, tiny_config, poison_objective):
    cfg = tiny_config(train={"epochs": 3, "checkpoint_every": 4})
    poison_objective("cross_entropy", lambda step: step > 10)
    with pytest.raises(TrainingError, match=r"cross_entropy.*step 11"):
        train(cfg, tmp_path / "run")
    saved = load_checkpoint(tmp_path / "run")
    assert saved["step"] == 8  # the last checkpoint before the failure
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


def test_non_finite_steps_can_be_skipped(tmp_path, tiny_config, monkeypatch, poison_objective):
    cfg = tiny_config(train={"epochs": 1, "on_nonfinite": "skip"})
    poison_objective("cross_entropy", lambda step: step in (2, 5))
    result = train(cfg, tmp_path / "run")
    assert result.completed and result.skipped_steps == 2
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path / "run")["model"].values())
    monkeypatch.undo()
    poison_objective("cross_entropy", lambda step: step > 5)
    with pytest.raises(TrainingError, match="in a row"):
        train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 20})}), tmp_path / "run2")


@pytest.mark.parametrize("clip", [None, 1.0])
def test_a_non_finite_gradient_under_a_finite_loss_is_caught(tmp_path, tiny_config, clip):
    """A NaN or Inf that appears only in backward (the loss is finite) stops the run naming the
    gradient, or is skipped without touching the parameters, with and without clipping."""
    calls = {"n": 0}
    bad_steps = {3, 4}

    class PoisonGradient:  # a callback: the hook goes on the model the trainer built
        def on_train_start(self, trainer):
            def poison(grad):
                calls["n"] += 1
                return grad * float("inf") if calls["n"] in bad_steps else grad

            trainer.model.decoder.net[-1].bias.register_hook(poison)

    cfg = tiny_config(train={"epochs": 1, "grad_clip": clip})
    with pytest.raises(TrainingError, match="the gradient became non-finite at step 3"):
        train(cfg, tmp_path / "stop", callbacks=[PoisonGradient()])
    calls["n"] = 0
    skip = cfg.model_copy(update={"train": cfg.train.model_copy(update={"on_nonfinite": "skip"})})
    result = train(skip, tmp_path / "skip", callbacks=[PoisonGradient()])
    assert result.completed and result.skipped_steps == 2
    assert all(torch.isfinite(v).all() for v in _params(tmp_path / "skip").values())


def test_evaluate_reports_consistent_bounds(tmp_path, tiny_config):
    cfg = tiny_config(train={"epochs": 2})
    train(cfg, tmp_path / "run")
    m = evaluate_run(tmp_path / "run")
    assert m["iwae"] >= m["elbo"] - 0.05
    assert m["kl"] >= 0
    assert 0 <= m["mi"] <= torch.log(torch.tensor(256.0)).item() + 1e-6
    assert m["ll_gap"] >= -0.1
    # ELBO surgery: elbo = reconstruction - mi - marginal KL, up to Monte-Carlo error.
    assert abs(m["elbo"] - (m["reconstruction"] - m["mi"] - m["marginal_kl"])) < 0.1 * abs(m["elbo"]) + 0.5


def test_a_validation_split_smaller_than_one_batch_is_still_validated(tmp_path, tiny_config):
    cfg = tiny_config(data={"options": {"n_val": 40}}, train={"epochs": 1, "batch_size": 64})
    result = train(cfg, tmp_path / "run")
    assert "loss" in result.last_validation
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows].count("val") == 1
