"""The trainer (:mod:`edvae.training`) and the objective registry (:mod:`edvae.objective_kinds`):
callbacks, gradient accumulation, the state that is the checkpoint, objective kinds added from
outside; and the loop itself: it learns, it logs every term, it checkpoints, it resumes exactly,
it stops or skips on non-finite steps."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from edvae.checkpoint import load_checkpoint
from edvae.errors import EdvaeError, TrainingError
from edvae.evaluate import evaluate_run
from edvae.model import ModelOutput
from edvae.objective_kinds import OBJECTIVES, ELBOObjective, TrainingObjective, build_objective, register_objective
from edvae.training import METRICS_NAME, TrainState, train

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
    assert events == [
        "start",
        ("val", 0, True),
        ("checkpoint", n),
        ("val", 1, True),
        ("checkpoint", 2 * n),
        ("end", 2 * n),
    ]


def _first_step_gradients(tmp_path, tiny_config, name, **train_options):
    grads, objectives = [], []

    class Capture:
        def on_step_end(self, trainer, objective):
            grads.extend(p.grad.clone() for p in trainer.params)
            objectives.append(objective)

    # a learned decoder scale: a calibrated one takes each micro-batch's own maximum-likelihood scale
    cfg = tiny_config(
        objective={"kind": "elbo"}, model={"prior": "normal", "decoder_scale": "learned"}, train=train_options
    )
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
        for a, b in zip(acc, big, strict=True):
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
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
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
        config=cfg,
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100),
        noise=torch.Generator(),
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
    calls = {"n": 0}
    with monkeypatch.context() as patch:
        patch.setattr(OBJECTIVES, "_entries", dict(OBJECTIVES._entries))  # the registry as it was, afterwards

        @register_objective("half-kl")
        class HalfKL(ELBOObjective):
            def __call__(self, out, prior, mu, logvar, row_offset, diagnostics=True):
                calls["n"] += 1
                return super().__call__(out, prior, mu, logvar, row_offset, diagnostics)

        cfg = tiny_config(objective={"kind": "half-kl"}, train={"epochs": 1})
        assert isinstance(build_objective(cfg.objective, 10), HalfKL)
        result = train(cfg, tmp_path / "run")
        assert result.completed and calls["n"] >= result.step
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


# ------------------------------------------------ the loop: learning, logs, checkpoints, exact resume, non-finite steps
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


def test_non_finite_loss_stops_naming_the_term_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_config, poison_objective
):
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


def _deferred(monkeypatch):
    """Make the trainer read its flags as on a GPU (every ``log_every`` steps), on this CPU."""
    from edvae.training import guards, trainer

    monkeypatch.setattr(
        trainer, "flag_interval", lambda device, *rest: guards.flag_interval(torch.device("cuda"), *rest)
    )


def test_the_flag_interval_reads_every_step_where_a_step_needs_it():
    from edvae.training.guards import flag_interval

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert flag_interval(cpu, "stop", 20) == 1  # a read costs nothing on a CPU
    assert flag_interval(cuda, "stop", 20) == 20
    assert flag_interval(cuda, "skip", 20) == 1  # the schedule and the skip count follow each step


class _PoisonEncoder:
    """A callback: the encoder's outputs become NaN at the forward passes in ``bad`` (training and
    validation passes both count)."""

    def __init__(self, bad):
        self.bad, self.calls = bad, 0

    def on_train_start(self, trainer):
        def hook(module, args, out):
            self.calls += 1
            return tuple(o * float("nan") for o in out) if self.calls in self.bad else out

        trainer.model.encoder.register_forward_hook(hook)


@pytest.mark.parametrize("poison", ["term", "gradient", "encoder"])
def test_a_deferred_flag_read_stops_at_the_first_non_finite_step_exactly_as_an_immediate_one(
    tmp_path, tiny_config, poison_objective, monkeypatch, poison
):
    """With the flags read every ``log_every`` steps (as on a GPU), a non-finite step s raises the
    error an immediate read raises (same step, term or gradient, or diverged encoder), keeps the
    same last checkpoint, and writes no log line after step s."""
    cfg = tiny_config(train={"epochs": 3, "checkpoint_every": 8, "log_every": 5})
    callbacks = []
    if poison == "term":
        counter = poison_objective("cross_entropy", lambda step: step > 10)
    elif poison == "encoder":
        callbacks = [_PoisonEncoder({15})]  # 8 steps, 4 validation passes, steps 9, 10, 11
    else:
        calls = {"n": 0}

        class PoisonGradient:
            def on_train_start(self, trainer):
                def hook(grad):
                    calls["n"] += 1
                    return grad * float("inf") if calls["n"] == 11 else grad

                trainer.model.decoder.net[-1].bias.register_hook(hook)

        callbacks = [PoisonGradient()]
    seen = {}
    for mode in ("immediate", "deferred"):
        if mode == "deferred":
            _deferred(monkeypatch)
            if poison == "term":
                counter["n"] = 0
            elif poison == "encoder":
                callbacks[0].calls = 0
            else:
                calls["n"] = 0
        run = tmp_path / mode
        with pytest.raises(TrainingError) as error:
            train(cfg, run, callbacks=callbacks)
        lines = [json.loads(line) for line in (run / METRICS_NAME).read_text().splitlines()]
        seen[mode] = (
            str(error.value).replace(str(run), "RUN"),
            load_checkpoint(run)["step"],
            [(r["split"], r["step"]) for r in lines],
        )
    assert seen["deferred"] == seen["immediate"]
    message, kept, logged = seen["deferred"]
    assert "at step 11" in message
    assert kept == 8 and max(step for _, step in logged) <= 10


def test_a_deferred_flag_read_changes_no_number(tmp_path, tiny_config, monkeypatch):
    cfg = tiny_config(train={"epochs": 2, "log_every": 3})
    train(cfg, tmp_path / "immediate")
    _deferred(monkeypatch)
    train(cfg, tmp_path / "deferred")
    immediate, deferred = _params(tmp_path / "immediate"), _params(tmp_path / "deferred")
    assert all(torch.equal(immediate[k], deferred[k]) for k in immediate)
    assert (tmp_path / "immediate" / METRICS_NAME).read_text().count("\n") == (
        tmp_path / "deferred" / METRICS_NAME
    ).read_text().count("\n")
