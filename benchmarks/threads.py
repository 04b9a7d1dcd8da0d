"""How many torch threads a training process should use on this machine, measured.

For each network of the studies it times training steps (forward, ED objective, backward,
Adam) with torch threads in {1, 2, torch's default} under two conditions: the machine as it is
("idle") and with one competing CPU-bound process (``python -c "while True: pass"``) started by
this script. Measurements are interleaved (every repeat runs every thread count in a shuffled
order, first idle then contended), so slow drifts of a shared machine's load fall on every
setting alike; it reports the median time per step over the repeats and the load average.

Networks:

* ``synthetic``: the studies' MLP (16-D data, hidden [128, 128], 2-D latent), batch 256;
* ``mnist``: the real-data study's MLP (784 inputs, hidden [512, 256], 16-D latent, Bernoulli),
  batch 128.

Usage:  env -u OMP_NUM_THREADS python benchmarks/threads.py [--repeats 5] [--steps 20]
Prints a Markdown table (ms per step, median over repeats).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

import torch

DEFAULT_THREADS = torch.get_num_threads()  # read before anything changes it
NETWORKS = {
    "synthetic": {"x_dim": 16, "hidden": [128, 128], "latent": 2, "batch": 256, "likelihood": "gaussian"},
    "mnist": {"x_dim": 784, "hidden": [512, 256], "latent": 16, "batch": 128, "likelihood": "bernoulli"},
}


def _setup(spec: dict):
    from edvae.config import ModelConfig, ObjectiveConfig
    from edvae.data import DataSplits
    from edvae.model import build_model
    from edvae.objective_kinds import build_objective

    gen = torch.Generator().manual_seed(0)
    x = torch.rand((spec["batch"], spec["x_dim"]), generator=gen)
    data = DataSplits("bench", x, x[:2], x[:2], (spec["x_dim"],), spec["likelihood"])
    model = build_model(ModelConfig(latent_dim=spec["latent"], hidden=spec["hidden"]), data)
    objective = build_objective(ObjectiveConfig(kind="ed"), 10_000)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    eps = torch.randn((spec["batch"], spec["latent"]), generator=gen)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(x, eps)
        obj = objective(out, model.prior_distribution(), out.mu, out.logvar, 0, diagnostics=False)
        obj.loss.backward()
        optimizer.step()

    return step


def _time_steps(step, threads: int, steps: int, budget: float) -> float:
    """Mean seconds per step over ``steps`` steps (fewer if ``budget`` seconds run out)."""
    torch.set_num_threads(threads)
    for _ in range(2):
        step()
    started = time.perf_counter()
    done = 0
    while done < steps and (done == 0 or time.perf_counter() - started < budget):
        step()
        done += 1
    return (time.perf_counter() - started) / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--budget", type=float, default=4.0, help="seconds at most per measurement")
    args = parser.parse_args()
    if "OMP_NUM_THREADS" in os.environ:
        print(
            f"note: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} fixes torch's default; unset it to measure the "
            "default"
        )
    counts = {"1": 1, "2": 2, f"default ({DEFAULT_THREADS})": DEFAULT_THREADS}
    steps = {name: _setup(spec) for name, spec in NETWORKS.items()}
    times: dict[tuple[str, str, str], list[float]] = {}
    loads: dict[str, list[float]] = {"idle": [], "contended": []}
    rng = random.Random(0)
    for repeat in range(args.repeats):
        for condition in ("idle", "contended"):
            competitor = (
                subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition == "contended" else None
            )
            try:
                if competitor is not None:
                    time.sleep(0.5)
                order = [(n, c) for n in NETWORKS for c in counts]
                rng.shuffle(order)
                for network, label in order:
                    seconds = _time_steps(steps[network], counts[label], args.steps, args.budget)
                    times.setdefault((network, condition, label), []).append(seconds)
                loads[condition].append(os.getloadavg()[0])
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    print(f"{os.cpu_count()} CPUs; torch default threads {DEFAULT_THREADS}; {args.repeats} interleaved repeats")
    for condition, values in loads.items():
        print(
            f"1-min load average ({condition}): median {statistics.median(values):.2f}, range "
            f"{min(values):.2f}-{max(values):.2f}"
        )
    print()
    print("| network | condition | " + " | ".join(f"{c} thr (ms/step)" for c in counts) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in counts) + " |")
    for network in NETWORKS:
        for condition in ("idle", "contended"):
            cells = [f"{1e3 * statistics.median(times[(network, condition, c)]):.1f}" for c in counts]
            print(f"| {network} | {condition} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
