"""The training loop, with extension points.

One loop serves every model and objective, on one process or many (Lightning Fabric: DDP with
gloo on CPU, nccl on GPUs). :func:`train` sets a run up; :class:`Trainer` runs it
(:meth:`~Trainer.fit` -> :meth:`~Trainer.train_epoch` -> :meth:`~Trainer.train_step`, and
:meth:`~Trainer.validate` after each epoch); :class:`TrainState` is where the run is, and its
``state_dict()`` is the checkpoint. What it guarantees:

* **Same footing.** Every variant sees the same data order, the same reparameterisation noise
  and the same optimiser; only the objective differs.
* **Global batch.** Each epoch is a seeded permutation cut into global batches of
  ``batch_size`` (the last incomplete batch is dropped); process r takes rows
  ``[r*R, (r+1)*R)`` of each, R = batch_size / world_size. Noise is drawn for the whole global
  batch from one seeded generator and sliced, so a run on W processes sees exactly the batches
  and noise of a run on one. The ED estimators gather (mu, logvar) across processes
  (:mod:`edvae.distributed`) when the objective reads them
  (:meth:`edvae.objective_kinds.TrainingObjective.reads_batch_columns`), so the aggregate
  posterior is that of the global batch.
* **Gradient accumulation.** ``train.grad_accum_steps = k`` cuts each global batch into k
  consecutive micro-batches of M = batch_size / k rows (each sharded over the processes as
  above), runs forward and backward on each in turn with the loss scaled by 1/k, and takes one
  optimiser step: the gradient is the mean of the micro-batches' gradients. The data order, the
  noise (drawn for the whole global batch, then sliced) and the steps per epoch are those of
  k = 1. The aggregate-posterior estimators see **each micro-batch on its own**: log q_hat(z)
  is estimated from M posteriors (with N, the training-set size, unchanged), so the ED
  objective of a step is the mean of k batch-M objectives, not the batch-B objective; the ELBO,
  a mean over rows, gives exactly the batch-B gradient up to rounding. Validation uses batches
  of M rows too. With k = 1 nothing changes, bit for bit.
* **No lost work.** Checkpoints are atomic (:mod:`edvae.checkpoint`) and hold model, prior,
  optimiser, scheduler, every RNG state, the position in the epoch and the log position.
  SIGINT/SIGTERM save a checkpoint at the next step boundary. A non-finite loss or gradient
  stops the run (or skips the step) and leaves the last good checkpoint in place.
* **Exact resume.** On CPU a run stopped anywhere and resumed ends bit-for-bit equal to an
  uninterrupted run with the same seed.
* **Logs.** Every ``train.log_every`` steps, that step's objective terms (averaged over the
  processes) go to ``metrics.jsonl`` and TensorBoard, and after every epoch the means over the
  validation split. Terms that only report are computed on logged steps only
  (``diagnostics=False`` in between, see :func:`edvae.objectives.ed_elbo`).
* **Cost.** On a CPU one host read per step (the non-finite and stop flags; the terms on
  logged steps); on a GPU none in an ordinary step: the noise goes through pinned memory and,
  with ``on_nonfinite = "stop"``, the flags are read every ``log_every`` steps, the first
  non-finite step still stopping the run exactly (``Trainer.train_step``). Fused Adam, no
  scheduler for a constant learning rate, batches indexed from tensors, no callback dispatch
  per step when no callback has ``on_step_end``.

**Callbacks.** ``train(..., callbacks=[obj, ...])`` takes any objects with any of the methods
in :data:`HOOKS`; they are fired through Lightning Fabric (``Fabric(callbacks=...)``,
``fabric.call``) with keyword arguments, each callback receiving those its method names:
``on_train_start(trainer, state)``, ``on_step_end(trainer, state, step, objective)`` once per
optimisation step (skipped steps included, so the count over a run and its resumes is the final
``state.step``), ``on_validation_end(trainer, state, metrics)``,
``on_checkpoint(trainer, state, path)`` and ``on_train_end(trainer, state, result)``. They run
on every process; a callback that writes files should check ``trainer.fabric.is_global_zero``.
"""

from edvae.runs import METRICS_NAME, PRIOR_FIT_NAME, TENSORBOARD_DIR
from edvae.training.batches import epoch_order, micro_batch_rows, rank_indices, shard_rows
from edvae.training.launch import train
from edvae.training.state import TrainState
from edvae.training.trainer import HOOKS, Trainer, TrainResult, load_data

__all__ = [
    "HOOKS",
    "METRICS_NAME",
    "PRIOR_FIT_NAME",
    "TENSORBOARD_DIR",
    "TrainResult",
    "TrainState",
    "Trainer",
    "epoch_order",
    "load_data",
    "micro_batch_rows",
    "rank_indices",
    "shard_rows",
    "train",
]
