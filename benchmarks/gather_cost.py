"""What gathering the aggregate posterior's columns costs under DDP, measured.

Two CPU processes (gloo, localhost) train an MLP VAE (16-dimensional data, hidden [128, 128],
latent dimension D) with the ED objective (MSS estimator, entropy weight 1.5 so that log q(z)
stays in the loss) on a global batch of B split in two. For each (B, D) it reports

* the gathered data: mu and logvar, 2 * B * D float32 (3 * B * D if z were gathered too);
* the time of the gather alone: forward all-gather plus backward all-reduce of the (B, 2D)
  columns (``edvae.distributed.gather_rows``), median over steps;
* the time of a whole training step with 2 processes (forward, gather, objective, backward with
  DDP's gradient all-reduce, Adam), median over steps, and the gather's share of it;
* for reference, the step time of 1 process on the whole global batch.

Usage:  python benchmarks/gather_cost.py [--steps 20] [--batch 256 4096] [--dims 2 16]
Prints a Markdown table. Uses only localhost (a file:// rendezvous).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

X_DIM = 16
HIDDEN = [128, 128]
N_TRAIN = 10_000
WORLD = 2


def _setup(batch: int, dim: int, rank: int, world: int):
    from edvae import priors
    from edvae.model import VAE
    from edvae.networks import GaussianLikelihood, MLPDecoder, MLPEncoder

    torch.manual_seed(0)
    model = VAE(
        MLPEncoder((X_DIM,), dim, HIDDEN),
        MLPDecoder((X_DIM,), dim, HIDDEN[::-1]),
        GaussianLikelihood((X_DIM,)),
        priors.make("normal", dim),
        dim,
    )
    step_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, X_DIM, generator=gen)
    eps = torch.randn(batch, dim, generator=gen)
    rows = slice(rank * batch // world, (rank + 1) * batch // world)
    return model, step_model, optimizer, x[rows], eps[rows]


def _step_seconds(batch: int, dim: int, steps: int, rank: int, world: int) -> float:
    from edvae.distributed import gather_columns
    from edvae.objectives import ed_elbo

    model, step_model, optimizer, x, eps = _setup(batch, dim, rank, world)
    times = []
    for i in range(steps + 3):
        if world > 1:
            dist.barrier()
        tick = time.perf_counter()
        out = step_model(x, eps)
        mu, logvar, offset = gather_columns(out.mu, out.logvar)
        obj = ed_elbo(
            out.log_px,
            out.z,
            mu,
            logvar,
            model.prior_distribution(),
            dataset_size=N_TRAIN,
            entropy_weight=1.5,
            row_offset=offset,
            validate=False,
        )
        optimizer.zero_grad(set_to_none=True)
        obj.loss.backward()
        optimizer.step()
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - tick)
    return statistics.median(times)


def _gather_seconds(batch: int, dim: int, steps: int, rank: int, world: int) -> float:
    from edvae.distributed import gather_rows

    columns = torch.randn(batch // world, 2 * dim, requires_grad=True)
    times = []
    for i in range(steps + 3):
        dist.barrier()
        tick = time.perf_counter()
        gathered = gather_rows(columns)  # forward: all-gather
        gathered.sum().backward()  # backward: all-reduce of (B, 2D)
        if i >= 3:
            times.append(time.perf_counter() - tick)
    return statistics.median(times)


def _worker(rank: int, world: int, init_file: str, cases: list, steps: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = []
        for batch, dim in cases:
            gather = _gather_seconds(batch, dim, steps, rank, world)
            step = _step_seconds(batch, dim, steps, rank, world)
            slowest = torch.tensor([gather, step], dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # a step lasts as long as its slowest rank
            rows.append(slowest.tolist())
        if rank == 0:
            torch.save(rows, out)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per case (after 3 warm-up steps)")
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 4096], help="global batch sizes B")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16], help="latent dimensions D")
    parser.add_argument("--no-single", action="store_true", help="skip the 1-process reference")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [(b, d) for b in args.batch for d in args.dims]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rows.pt")
        mp.spawn(_worker, args=(WORLD, str(Path(tmp) / "rendezvous"), cases, args.steps, out), nprocs=WORLD)
        measured = torch.load(out)
    single = [None if args.no_single else _step_seconds(b, d, args.steps, 0, 1) for b, d in cases]

    print(f"{WORLD} processes, gloo on CPU, 1 thread each; torch {torch.__version__}; median of {args.steps} steps\n")
    print(
        "| B | D | gathered: 2BD floats (KiB) | if z too: 3BD (KiB) | gather fwd+bwd (ms) | step, 2 proc. (ms) | "
        "gather share | step, 1 proc. (ms) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (batch, dim), (gather, step), one in zip(cases, measured, single, strict=True):
        two_bd, three_bd = 2 * batch * dim, 3 * batch * dim
        ref = "-" if one is None else f"{1e3 * one:.2f}"
        print(
            f"| {batch} | {dim} | {two_bd} ({two_bd * 4 / 1024:.0f}) | {three_bd} ({three_bd * 4 / 1024:.0f}) "
            f"| {1e3 * gather:.2f} | {1e3 * step:.2f} | {100 * gather / step:.1f}% | {ref} |"
        )


if __name__ == "__main__":
    main()
