"""Time and peak memory of the estimators against the batch size and the data-set size,
each point in a fresh subprocess."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from edvae.errors import EdvaeError

_PROBE = """
import json, sys, time
import torch
from torch.distributions import Independent, Normal
from edvae.estimators import dataset_decomposition, log_aggregate_posterior

mode, n, d, queries, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if threads:
    torch.set_num_threads(threads)

def inputs(n, dim, grad):
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(n, dim, generator=g)
    logvar = torch.full((n, dim), -1.0)
    z = mu + 0.6 * torch.randn(n, dim, generator=g)
    return [t.requires_grad_(grad) for t in (z, mu, logvar)]

def run(n, dim):
    if mode == "dataset":
        prior = Independent(Normal(torch.zeros(dim), torch.ones(dim)), 1)
        _, mu, logvar = inputs(n, dim, False)
        return dataset_decomposition(mu, logvar, prior, num_queries=min(n, queries),
                                     generator=torch.Generator().manual_seed(1)).mi.item()
    grad = mode == "grad"
    z, mu, logvar = inputs(n, dim, grad)
    out = log_aggregate_posterior(z, mu, logvar, dataset_size=10 * n, method="mss")
    if grad:
        out.sum().backward()
        assert torch.isfinite(mu.grad).all() and torch.isfinite(logvar.grad).all()
    return out.sum().item()

def status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

run(64, d)  # warm-up
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
except OSError:
    pass
before = status_kib("VmRSS")
walls, cpus = [], []
while not walls or (sum(walls) < 1.0 and len(walls) < 5):  # short calls: the fastest of a few
    start, cpu = time.perf_counter(), time.process_time()
    run(n, d)
    walls.append(time.perf_counter() - start)
    cpus.append(time.process_time() - cpu)
seconds, cpu = min(walls), min(cpus)
peak = status_kib("VmHWM")
print(json.dumps({"peak_increase_mib": (peak - before) / 1024, "seconds": seconds, "cpu_seconds": cpu,
                  "rss_before_mib": before / 1024, "threads": torch.get_num_threads()}))
"""


def peak_memory(
    mode: str, size: int, dim: int, *, queries: int = 10_000, threads: int = 0, timeout: float = 600
) -> dict[str, float]:
    """Time and peak extra memory of one estimator call, in a fresh Python process (Linux).

    ``mode``: ``"grad"`` (MSS ``log_aggregate_posterior`` forward and backward, B = ``size``,
    N = 10 B), ``"forward"`` (the same without gradients) or ``"dataset"``
    (:func:`edvae.estimators.dataset_decomposition` over N = ``size`` posteriors at
    min(N, ``queries``) query points). Calls shorter than a second are repeated (up to 5 in
    all) and the fastest is reported. The peak increase is VmHWM (the high-water mark of
    resident memory, /proc/self/status) after the call minus VmRSS before it, after a small
    warm-up, with the high-water mark first reset to the current RSS through
    /proc/self/clear_refs where the kernel allows it (otherwise the value errs on the high
    side). ``ru_maxrss`` is not used: Linux carries it over from the parent across fork and
    exec. ``threads`` = 0 keeps torch's default.
    """
    if not sys.platform.startswith("linux"):
        raise EdvaeError(f"peak_memory reads /proc/self/status, which {sys.platform} lacks; run it on Linux")
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, str(size), str(dim), str(queries), str(threads)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"memory probe {mode} {size} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _slope(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) against log(size)."""
    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def scaling(*, quick: bool, out_dir: Path, threads: int) -> dict[str, Any]:
    """MSS time/memory against B (D = 16), full decomposition against N, slopes and plot."""
    dim = 16
    batches = [256, 1024] if quick else [256, 1024, 4096, 16384]
    sizes, queries = ([2000, 8000], 1000) if quick else ([10_000, 50_000], 10_000)
    mss = [{"B": b, **peak_memory("grad", b, dim, threads=threads)} for b in batches]
    full = [
        {"N": n, "queries": min(n, queries), **peak_memory("dataset", n, dim, queries=queries, threads=threads)}
        for n in sizes
    ]
    result = {
        "dim": dim,
        "threads": threads,
        "mss_forward_backward": mss,
        "dataset_decomposition": full,
        "slope_mss_time_vs_B": _slope(batches, [p["seconds"] for p in mss]),
        "slope_mss_time_vs_B_largest_two": _slope(batches[-2:], [p["seconds"] for p in mss[-2:]]),
        "slope_dataset_time_vs_N": _slope(sizes, [p["seconds"] for p in full]),
    }
    result["plot"] = _plot_scaling(result, out_dir / "scaling.png")
    return result


def _plot_scaling(result: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, var, slope, title in (
        (
            axes[0],
            "mss_forward_backward",
            "B",
            result["slope_mss_time_vs_B"],
            f"MSS forward + backward, D = {result['dim']}",
        ),
        (
            axes[1],
            "dataset_decomposition",
            "N",
            result["slope_dataset_time_vs_N"],
            "dataset_decomposition, S = min(N, queries)",
        ),
    ):
        xs = [p[var] for p in result[key]]
        ys = [p["seconds"] for p in result[key]]
        ax.loglog(xs, ys, "o", label="measured")
        xm, ym = math.exp(sum(map(math.log, xs)) / len(xs)), math.exp(sum(map(math.log, ys)) / len(ys))
        ax.loglog(xs, [ym * (x / xm) ** slope for x in xs], "-", label=f"fit: slope {slope:.2f}")
        ax.set_xlabel(var)
        ax.set_ylabel("seconds")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name
