"""The training step against a minimal hand-written loop of the same shape, and on a GPU.

* :func:`step_ratio` (CPU): the steady-state time of one step of the trainer of
  :func:`edvae.training.train` (vae-std) next to a minimal hand-written PyTorch loop of the same
  shape, apart from each run's fixed cost. **Steady state**: inside one training run (a callback
  at ``on_train_start``, :class:`_PairedBlocks`), blocks of ``block`` calls of the trainer's own
  ``train_step`` alternate with blocks of ``block`` hand-loop steps (the order swapping every
  round), so both sides meet the same machine state; ms per step is the median over the blocks,
  in process CPU time (steady on a shared machine) and in wall time, and the speed is
  ``hand / trainer`` of the CPU medians of the blocks paired in that run (1: as fast).
  **Fixed cost** (set-up, the checkpoint at the stop): ``T(n) - n * step`` for whole runs of
  ``n`` steps, the median over interleaved repeats. The hand loop: the same MLP encoder and
  decoder, z = mu + sigma eps, a Gaussian likelihood with a learned scalar log-scale, the
  analytic KL to N(0, I), fused Adam, a seeded permutation of the training rows each epoch;
  nothing else. The trainer's vae-std step also calibrates the decoder's per-dimension scale
  (the default ``model.decoder_scale = "optimal"``), builds the prior, checks the step for
  NaN/Inf and keeps its log; the row with ``decoder_scale = "learned"`` (not with ``quick``)
  shows what the calibration costs.
* :func:`gpu_steps` (CUDA only): ms per step (batch 256) of vae-std and edvae on the synthetic
  task and of the conv models on image-shaped data, images per second, and the achieved fraction
  of the GPU's peak: the step's FLOPs (``torch.utils.flop_counter``) over its time, over the
  rate of a large float32 matrix product measured on that GPU (:func:`matmul_rate`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from edvae.bench.common import SYNTHETIC, bench_config, interleaved, median


def _hand_stepper(data: Any, *, device: str = "cpu", seed: int = 0) -> Callable[[], None]:
    """One step per call of a minimal VAE loop (batch 256, hidden [128, 128], latent 2)."""
    from edvae.networks import MLPDecoder, MLPEncoder

    torch.manual_seed(seed)
    x_shape, latent, batch = tuple(data.x_shape), 2, 256
    encoder = MLPEncoder(x_shape, latent, [128, 128]).to(device)
    decoder = MLPDecoder(x_shape, latent, [128, 128]).to(device)
    log_scale = torch.nn.Parameter(torch.zeros((), device=device))
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters(), log_scale], lr=1e-3, fused=True)
    x_all = data.train.to(device)
    n = x_all.shape[0]
    per_epoch = n // batch
    order, taken = torch.randperm(n, device=device), 0

    def step() -> None:
        nonlocal order, taken
        if taken and taken % per_epoch == 0:
            order = torch.randperm(n, device=device)
        start = (taken % per_epoch) * batch
        taken += 1
        x = x_all[order[start : start + batch]]
        mu, logvar = encoder(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        r = (x - decoder(z)) * torch.exp(-log_scale)
        log_px = (-0.5 * r.square() - log_scale - 0.9189385332046727).flatten(1).sum(1)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1)
        loss = (kl - log_px).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _hand_loop(data: Any, steps: int, *, device: str = "cpu", seed: int = 0) -> None:
    """``steps`` steps of :func:`_hand_stepper`'s loop."""
    step = _hand_stepper(data, device=device, seed=seed)
    for _ in range(steps):
        step()
    if device != "cpu":
        torch.cuda.synchronize(device)


def _trainer_run(config: Any, run_dir: Path, data: Any, steps: int, callbacks: tuple[Any, ...] = ()) -> None:
    from edvae.training import train

    train(config, run_dir, data=data, overwrite=True, stop_at_step=steps, callbacks=list(callbacks))


class _PairedBlocks:
    """Callback: inside ``on_train_start``, ``warm`` untimed steps of each side, then ``rounds``
    rounds of one block of ``block`` trainer steps (:meth:`Trainer.train_step`, on the epoch's
    batches) and one block of ``block`` calls of ``hand``, the order swapping every round.
    ``seconds[side][clock]``: seconds per step of each block."""

    def __init__(self, hand: Callable[[], None], *, rounds: int, block: int, warm: int) -> None:
        self.hand, self.rounds, self.block, self.warm = hand, rounds, block, warm
        self.seconds: dict[str, dict[str, list[float]]] = {
            side: {"cpu": [], "wall": []} for side in ("trainer", "hand")
        }

    def on_train_start(self, trainer: Any) -> None:
        batch = trainer.tc.batch_size
        n = trainer.x_train.shape[0]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        batches = [order[i * batch : (i + 1) * batch] for i in range(n // batch)]
        position = [0]

        def trainer_step() -> None:
            trainer.train_step(batches[position[0] % len(batches)])
            position[0] += 1

        sides = [("trainer", trainer_step), ("hand", self.hand)]
        for _ in range(self.warm):
            for _, step in sides:
                step()
        for r in range(self.rounds):
            for side, step in sides if r % 2 == 0 else sides[::-1]:
                gc.collect()
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(self.block):
                    step()
                self.seconds[side]["cpu"].append((time.process_time() - cpu) / self.block)
                self.seconds[side]["wall"].append((time.perf_counter() - wall) / self.block)
        trainer.settle()


def _block_row(seconds: dict[str, list[float]]) -> dict[str, Any]:
    """ms per step (median over the blocks) on each clock, and every block's CPU value."""
    return {
        "ms_per_step_cpu": 1e3 * median(seconds["cpu"]),
        "ms_per_step_wall": 1e3 * median(seconds["wall"]),
        "ms_per_step_cpu_all": [1e3 * s for s in seconds["cpu"]],
    }


def step_ratio(*, quick: bool, work: Path) -> dict[str, Any]:
    """The CPU step of the trainer (vae-std) against the hand loop: steady-state medians of
    paired blocks, and each run's fixed cost apart (see the module docstring)."""
    from edvae.config import validate_config
    from edvae.data import load_dataset
    from edvae.experiments.variants import merge

    rounds, block, warm = (6, 10, 10) if quick else (60, 20, 40)
    n_fixed, repeats = (5, 2) if quick else (20, 5)
    options: dict[str, Any] = {"n_train": 256 * 200, "n_val": 256, "n_test": 256}
    data = load_dataset("complex", **options)
    base = merge(SYNTHETIC, {"data": {"options": options}})
    configs = {"trainer (vae-std)": validate_config(bench_config(base, "vae-std", None, 1))}
    if not quick:
        configs["trainer (vae-std, learned scale)"] = validate_config(
            bench_config(base, "vae-std", None, 1, model={"decoder_scale": "learned"})
        )
    rows: dict[str, Any] = {}
    for name, config in configs.items():
        clock = _PairedBlocks(_hand_stepper(data), rounds=rounds, block=block, warm=warm)
        _trainer_run(config, work / f"blocks-{name}", data, 1, (clock,))
        row, hand = _block_row(clock.seconds["trainer"]), _block_row(clock.seconds["hand"])
        row["speed_vs_hand_loop"] = hand["ms_per_step_cpu"] / row["ms_per_step_cpu"]  # against its own pairs
        row["speed_vs_hand_loop_wall"] = hand["ms_per_step_wall"] / row["ms_per_step_wall"]
        rows[name] = row
        rows.setdefault("hand loop", hand)  # the hand blocks paired with the default trainer
    sides: dict[str, Callable[[], Any]] = {
        name: partial(_trainer_run, config, work / f"fixed-{name}", data, n_fixed) for name, config in configs.items()
    }
    sides["hand loop"] = partial(_hand_loop, data, n_fixed)
    for side in sides.values():  # warm-up (imports, allocator), not timed
        side()
    runs = interleaved(sides, repeats)
    for name, row in rows.items():
        row["fixed_seconds_cpu"] = median([t - n_fixed * row["ms_per_step_cpu"] / 1e3 for t in runs[name]["cpu"]])
    return {
        "task": "synthetic: complex data (16-D), MLP hidden [128, 128], latent 2, N(0, I) prior, analytic KL, "
        "batch 256, fused Adam lr 1e-3",
        "threads": torch.get_num_threads(),
        "blocks": {"rounds": rounds, "steps_per_block": block, "warm_up_steps": warm},
        "fixed_cost_runs": {"steps": n_fixed, "repeats": repeats},
        "results": rows,
        "ratio": rows["trainer (vae-std)"]["speed_vs_hand_loop"],
    }


def matmul_rate(device: str, n: int = 8192, repeats: int = 10) -> dict[str, Any]:
    """The best float32 rate of an ``n x n`` product on ``device`` (2 n^3 FLOPs, torch's default
    float32 matmul precision): the peak the achieved rates are compared with."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=device)
    b = torch.randn(n, n, generator=gen, device=device)
    a @ b  # warm-up
    torch.cuda.synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    return {"n": n, "device": torch.cuda.get_device_name(device), "seconds_best": best, "gflops": 2 * n**3 / best / 1e9}


class _GpuClock:
    """Callback: the FLOPs of one step and the wall time of ``steps`` steps (synchronised at both
    ends), run inside ``on_train_start`` after ``warm`` steps; the loop's own steps then follow."""

    def __init__(self, steps: int, warm: int) -> None:
        self.steps, self.warm, self.flops, self.seconds = steps, warm, 0, 0.0

    def on_train_start(self, trainer: Any) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        batch = trainer.tc.batch_size
        n = trainer.x_train.shape[0]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(trainer.device)
        batches = [order[i * batch : (i + 1) * batch] for i in range(n // batch)]
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(batches[0])
        self.flops = counter.get_total_flops()
        for i in range(self.warm):
            trainer.train_step(batches[i % len(batches)])
        trainer.settle()
        torch.cuda.synchronize(trainer.device)
        start = time.perf_counter()
        for i in range(self.steps):
            trainer.train_step(batches[i % len(batches)])
        trainer.settle()
        torch.cuda.synchronize(trainer.device)
        self.seconds = time.perf_counter() - start


def gpu_steps(*, quick: bool, work: Path) -> dict[str, Any]:
    """ms per step on the GPU (batch 256): vae-std and edvae (synthetic), the conv models (images),
    images per second and the achieved share of :func:`matmul_rate`; and the hand loop's step."""
    from edvae.config import validate_config
    from edvae.data import load_dataset
    from edvae.data.splits import DataSplits
    from edvae.experiments.variants import merge
    from edvae.training import train

    device = "cuda"
    peak = matmul_rate(device)
    steps, warm = (50, 10) if quick else (300, 30)
    options: dict[str, Any] = {"n_train": 10240, "n_val": 512, "n_test": 512}
    synthetic = load_dataset("complex", **options)
    base = merge(SYNTHETIC, {"data": {"options": options}, "train": {"accelerator": "gpu"}})
    gen = torch.Generator().manual_seed(0)
    images = DataSplits(
        name="binary 28x28 images (uniform pixels)",
        train=(torch.rand((10240, 1, 28, 28), generator=gen) < 0.5).float(),
        val=(torch.rand((512, 1, 28, 28), generator=gen) < 0.5).float(),
        test=(torch.rand((512, 1, 28, 28), generator=gen) < 0.5).float(),
        x_shape=(1, 28, 28),
        likelihood="bernoulli",
    )
    conv = merge(base, {"model": {"network": "conv", "latent_dim": 16}})
    cases = {
        "vae-std (synthetic)": (bench_config(base, "vae-std", None, 1), synthetic),
        "edvae (synthetic)": (bench_config(base, "edvae", "normal", 1), synthetic),
        "vae-std (conv, 28x28)": (bench_config(conv, "vae-std", None, 1), images),
        "edvae (conv, 28x28)": (bench_config(conv, "edvae", "normal", 1), images),
    }
    rows: dict[str, Any] = {}
    for name, (raw, data) in cases.items():
        clock = _GpuClock(steps, warm)
        train(
            validate_config(raw),
            work / f"gpu-{len(rows)}",
            data=data,
            overwrite=True,
            stop_at_step=1,
            callbacks=[clock],
        )
        ms = 1e3 * clock.seconds / steps
        achieved = clock.flops / (ms / 1e3) / 1e9
        rows[name] = {
            "ms_per_step": ms,
            "images_per_second": 256 / (ms / 1e3),
            "flops_per_step": clock.flops,
            "achieved_gflops": achieved,
            "share_of_peak": achieved / peak["gflops"],
        }
    start = time.perf_counter()
    _hand_loop(synthetic, warm + steps, device=device)
    hand_total = time.perf_counter() - start
    start = time.perf_counter()
    _hand_loop(synthetic, warm, device=device)
    hand_ms = 1e3 * (hand_total - (time.perf_counter() - start)) / steps
    return {
        "device": peak["device"],
        "batch_size": 256,
        "steps": steps,
        "matmul": peak,
        "results": rows,
        "hand_loop_ms_per_step": hand_ms,
        "edvae_over_vae_std": rows["edvae (synthetic)"]["ms_per_step"] / rows["vae-std (synthetic)"]["ms_per_step"],
    }
