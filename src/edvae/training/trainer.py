"""The trainer: :class:`Trainer` runs a run that :func:`edvae.training.launch.train` set up.

See :mod:`edvae.training` for what it guarantees and how to extend it.
"""

from __future__ import annotations

import errno
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from edvae.checkpoint import CHECKPOINT_NAME
from edvae.config import RunConfig
from edvae.data import DataSplits
from edvae.data.sampling import binarize_with_uniforms, derive_seed
from edvae.distributed import gather_columns, gather_rows
from edvae.errors import EdvaeError, TrainingError
from edvae.model import build_model, calibrate_decoder
from edvae.objective_kinds import TrainingObjective, build_objective
from edvae.objectives import Objective
from edvae.runs import CONFIG_NAME, PRIOR_FIT_NAME, load_data
from edvae.training.batches import epoch_order, micro_batch_rows
from edvae.training.guards import (
    MAX_CONSECUTIVE_SKIPS,
    StopFlag,
    checkpoint_due,
    diverged,
    divergence_warning,
    first_step_error,
    flag_interval,
    kept_checkpoint,
    nonfinite_flag,
)
from edvae.training.run_dir import MetricsLog, replace_run
from edvae.training.state import TrainState

__all__ = ["HOOKS", "TrainResult", "Trainer", "follow_new_total", "load_data"]

#: The callback hooks, each fired through ``fabric.call`` with keyword arguments (a callback
#: declares the ones it wants): ``on_train_start(trainer, state)``,
#: ``on_step_end(trainer, state, step, objective)`` after every optimisation step (skipped ones
#: included; ``objective`` is that step's :class:`edvae.objectives.Objective`, its terms the mean
#: over the micro-batches), ``on_validation_end(trainer, state, metrics)``,
#: ``on_checkpoint(trainer, state, path)`` after each checkpoint is written, and
#: ``on_train_end(trainer, state, result)``.
HOOKS = ("on_train_start", "on_step_end", "on_validation_end", "on_checkpoint", "on_train_end")


@dataclass
class TrainResult:
    """What a call to :func:`train` did."""

    run_dir: Path
    step: int
    epoch: int
    train_seconds: float
    completed: bool
    stopped_by: str | None = None
    skipped_steps: int = 0
    last_validation: dict[str, float] = field(default_factory=dict)
    #: the part of ``train_seconds`` spent validating at the ends of epochs (and logging the result)
    validation_seconds: float = 0.0


class Trainer:
    """One run of one model: the epochs of :meth:`fit`, made of :meth:`train_epoch`,
    :meth:`train_step` and :meth:`validate`, with its :class:`TrainState` in ``self.state``.

    Built by :func:`train` after the process launch and the global seed (the model's
    initialisation draws from it); ``saved`` is a checkpoint to resume from.
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        fabric: Any,
        data: DataSplits,
        *,
        saved: dict[str, Any] | None = None,
        stop_at_step: int | None = None,
        replaces: Path | None = None,
    ) -> None:
        tc = self.tc = config.train
        self.config, self.run_dir, self.fabric, self.stop_at_step = config, run_dir, fabric, stop_at_step
        self.replaces = replaces  # the run folder this new run replaces once it has its first checkpoint
        self.world, self.rank = fabric.world_size, fabric.global_rank
        self.device = fabric.device  # a property that costs ~0.1 ms a read
        self.x_train = fabric.to_device(data.train)
        self.x_val = fabric.to_device(data.val)
        n_train = self.x_train.shape[0]
        self.batches_per_epoch = n_train // tc.batch_size
        if self.batches_per_epoch < 1:
            raise EdvaeError(f"train.batch_size={tc.batch_size} exceeds the {n_train} training examples; lower it")

        model = build_model(config.model, data, fit_prior=saved is None, weights=saved and saved.get("model")).to(
            fabric.device
        )  # resume: weights from the checkpoint
        self.objective: TrainingObjective = build_objective(config.objective, n_train)
        self.objective.setup(model)  # parts of the objective that read the model (a critic), kept outside it
        trained = [*model.parameters(), *self.objective.parameters()]  # fixed order: the model's, then the objective's
        # fused Adam: one kernel for all parameters instead of ~12 ops per tensor (4-5x less time)
        fused = all(t.device.type in ("cpu", "cuda") for t in trained)
        optimizer = torch.optim.Adam(trained, lr=tc.lr, fused=fused or None)
        self.total_steps = tc.epochs * self.batches_per_epoch
        scheduler = (  # a constant learning rate needs none
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.total_steps)
            if tc.lr_schedule == "cosine"
            else None
        )
        self.wrapped = self.world > 1 or fabric.device.type != "cpu"
        self.step_model = fabric.setup(model, optimizer)[0] if self.wrapped else model
        self.objective_params = [p for p in self.objective.parameters() if p.requires_grad]
        self.gather = {d: self.objective.reads_batch_columns(d) for d in (False, True)}  # by diagnostics
        self.micro_rows = micro_batch_rows(tc.batch_size, tc.grad_accum_steps, self.world, self.rank)
        self.dynamic = getattr(data, "binarize", "none") == "dynamic"
        self.params = [p for p in model.parameters() if p.requires_grad] + self.objective_params
        self._optimized = [p for group in optimizer.param_groups for p in group["params"]]
        self._one_micro_batch = tc.grad_accum_steps == 1 and self.world == 1  # the step's rows: the whole batch
        self._pin = self.device.type == "cuda"  # noise drawn on the CPU reaches the GPU without a host sync
        listeners = getattr(fabric, "_callbacks", None)  # fabric.call per step only when a callback listens
        self._call_step_end = listeners is None or any(hasattr(cb, "on_step_end") for cb in listeners)
        #: steps between host reads of the non-finite and stop flags (see :meth:`train_step`)
        self.check_every = flag_interval(self.device, tc.on_nonfinite, tc.log_every)
        self._pending: list[tuple[Tensor, int, Objective, list[tuple[Tensor, ...]]]] = []
        self.state = TrainState(
            config=config,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            noise=torch.Generator().manual_seed(tc.seed),
            objective=self.objective,
            world_size=self.world,
        )
        if saved is not None:
            source = run_dir / CHECKPOINT_NAME
            self.state.load_state_dict(saved, source=source)
            self._check_position(source)
            if scheduler is not None:
                follow_new_total(scheduler, self.total_steps, base_lr=tc.lr)
            else:  # a constant rate: the config's, which a resume may have changed
                for group in optimizer.param_groups:
                    group["lr"] = tc.lr

        s = self.state
        self.log = MetricsLog(
            run_dir,
            fabric.is_global_zero,
            purge_step=s.step + 1 if saved else None,
            keep_lines=s.log_lines if saved else None,
        )
        if fabric.is_global_zero:
            self.write_config()
            fit_report = getattr(model.prior, "fit_report", None)
            if fit_report is not None:
                (run_dir / PRIOR_FIT_NAME).write_text(json.dumps(fit_report, indent=2) + "\n")
        self.progress = None
        if tc.progress and fabric.is_global_zero:
            from tqdm.auto import tqdm

            self.progress = tqdm(
                total=self.total_steps, initial=s.step, desc=config.name, unit="step", leave=False, dynamic_ncols=True
            )
        self._stop_flag = StopFlag()
        self._signalled = False
        self._consecutive_skips = 0
        self._first_elbo: float | None = None  # the first validation ELBO of this process's run
        self._warned_divergence = False
        self._tick = time.perf_counter()

    @property
    def model(self) -> torch.nn.Module:
        return self.state.model

    def write_config(self) -> None:
        """``config.json``: the run's config (its latest values), and the settings changed on
        resume (``"changes"``, see :func:`train`) when there are any."""
        record = self.config.model_dump()
        if self.state.changes:
            record["changes"] = self.state.changes
        (self.run_dir / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n")

    def _check_position(self, source: Path) -> None:
        """Refuse a resumed position that does not add up (a forged or damaged checkpoint):
        step = epoch x steps-per-epoch + batch_in_epoch, with batch_in_epoch at most the steps per
        epoch (equal: stopped after an epoch's last step, before its validation)."""
        s, per_epoch = self.state, self.batches_per_epoch
        if s.batch_in_epoch > per_epoch or s.step != s.epoch * per_epoch + s.batch_in_epoch or s.skipped_steps > s.step:
            raise EdvaeError(
                f"{source} is a damaged edvae checkpoint: its position (step {s.step}, epoch {s.epoch}, batch "
                f"{s.batch_in_epoch}, {s.skipped_steps} skipped) does not add up for this run's {per_epoch} steps per "
                f"epoch; start the run again with --overwrite"
            )

    # ------------------------------------------------------------------------- the run

    def fit(self) -> TrainResult:
        """Train the remaining epochs: each epoch's steps, then its validation and (when due,
        and always after the last) a checkpoint. A stop request (signal or ``stop_at_step``)
        ends the run at a step boundary with a checkpoint of exactly that position."""
        s, tc = self.state, self.tc
        self.fabric.call("on_train_start", trainer=self, state=s)
        last_save = time.monotonic()
        try:
            with self._stop_flag:
                self._tick = time.perf_counter()
                while s.epoch < tc.epochs:
                    if not self.train_epoch():  # stopped within the epoch
                        self._account_time()
                        self.save_checkpoint()
                        break
                    self.end_epoch()
                    if s.epoch >= tc.epochs:
                        self.calibrate_decoder()
                    if s.epoch >= tc.epochs or checkpoint_due(self.fabric, last_save, tc.checkpoint_seconds):
                        self.save_checkpoint(completed=s.epoch >= tc.epochs)
                        last_save = time.monotonic()
        finally:
            self._close()
        result = TrainResult(
            self.run_dir,
            s.step,
            s.epoch,
            s.train_seconds,
            s.stopped_by is None,
            s.stopped_by,
            s.skipped_steps,
            s.last_validation,
            s.validation_seconds,
        )
        self.fabric.call("on_train_end", trainer=self, state=s, result=result)
        return result

    def train_epoch(self) -> bool:
        """The steps left in the current epoch; False when a stop request ended it early."""
        s, tc = self.state, self.tc
        order = epoch_order(self.x_train.shape[0], tc.seed, s.epoch).to(self.fabric.device)
        while s.batch_in_epoch < self.batches_per_epoch:
            start = s.batch_in_epoch * tc.batch_size
            self.train_step(order[start : start + tc.batch_size])
            s.batch_in_epoch += 1
            at_stop = self.stop_at_step is not None and s.step >= self.stop_at_step
            checkpoint = bool(tc.checkpoint_every) and s.step % tc.checkpoint_every == 0
            if at_stop or checkpoint or self._signalled:
                self.settle()  # the flags are read before anything is written (see train_step)
            if self._signalled or at_stop:
                s.stopped_by = self._stop_flag.signal_name or "stop_at_step"
                return False
            if checkpoint:
                self._account_time()
                self.save_checkpoint()
        self.settle()
        return True

    def calibrate_decoder(self) -> None:
        """At the end of training, a calibrated Gaussian decoder (``model.decoder_scale =
        "optimal"``) takes the maximum-likelihood scale of the training split under the final
        model (:func:`edvae.model.calibrate_decoder`, noise seeded from ``train.seed``): the
        fixed scale evaluation uses. Other decoders are left alone."""
        generator = torch.Generator().manual_seed(derive_seed(self.tc.seed, "decoder-scale"))
        calibrate_decoder(self.state.model, self.x_train, generator=generator)

    def end_epoch(self) -> None:
        """Validate the finished epoch, log the result and move to the next epoch."""
        s = self.state
        started = time.perf_counter()
        s.last_validation = self.validate()
        self.log.log("val", s.step, s.epoch + 1, s.last_validation)
        self._warn_if_diverging(s.last_validation)
        s.validation_seconds += time.perf_counter() - started
        self.fabric.call("on_validation_end", trainer=self, state=s, metrics=s.last_validation)
        s.epoch += 1
        s.batch_in_epoch = 0
        self._account_time()

    def train_step(self, indices: Tensor) -> Objective:
        """One optimisation step on the global batch ``indices`` (training-set rows, (B,)).

        Noise for the whole global batch is drawn from the run's generator and sliced, so the
        step is that of one process whatever the number of processes (on a GPU it is drawn into
        pinned memory and copied without a host synchronisation). With
        ``train.grad_accum_steps = k`` the batch is cut into k consecutive micro-batches, each
        forward and backward on its own (its objective sees only its B/k rows, N unchanged), the
        gradient being the mean of theirs.

        **Non-finite steps.** Every step sets a device flag when its loss or a gradient holds a
        NaN or Inf (:func:`~edvae.training.guards.nonfinite_flag`). The host reads it every
        :attr:`check_every` steps (:func:`~edvae.training.guards.flag_interval`): every step on
        a CPU (a read costs nothing there) and with ``train.on_nonfinite = "skip"``; else
        (``"stop"`` on a GPU) at the logged steps, the end of each epoch, before every checkpoint
        and before a stop, with the stop flags. The guarantee is the same either way: the first
        non-finite step s raises the error it raised when read at once (naming step s, its epoch,
        the term or the gradient, and whether the encoder outputs diverged), no checkpoint, log
        line or validation is written after step s (each is preceded by a read), and the last
        good checkpoint is kept. Steps after s but before the read are computed and thrown away
        with the run; an ``on_step_end`` callback sees them (with a deferred read it may see up
        to ``check_every - 1`` steps after s, their objectives non-finite, before the error).
        """
        s, tc = self.state, self.tc
        log_now = (s.step + 1) % tc.log_every == 0  # terms that only report are computed then
        k = tc.grad_accum_steps
        batch_size, device = tc.batch_size, self.device
        u = (
            torch.rand((batch_size, *self.x_train.shape[1:]), generator=s.noise, pin_memory=self._pin)
            if self.dynamic
            else None
        )
        eps = torch.randn((batch_size, self.config.model.latent_dim), generator=s.noise, pin_memory=self._pin)
        if device.type != "cpu":  # from pinned memory on CUDA: no host synchronisation
            eps = eps.to(device, non_blocking=self._pin)
            u = u.to(device, non_blocking=self._pin) if u is not None else None
        for p in self._optimized:  # optimizer.zero_grad(set_to_none=True), without its profiling wrapper
            p.grad = None
        outputs, objectives = [], []
        for j, rows in enumerate(self.micro_rows):
            if self._one_micro_batch:  # rows is the whole batch
                x, eps_rows, u_rows = self.x_train[indices], eps, u
            else:
                x, eps_rows, u_rows = self.x_train[indices[rows]], eps[rows], (u[rows] if u is not None else None)
            if u_rows is not None:
                x = binarize_with_uniforms(x, u_rows)
            out = self.step_model(x, eps_rows)
            if self.gather[log_now]:
                mu, logvar, offset = gather_columns(out.mu, out.logvar)
            else:  # the objective reads this process's rows only
                mu, logvar, offset = out.mu, out.logvar, 0
            inputs = {"x": x} if self.objective.reads_inputs else {}
            obj = self.objective(out, s.model.prior_distribution(), mu, logvar, offset, diagnostics=log_now, **inputs)
            self._backward(obj.loss if k == 1 else obj.loss / k, sync=j == k - 1)
            outputs.append(out)
            objectives.append(obj)
        obj = objectives[0] if k == 1 else _mean_objective(objectives)
        if self.world > 1 and self.objective_params:  # outside the DDP module: average their gradients here
            self._average_gradients(self.objective_params)
        found_inf = nonfinite_flag(obj.loss, self.params, tc.grad_clip)
        s.step += 1
        if self.check_every == 1:
            if self._read_flags([found_inf])[0]:
                self._skip_or_stop(obj, outputs, s.step)
                self.objective.after_step(s.model, applied=False)
            else:
                self._consecutive_skips = 0
                self._apply(obj, log_now)
        else:  # read later (see the docstring): kept until then with what its error needs
            if self.world == 1:
                self._signalled = self._stop_flag.signal_name is not None
            self._pending.append((found_inf, s.step, obj, [(o.mu, o.logvar, o.z) for o in outputs]))
            if log_now or s.step % self.check_every == 0:
                self.settle()
            self._apply(obj, log_now)
        if self.progress is not None and log_now:
            self.progress.update(tc.log_every)
        if self._call_step_end:
            self.fabric.call("on_step_end", trainer=self, state=s, step=s.step, objective=obj)
        return obj

    def _apply(self, obj: Objective, log_now: bool) -> None:
        """The update of a step taken as finite: optimiser, schedule, the objective's state, the log."""
        s = self.state
        s.optimizer.step()
        if s.scheduler is not None:
            s.scheduler.step()
        self.objective.after_step(s.model, applied=True, gather=gather_rows)
        if log_now:
            self._log_step(obj)

    def _read_flags(self, flags: list[Tensor]) -> list[bool]:
        """Host read of the steps' non-finite ``flags`` ((1,) each), summed over the processes
        with the stop signals, which set ``self._signalled``: one synchronisation."""
        signalled = self._stop_flag.signal_name is not None
        if self.world > 1:
            signal = torch.tensor([float(signalled)], device=flags[0].device)
            values = self.fabric.all_reduce(torch.cat([*flags, signal]), reduce_op="sum").tolist()
            signalled = bool(values.pop())
        else:
            values = torch.cat(flags).tolist() if len(flags) > 1 else [float(flags[0])]
        self._signalled = signalled
        return [v != 0 for v in values]

    def settle(self) -> None:
        """Read the flags of the steps taken since the last read (one host synchronisation); the
        first non-finite one raises the error :meth:`train_step` describes. A no-op when every
        step was read at once (``check_every == 1``)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        bad = self._read_flags([flag for flag, *_ in pending])
        for (_, step, obj, outputs), nonfinite in zip(pending, bad, strict=True):
            if nonfinite:
                self._skip_or_stop(obj, [SimpleNamespace(mu=m, logvar=v, z=z) for m, v, z in outputs], step)

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """Mean objective terms and MC ELBO over the validation split, reduced across processes.

        The reparameterisation noise is drawn from a generator seeded by ``train.seed`` alone, the
        same in every epoch (common random numbers); it never touches the training noise.

        Full batches of the training (micro-)batch size; a validation split smaller than one
        batch is validated as one batch of (a multiple of the process count of) its own size.
        """
        world, rank, model = self.world, self.rank, self.state.model
        x_val = self.x_val
        n = x_val.shape[0]
        batch_size = min(self.tc.batch_size // self.tc.grad_accum_steps, n - n % world)
        if batch_size < max(2, world):
            return {}
        model.eval()
        # Common random numbers: the same noise every epoch, so epoch-to-epoch changes of the
        # validation ELBO are the model's, not the sampler's (the convergence criterion reads them).
        gen = torch.Generator().manual_seed(derive_seed(self.tc.seed, "validation"))
        sums: Tensor | None = None
        names: list[str] = []
        count = 0
        prior = model.prior_distribution()
        per_rank = batch_size // world
        for start in range(0, n - batch_size + 1, batch_size):
            eps_all = torch.randn((batch_size, model.latent_dim), generator=gen)
            rows = slice(start + rank * per_rank, start + (rank + 1) * per_rank)
            x = x_val[rows]
            out = model(x, eps_all[rank * per_rank : (rank + 1) * per_rank].to(x.device))
            mu, logvar, offset = gather_columns(out.mu, out.logvar)
            obj = self.objective(out, prior, mu, logvar, offset, **({"x": x} if self.objective.reads_inputs else {}))
            names = list(obj.terms)
            values = torch.stack([obj.terms[k].float() for k in names]) * per_rank
            sums = values if sums is None else sums + values
            count += per_rank
        model.train()
        if sums is None:
            return {}
        if world > 1:
            sums = self.fabric.all_reduce(sums, reduce_op="sum")
            count *= world
        return {k: float(v) / count for k, v in zip(names, sums.tolist(), strict=True)}

    def save_checkpoint(self, completed: bool = False) -> None:
        """Write :meth:`TrainState.state_dict` atomically to ``checkpoint.pt``; refuses (with a
        :class:`TrainingError`, leaving the last good checkpoint) when a parameter is non-finite."""
        s = self.state
        if not all(bool(torch.isfinite(p).all()) for p in [*s.model.parameters(), *self.objective.parameters()]):
            raise TrainingError(
                f"the parameters became non-finite by step {s.step} (epoch {s.epoch + 1}); "
                f"{kept_checkpoint(self.run_dir)}. "
                "Lower train.lr or set train.grad_clip"
            )
        s.log_lines, s.completed = self.log.lines, completed
        path = self.run_dir / CHECKPOINT_NAME
        try:
            self.fabric.save(path, s.state_dict())
        except OSError as err:
            cause = "no space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err)).lower()
            resume = self.replaces or self.run_dir
            then = (
                f"free space and resume with: edvae train --resume {resume}"
                if (self.run_dir / CHECKPOINT_NAME).is_file()
                else "free space and start the run again"
            )
            raise TrainingError(f"{cause} writing {path}; {kept_checkpoint(self.run_dir)}; {then}") from None
        if self.replaces is not None:  # the new run has its first checkpoint: it replaces the old run now
            if self.fabric.is_global_zero:
                replace_run(self.replaces, self.run_dir)
            self.run_dir, self.replaces = self.replaces, None
            path = self.run_dir / CHECKPOINT_NAME
        self.fabric.call("on_checkpoint", trainer=self, state=s, path=path)

    # ------------------------------------------------------------------------- helpers

    def _warn_if_diverging(self, metrics: dict[str, float]) -> None:
        """One warning line on stderr (once per process run, main process) when the validation
        ELBO fell by orders of magnitude below this run's first validation (:func:`divergence_warning`)."""
        elbo = metrics.get("elbo", metrics.get("elbo_mc"))
        if elbo is None or not math.isfinite(elbo) or self._warned_divergence:
            return
        if self._first_elbo is None:
            self._first_elbo = elbo
            return
        line = divergence_warning(self._first_elbo, elbo, self.state.epoch + 1)
        if line is not None:
            self._warned_divergence = True
            if self.fabric.is_global_zero:
                print(line, file=sys.stderr, flush=True)

    def _backward(self, loss: Tensor, sync: bool) -> None:
        if not self.wrapped:
            loss.backward()
        elif sync:
            self.fabric.backward(loss)
        else:  # a micro-batch before the last: no gradient all-reduce yet
            with self.fabric.no_backward_sync(self.step_model):
                self.fabric.backward(loss)

    def _average_gradients(self, params: list[Tensor]) -> None:
        """Mean of the processes' gradients of ``params`` (what DDP does for the model's), one all-reduce."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.fabric.all_reduce(torch.cat([g.reshape(-1) for g in grads]), reduce_op="mean")
        for p, part in zip(params, flat.split([g.numel() for g in grads]), strict=True):
            p.grad = part.view_as(p).clone()

    def _skip_or_stop(self, obj: Objective, outputs: list[Any], step: int) -> None:
        """Step ``step`` (of the current epoch) had a non-finite loss or gradient: stop with a
        clear error, or (with ``train.on_nonfinite=skip``) skip it, up to
        :data:`MAX_CONSECUTIVE_SKIPS` in a row."""
        s = self.state
        culprit = next((k for k, v in obj.terms.items() if not torch.isfinite(v)), None)
        what = f"the objective term '{culprit}'" if culprit else "the gradient"
        where = f"at step {step} (epoch {s.epoch + 1})"
        error = diverged(outputs, step, s.epoch, self.run_dir)
        if step - s.skipped_steps == 1 and (error is not None or self.tc.on_nonfinite == "stop"):
            raise first_step_error(self.x_train, where)  # no update applied yet: not the learning rate
        if error is None and self.tc.on_nonfinite == "stop":
            error = TrainingError(
                f"{what} became non-finite {where}; {kept_checkpoint(self.run_dir)}. "
                "Lower train.lr, set train.grad_clip, or set train.on_nonfinite=skip"
            )
        if error is not None:
            raise error
        s.optimizer.zero_grad(set_to_none=True)
        s.skipped_steps += 1
        self._consecutive_skips += 1
        if self._consecutive_skips > MAX_CONSECUTIVE_SKIPS:
            raise TrainingError(
                f"{what} was non-finite for {self._consecutive_skips} steps in a row {where}; giving up; "
                f"{kept_checkpoint(self.run_dir)}"
            )

    def _log_step(self, obj: Objective) -> None:
        """This step's terms, averaged over the processes, to the metrics log (one host read)."""
        values = torch.stack([v.float() for v in obj.terms.values()])
        if self.world > 1:
            values = self.fabric.all_reduce(values, reduce_op="mean")
        logged = dict(zip(obj.terms, values.tolist(), strict=True))
        self.log.log("train", self.state.step, self.state.epoch + 1, logged)
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{logged['loss']:.3f}", refresh=False)

    def _account_time(self) -> None:
        now = time.perf_counter()
        self.state.train_seconds += now - self._tick
        self._tick = now

    def _close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.log.close()


def follow_new_total(
    scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, total_steps: int, base_lr: float | None = None
) -> None:
    """Put a resumed cosine schedule on the curve of the run's (new) total number of steps
    (and, given ``base_lr``, of its (new) learning rate lr_0).

    The rule: the learning rate after t steps of a run of T = epochs x steps-per-epoch steps is
    lr_t = eta_min + (lr_0 - eta_min) (1 + cos(pi t / T)) / 2, with T that of the epochs the run
    now has. Resuming with more epochs keeps t (``last_epoch``) and sets ``T_max = T``: the rate
    moves at once to the new curve's value at t, and the run ends at eta_min = 0 after T steps,
    exactly as a fresh run with those epochs does from step t on. The optimiser's rates are set
    to the closed form because torch's cosine scheduler updates them recursively (a ratio times
    the previous rate), which would otherwise continue from the old curve's rate. A new
    ``base_lr`` (``train.lr`` changed on resume) likewise moves the rate at once to
    lr_t of the curve with lr_0 = ``base_lr``. With neither changed, nothing is touched.
    """
    same_base = base_lr is None or all(base == base_lr for base in scheduler.base_lrs)
    if scheduler.T_max == total_steps and same_base:
        return
    scheduler.T_max = total_steps
    if base_lr is not None:
        scheduler.base_lrs = [base_lr] * len(scheduler.base_lrs)
        for group in scheduler.optimizer.param_groups:
            group["initial_lr"] = base_lr
    t = scheduler.last_epoch
    rates = [
        scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * t / total_steps)) / 2
        for base in scheduler.base_lrs
    ]
    for group, lr in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = lr
    scheduler._last_lr = list(rates)


def _mean_objective(objectives: list[Objective]) -> Objective:
    """The objective of a step of k micro-batches: loss and terms averaged over them (detached)."""
    loss = torch.stack([o.loss.detach() for o in objectives]).mean()
    terms = {name: torch.stack([o.terms[name] for o in objectives]).mean() for name in objectives[0].terms}
    return Objective(loss, terms)
