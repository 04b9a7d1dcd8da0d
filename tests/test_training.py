"""The trainer's extension points (:mod:`edvae.training`) and the objective registry
(:mod:`edvae.objective_kinds`): callbacks, gradient accumulation, the state that is the
checkpoint, and objective kinds added from outside."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from edvae.checkpoint import load_checkpoint
from edvae.errors import EdvaeError
from edvae.model import ModelOutput
from edvae.objective_kinds import OBJECTIVES, ELBOObjective, TrainingObjective, build_objective, register_objective
from edvae.train import METRICS_NAME, train
from edvae.training import TrainState

STEPS_PER_EPOCH = 512 // 64  # tiny_raw: 512 training examples, batch 64


class StepCounter:
    """Records every (step, objective) that ``on_step_end`` receives."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: dict[int, float] = {}

    def on_step_end(self, step, objective):
        self.steps.append(step)
        self.losses[step] = float(objective.terms["loss"])


def test_a_callback_sees_every_step_once_across_a_resume(tmp_path, tiny_config):
    cfg = tiny_config(train={"epochs": 3, "log_every": 3})
    first, second = StepCounter(), StepCounter()
    stopped = train(cfg, tmp_path / "run", stop_at_step=11, callbacks=[first])
    assert not stopped.completed and first.steps == list(range(1, 12))
    result = train(cfg, tmp_path / "run", resume=True, callbacks=[second])
    total = 3 * STEPS_PER_EPOCH
    assert result.completed and result.step == total
    assert first.steps + second.steps == list(range(1, total + 1))  # each step once, in order
    # the objective handed over is the step's own: its loss is the one the log records
    logged = [json.loads(line) for line in (tmp_path / "run" / METRICS_NAME).read_text().splitlines()]
    train_lines = [r for r in logged if r["split"] == "train"]
    assert [r["step"] for r in train_lines] == list(range(3, total + 1, 3))
    losses = {**first.losses, **second.losses}
    for record in train_lines:
        assert losses[record["step"]] == pytest.approx(record["loss"], rel=1e-6)


def test_every_hook_fires_with_the_trainer_state(tmp_path, tiny_config):
    events = []

    class Recorder:
        def on_train_start(self, trainer, state):
            assert state is trainer.state and state.step == 0
            events.append("start")

        def on_validation_end(self, state, metrics):
            events.append(("val", state.epoch, sorted(metrics) == sorted(state.last_validation)))

        def on_checkpoint(self, state, path):
            assert load_checkpoint(path)["step"] == state.step
            events.append(("checkpoint", state.step))

        def on_train_end(self, result):
            events.append(("end", result.step))

    cfg = tiny_config(train={"epochs": 2, "checkpoint_seconds": 0})
    train(cfg, tmp_path / "run", callbacks=[Recorder()])
    n = STEPS_PER_EPOCH
    # validation of an epoch fires before the epoch counter moves on, then the epoch's checkpoint
    assert events == ["start", ("val", 0, True), ("checkpoint", n), ("val", 1, True), ("checkpoint", 2 * n), ("end", 2 * n)]


def _first_step_gradients(tmp_path, tiny_config, name, **train_options):
    grads, objectives = [], []

    class Capture:
        def on_step_end(self, trainer, objective):
            grads.extend(p.grad.clone() for p in trainer.params)
            objectives.append(objective)

    # a learned decoder scale: a calibrated one takes each micro-batch's own maximum-likelihood scale
    cfg = tiny_config(objective={"kind": "elbo"}, model={"prior": "normal", "decoder_scale": "learned"}, train=train_options)
    train(cfg, tmp_path / name, stop_at_step=1, callbacks=[Capture()])
    return grads, objectives[0]


def test_gradient_accumulation_equals_one_big_batch_for_the_elbo(tmp_path, tiny_config):
    """k micro-batches of B/k rows give the gradient and the loss of one batch of B rows: the
    ELBO is a mean over rows, and the noise is drawn for the whole global batch then sliced."""
    options = {"batch_size": 64}
    big, big_obj = _first_step_gradients(tmp_path, tiny_config, "big", **options)
    for k in (2, 4):
        acc, acc_obj = _first_step_gradients(tmp_path, tiny_config, f"acc{k}", grad_accum_steps=k, **options)
        assert len(acc) == len(big)
        for a, b in zip(acc, big):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(acc_obj.loss, big_obj.loss.detach(), rtol=1e-6, atol=1e-6)
        for name in big_obj.terms:
            torch.testing.assert_close(acc_obj.terms[name], big_obj.terms[name], rtol=1e-5, atol=1e-5)


def test_gradient_accumulation_needs_a_divisible_batch(tmp_path, tiny_config):
    with pytest.raises(EdvaeError, match=r"divisible by .*grad_accum_steps \(3\)"):
        train(tiny_config(train={"batch_size": 64, "grad_accum_steps": 3}), tmp_path / "run")


def test_gradient_accumulation_trains_and_resumes_exactly(tmp_path, tiny_config):
    cfg = tiny_config(train={"epochs": 2, "grad_accum_steps": 2})
    whole = train(cfg, tmp_path / "whole")
    train(cfg, tmp_path / "split", stop_at_step=5)
    resumed = train(cfg, tmp_path / "split", resume=True)
    assert whole.completed and resumed.completed and whole.step == resumed.step == 2 * STEPS_PER_EPOCH
    a, b = load_checkpoint(tmp_path / "whole")["model"], load_checkpoint(tmp_path / "split")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_train_state_is_the_checkpoint_and_round_trips(tmp_path, tiny_config):
    captured = {}

    class Capture:
        def on_checkpoint(self, trainer, state):
            captured["trainer"] = trainer
            captured["state"] = copy.deepcopy(state.state_dict())

    cfg = tiny_config(train={"epochs": 2, "lr_schedule": "cosine"})
    train(cfg, tmp_path / "run", stop_at_step=5, callbacks=[Capture()])
    saved = load_checkpoint(tmp_path / "run")
    assert _same(saved, captured["state"])  # what the state says is what the file holds
    assert saved["step"] == 5 and saved["batch_in_epoch"] == 5 and saved["epoch"] == 0 and not saved["completed"]

    trainer = captured["trainer"]
    model = copy.deepcopy(trainer.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # so that loading has to restore every weight
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    fresh = TrainState(
        config=cfg, model=model, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100), noise=torch.Generator(),
    )
    fresh.load_state_dict(saved)
    assert (fresh.step, fresh.epoch, fresh.batch_in_epoch, fresh.log_lines) == (5, 0, 5, saved["log_lines"])
    assert _same(fresh.state_dict(), saved)


def test_objective_kinds_log_the_terms_they_declare():
    torch.manual_seed(0)
    rows, dim = 8, 2
    mu, logvar = torch.randn(rows, dim), torch.randn(rows, dim) * 0.1
    z = mu + torch.randn(rows, dim) * (0.5 * logvar).exp()
    out = ModelOutput(mu=mu, logvar=logvar, z=z, log_px=torch.randn(rows), x_params=torch.zeros(rows, 3))
    prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(dim), torch.ones(dim)), 1)
    for kind, cls in OBJECTIVES.items():
        objective = cls(dataset_size=100)
        assert objective.kind == kind
        terms = objective(out, prior, mu, logvar, 0, diagnostics=True).terms
        assert set(terms) == set(cls.logged_terms)


def test_an_objective_kind_registered_outside_the_package_trains_by_name(tmp_path, tiny_config, monkeypatch):
    """A new kind is one class: the config accepts its name and the trainer builds it."""
    monkeypatch.delitem(OBJECTIVES, "half-kl", raising=False)
    calls = {"n": 0}

    @register_objective("half-kl")
    class HalfKL(ELBOObjective):
        def __call__(self, out, prior, mu, logvar, row_offset, diagnostics=True):
            calls["n"] += 1
            return super().__call__(out, prior, mu, logvar, row_offset, diagnostics)

    try:
        cfg = tiny_config(objective={"kind": "half-kl"}, train={"epochs": 1})
        assert isinstance(build_objective(cfg.objective, 10), HalfKL)
        result = train(cfg, tmp_path / "run")
        assert result.completed and calls["n"] >= result.step
    finally:
        OBJECTIVES.pop("half-kl", None)
    with pytest.raises(EdvaeError, match="objective.kind.*Input should be 'elbo', 'ed'.*'beta-tcvae'"):
        tiny_config(objective={"kind": "half-kl"})
    with pytest.raises(EdvaeError, match="already registered"):
        register_objective("elbo")(type("Other", (TrainingObjective,), {}))


def test_validation_noise_is_the_same_every_epoch_and_never_touches_training(tmp_path, tiny_config, monkeypatch):
    """Common random numbers: validating the same parameters at another epoch gives the same
    numbers (epoch-to-epoch changes of the validation ELBO are the model's), and the trained
    parameters are those of a run that never validates."""
    from edvae.training import Trainer

    cfg = tiny_config(train={"epochs": 2})
    validate = Trainer.validate
    checked = []

    def twice(self):
        first = validate(self)
        self.state.epoch += 3
        again = validate(self)
        self.state.epoch -= 3
        checked.append(first == again and bool(first))
        return first

    monkeypatch.setattr(Trainer, "validate", twice)
    train(cfg, tmp_path / "validated")
    assert checked == [True, True]
    monkeypatch.setattr(Trainer, "validate", lambda self: {})
    train(cfg, tmp_path / "unvalidated")
    a, b = load_checkpoint(tmp_path / "validated")["model"], load_checkpoint(tmp_path / "unvalidated")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)


class _LearningRates:
    """Records the learning rate after every optimisation step."""

    def __init__(self) -> None:
        self.rates: dict[int, float] = {}

    def on_step_end(self, state, step):
        self.rates[step] = state.optimizer.param_groups[0]["lr"]


def test_a_resumed_cosine_schedule_follows_the_new_total_and_ends_at_zero(tmp_path, tiny_config):
    import math

    cosine = {"lr_schedule": "cosine", "epochs": 2}
    train(tiny_config(train=cosine), tmp_path / "r")
    resumed = _LearningRates()
    train(tiny_config(train=dict(cosine, epochs=4)), tmp_path / "r", resume=True, callbacks=[resumed])
    fresh = _LearningRates()
    train(tiny_config(train=dict(cosine, epochs=4)), tmp_path / "fresh", callbacks=[fresh])
    total, lr = 4 * STEPS_PER_EPOCH, 3e-3
    assert sorted(resumed.rates) == list(range(2 * STEPS_PER_EPOCH + 1, total + 1))
    for step, rate in resumed.rates.items():  # the fresh run's rates, i.e. the closed form of the new curve
        assert rate == pytest.approx(fresh.rates[step], rel=1e-9, abs=1e-15)
        assert rate == pytest.approx(lr * (1 + math.cos(math.pi * step / total)) / 2, rel=1e-9, abs=1e-15)
    assert resumed.rates[total] == pytest.approx(0.0, abs=1e-15)
    saved = load_checkpoint(tmp_path / "r")
    assert saved["scheduler"]["T_max"] == total and saved["config"]["train"]["epochs"] == 4


def test_resuming_with_fewer_epochs_than_trained_is_refused(tmp_path, tiny_config):
    train(tiny_config(train={"epochs": 2}), tmp_path / "r")
    before = load_checkpoint(tmp_path / "r")
    with pytest.raises(EdvaeError, match="already trained 2 epochs; pass train.epochs=2 or more"):
        train(tiny_config(train={"epochs": 1}), tmp_path / "r", resume=True)
    assert load_checkpoint(tmp_path / "r")["config"] == before["config"]  # nothing rewritten
