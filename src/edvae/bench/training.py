"""The trainer timed and observed through its callbacks: overhead of the decomposition
against a plain VAE, edvae against its peers, the profile of a step and the hot paths' hygiene."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edvae.bench.common import OVERHEAD_VARIANTS, SYNTHETIC, bench_config, interleaved, load_task_data, median


class _LoopClock:
    """Callback: the process CPU time from the start of the training loop (after set-up) to its end."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.seconds = 0.0

    def on_train_start(self) -> None:
        self.started = time.process_time()

    def on_train_end(self) -> None:
        assert self.started is not None  # on_train_start ran first
        self.seconds = time.process_time() - self.started


def _train_with_loop_cpu(config: Any, run_dir: Path, data: Any) -> tuple[Any, float]:
    """(TrainResult, process CPU seconds of the loop): from the trainer's ``on_train_start`` to
    its ``on_train_end``, the span that ``TrainResult.train_seconds`` measures in wall-clock time."""
    from edvae.training import train

    clock = _LoopClock()
    result = train(config, run_dir, data=data, overwrite=True, callbacks=[clock])
    return result, clock.seconds


def overhead(task: str, *, quick: bool, work: Path) -> dict[str, Any]:
    """Training-step time of :func:`edvae.training.train` for each variant and its ratio to
    vae-std's (``ratio``: the loop's time without the per-epoch validation, over the steps),
    and the same for whole epochs with their validation (``ratio_epoch``)."""
    from edvae.config import validate_config
    from edvae.training import train

    base, data, description = load_task_data(task, quick)
    epochs, repeats = (1, 2) if quick else ((3, 9) if task == "synthetic" else (2, 3))
    variants = OVERHEAD_VARIANTS[task]
    if quick:
        variants = variants[:3]
    configs = {name: validate_config(bench_config(base, variant, prior, epochs)) for name, variant, prior in variants}
    for name, config in configs.items():  # warm-up (imports, allocator), not timed
        train(
            config.model_copy(update={"train": config.train.model_copy(update={"epochs": 1})}),
            work / f"warm-{task}-{name}",
            data=data,
            overwrite=True,
            stop_at_step=2,
        )

    def side(name: str) -> Callable[[], Any]:
        return lambda: _train_with_loop_cpu(configs[name], work / f"{task}-{name}", data)

    runs = interleaved({name: side(name) for name in configs}, repeats)
    steps = runs["vae-std"]["out"][0][0].step
    rows: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        loop = [r.train_seconds / epochs for r, _ in run["out"]]
        step_ms = [1e3 * (r.train_seconds - r.validation_seconds) / steps for r, _ in run["out"]]
        loop_cpu = [cpu / epochs for _, cpu in run["out"]]
        rows[name] = {
            "ms_per_step": median(step_ms),
            "ms_per_step_all": step_ms,
            "seconds_per_epoch": median(loop),
            "cpu_seconds_per_epoch": median(loop_cpu),
            "wall_seconds_per_call": median(run["wall"]),
        }
    ref = rows["vae-std"]
    for row in rows.values():
        row["ratio"] = row["ms_per_step"] / ref["ms_per_step"]
        row["ratio_epoch"] = row["seconds_per_epoch"] / ref["seconds_per_epoch"]
        row["ratio_cpu"] = row["cpu_seconds_per_epoch"] / ref["cpu_seconds_per_epoch"]
    if "vae-true" in rows:
        for name in ("edvae (true prior)", "edvae-paper (true prior)"):
            rows[name]["ratio_vs_vae_true"] = rows[name]["ms_per_step"] / rows["vae-true"]["ms_per_step"]
    config = configs["vae-std"]
    return {
        "task": task,
        "data": description,
        "network": {
            "hidden": config.model.hidden,
            "latent_dim": config.model.latent_dim,
            "batch_size": config.train.batch_size,
        },
        "epochs": epochs,
        "repeats": repeats,
        "steps_per_call": steps,
        "variants": {name: {"variant": v, "prior": p or "as in the variant"} for name, v, p in variants},
        "results": rows,
    }


def _test_elbo(encode: Callable, decode: Callable, x: torch.Tensor, samples: int = 10) -> float:
    """Mean over x of E_q[log N(x; decode(z), I)] - KL(q(z|x) || N(0, I)), ``samples`` draws."""
    gen = torch.Generator().manual_seed(123)
    with torch.inference_mode():
        mu, logvar = encode(x)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1)
        const = 0.5 * x[0].numel() * math.log(2 * math.pi)
        rec = torch.zeros(x.shape[0], dtype=torch.float64)
        for _ in range(samples):
            z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=gen)
            rec += (-0.5 * (x - decode(z)).flatten(1).square().sum(1) - const).double()
        return float((rec / samples - kl.double()).mean())


def _hand_written(
    data: Any, hidden: list[int], latent: int, epochs: int, batch: int, lr: float, seed: int
) -> tuple[Callable, Callable]:
    """The floor: a minimal PyTorch VAE loop (shuffle, step, a validation loss per epoch)."""
    from edvae.networks import MLPDecoder, MLPEncoder

    torch.manual_seed(seed)
    x_shape = tuple(data.x_shape)
    encoder, decoder = MLPEncoder(x_shape, latent, hidden), MLPDecoder(x_shape, latent, list(reversed(hidden)))
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        mu, logvar = encoder(x)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        rec = 0.5 * (x - decoder(z)).flatten(1).square().sum(1)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1)
        return (rec + kl).mean()

    n = data.train.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n)
        for start in range(0, n - batch + 1, batch):
            loss = loss_of(data.train[perm[start : start + batch]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            float(sum(loss_of(data.val[s : s + batch]) for s in range(0, data.val.shape[0], batch)))
    return encoder, decoder


def _pythae(
    data: Any, hidden: list[int], latent: int, epochs: int, batch: int, lr: float, seed: int, out_dir: Path
) -> tuple[Callable, Callable]:
    """pythae's VAE (``mse`` loss: unit-variance Gaussian) with the same encoder and decoder,
    trained by its ``TrainingPipeline`` as its documentation shows."""
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig

    from edvae.networks import MLPDecoder, MLPEncoder

    x_shape = tuple(data.x_shape)

    class Encoder(BaseEncoder):
        def __init__(self) -> None:
            BaseEncoder.__init__(self)
            self.net = MLPEncoder(x_shape, latent, hidden)

        def forward(self, x: torch.Tensor) -> ModelOutput:
            mu, logvar = self.net(x)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self) -> None:
            BaseDecoder.__init__(self)
            self.net = MLPDecoder(x_shape, latent, list(reversed(hidden)))

        def forward(self, z: torch.Tensor) -> ModelOutput:
            return ModelOutput(reconstruction=self.net(z))

    torch.manual_seed(seed)
    model = VAE(
        VAEConfig(input_dim=x_shape, latent_dim=latent, reconstruction_loss="mse"), encoder=Encoder(), decoder=Decoder()
    )
    config = BaseTrainerConfig(
        output_dir=str(out_dir),
        num_epochs=epochs,
        learning_rate=lr,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        steps_saving=None,
        seed=seed,
        no_cuda=True,
    )
    pipeline = TrainingPipeline(model=model, training_config=config)
    for name in list(logging.root.manager.loggerDict):  # pythae logs its progress at INFO
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        pipeline(train_data=data.train, eval_data=data.val)
    best = pipeline.trainer._best_model  # what pythae saves as the final model
    return best.encoder.net, best.decoder.net


def peers(*, quick: bool, work: Path) -> dict[str, Any]:
    """Examples per second of edvae's loop, pythae's VAE training and a hand-written loop."""
    from edvae.config import validate_config
    from edvae.data import load_dataset
    from edvae.evaluate import load_run
    from edvae.experiments.variants import merge
    from edvae.training import train

    epochs, repeats = (1, 1) if quick else (10, 7)
    options = {"n_train": 2560, "n_val": 512, "n_test": 512} if quick else SYNTHETIC["data"]["options"]
    data = load_dataset("complex", **options)
    hidden, latent, batch, lr, seed = [128, 128], 2, 256, 1e-3, 0
    fixed_scale = {"model": {"decoder_scale": "fixed"}, "train": {"seed": seed, "log_every": 20}}
    base = merge(SYNTHETIC, {"data": {"options": options}})
    ours = validate_config(bench_config(base, "vae-std", None, epochs, **fixed_scale))
    ours_ed = validate_config(bench_config(base, "edvae", "normal", epochs, **fixed_scale))
    try:
        import pythae  # noqa: F401

        have_pythae = True
    except ImportError:
        have_pythae = False

    def edvae_side(config: Any, name: str) -> Callable[[], Any]:
        return lambda: train(config, work / f"peers-{name}", data=data, overwrite=True).run_dir

    sides: dict[str, Callable[[], Any]] = {
        "edvae (vae-std objective)": edvae_side(ours, "vae"),
        "edvae (edvae objective)": edvae_side(ours_ed, "ed"),
        "hand-written PyTorch loop": lambda: _hand_written(data, hidden, latent, epochs, batch, lr, seed),
    }
    if have_pythae:
        sides["pythae VAE (TrainingPipeline)"] = lambda: _pythae(
            data, hidden, latent, epochs, batch, lr, seed, work / "pythae"
        )
    # warm-up, not timed (first-call imports and allocations)
    _hand_written(data, hidden, latent, 1, batch, lr, seed)
    runs = interleaved(sides, repeats)
    examples = (data.train.shape[0] // batch) * batch * epochs
    rows = {}
    for name, run in runs.items():
        trained = run["out"][-1]
        if isinstance(trained, Path):  # an edvae run folder: the model is in its checkpoint
            model = load_run(trained, data)[0]
            trained = (model.encode, model.decode)
        encode, decode = trained
        rows[name] = {
            "examples_per_second": examples / median(run["wall"]),
            "examples_per_cpu_second": examples / median(run["cpu"]),
            "wall_seconds": median(run["wall"]),
            "cpu_seconds": median(run["cpu"]),
            "test_elbo": _test_elbo(encode, decode, data.test),
        }
    ref = rows["edvae (vae-std objective)"]
    ratios = {
        "vs_hand_written": ref["examples_per_second"] / rows["hand-written PyTorch loop"]["examples_per_second"],
        "vs_hand_written_cpu": ref["examples_per_cpu_second"]
        / rows["hand-written PyTorch loop"]["examples_per_cpu_second"],
    }
    if have_pythae:
        p = rows["pythae VAE (TrainingPipeline)"]
        ratios["vs_pythae"] = ref["examples_per_second"] / p["examples_per_second"]
        ratios["vs_pythae_cpu"] = ref["examples_per_cpu_second"] / p["examples_per_cpu_second"]
        ratios["hand_written_vs_pythae"] = (
            rows["hand-written PyTorch loop"]["examples_per_second"] / p["examples_per_second"]
        )
    return {
        "task": "synthetic: complex data (16-D), MLP encoder/decoder hidden [128, 128], latent 2, unit-variance "
        "Gaussian likelihood, N(0, I) prior, Adam lr 1e-3, batch 256",
        "n_train": int(data.train.shape[0]),
        "epochs": epochs,
        "repeats": repeats,
        "pythae": "compared" if have_pythae else "not installed: pip install 'edvae[bench]' to compare",
        "results": rows,
        "ratios": ratios,
    }


def _scalar_reads(run: Callable[[], Any]) -> int:
    """Reads of a tensor's value to the host (``item``, ``bool``, ``float``: aten's
    ``_local_scalar_dense``) during ``run()``; ``tolist`` bypasses the dispatcher."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        reads = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                Count.reads += 1
            return func(*args, **(kwargs or {}))

    with Count():
        run()
    return Count.reads


def profile_step(*, quick: bool, work: Path, rows: int = 15) -> dict[str, Any]:
    """torch.profiler over one epoch of the ED loop (edvae-paper, N(0, I)): the top operators
    by self CPU time per training step; and the host reads of one step (the difference between
    runs of 2k and k steps, so that set-up, validation and checkpoints cancel)."""
    from torch.profiler import ProfilerActivity, profile

    from edvae.config import validate_config
    from edvae.data import load_dataset
    from edvae.experiments.variants import merge
    from edvae.training import train

    options: dict[str, Any] = {"n_train": 2560 if quick else 10240, "n_val": 256, "n_test": 256}
    data = load_dataset("complex", **options)
    config = validate_config(bench_config(merge(SYNTHETIC, {"data": {"options": options}}), "edvae-paper", "normal", 1))
    train(config, work / "profile-warm", data=data, overwrite=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = train(config, work / "profile", data=data, overwrite=True)
    steps = result.step
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]
    k = 5
    reads = [
        _scalar_reads(functools.partial(train, config, work / "reads", data=data, overwrite=True, stop_at_step=n))
        for n in (k, 2 * k)
    ]
    return {
        "run": f"edvae-paper objective, N(0, I) prior, synthetic task, one epoch: {steps} steps, a validation and a "
        "checkpoint",
        "steps": steps,
        "self_cpu_ms_per_step_total": total / 1e3 / steps,
        "top": [
            {
                "name": e.key,
                "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                "share": e.self_cpu_time_total / total,
                "calls_per_step": e.count / steps,
            }
            for e in top
        ],
        "scalar_reads_per_step": (reads[1] - reads[0]) / k,
    }


class _HygieneProbe:
    """Callback: how the trainer holds its data and runs the model, seen from a forward hook on
    the model it built (training steps and validation alike)."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, bool]] = []  # (model.training, inference mode) per forward
        self.data_is_tensor = False

    def on_train_start(self, trainer: Any) -> None:
        self.data_is_tensor = isinstance(trainer.x_train, torch.Tensor)
        trainer.model.register_forward_hook(
            lambda module, args, out: self.calls.append((module.training, torch.is_inference_mode_enabled()))
        )


def hygiene(work: Path) -> dict[str, Any]:
    """Facts about the hot paths, observed on a one-epoch run of the trainer through its
    callbacks: training batches are indexed from tensors held in memory (no DataLoader), and
    validation (like evaluation) runs under ``torch.inference_mode``."""
    import inspect

    from edvae import evaluate
    from edvae.config import validate_config
    from edvae.data import load_dataset
    from edvae.experiments.variants import merge
    from edvae.training import train

    options: dict[str, Any] = {"n_train": 512, "n_val": 256, "n_test": 256}
    config = validate_config(bench_config(merge(SYNTHETIC, {"data": {"options": options}}), "edvae", "normal", 1))
    probe = _HygieneProbe()
    train(config, work / "hygiene", data=load_dataset("complex", **options), overwrite=True, callbacks=[probe])
    validation = [inference for training, inference in probe.calls if not training]
    return {
        "batches_by_index_from_tensors": probe.data_is_tensor and any(training for training, _ in probe.calls),
        "evaluation_inference_mode": "inference_mode" in inspect.getsource(evaluate.evaluate_model),
        "validation_inference_mode": bool(validation) and all(validation),
        "log_every_steps_default": 20,
    }
