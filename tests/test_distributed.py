"""Distributed training: W processes on CPU (gloo) compute exactly what one process computes.

* The ED objective's terms (reduced across processes) and the gradients (after DDP's average)
  on a global batch equal the single-process ones, for a fixed, a learned and a VampPrior.
* Each epoch's global batches are split across processes without overlap.
* ``edvae train --devices 2`` (and its resume) trains the model one process trains, with
  validation reduced across processes, and ``edvae evaluate`` reads its checkpoint.

Only localhost: a file:// rendezvous for the spawned workers, 127.0.0.1 for Fabric.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Light imports only: the spawned workers import this module (the trainer, with Lightning, is
# imported inside the tests that need it).
from edvae import priors
from edvae.distributed import gather_columns, world_size
from edvae.model import VAE
from edvae.networks import GaussianLikelihood, MLPDecoder, MLPEncoder
from edvae.objectives import ed_elbo

WORLD = 2
BATCH = 16
N_TRAIN = 1000  # dataset_size N of the estimators
X_DIM, LATENT = 5, 2

# (prior, mi_estimator, entropy_estimator, mi_weight, entropy_weight): weights != 1 so that
# log q_hat(z) does not cancel out of the loss and its gradient through the gathered columns counts.
CASES = [
    ("mog_ring", "mss", "mss", 0.5, 2.0),
    ("mixture", "batch", "mss", 2.0, 0.5),
    ("vamp", "mws", "mws", 0.0, 1.5),
    ("normal", "infonce", "batch", 0.5, 2.0),
]

_RENDEZVOUS_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "TORCHELASTIC_RUN_ID",
    "PL_GLOBAL_SEED",
)


# ----------------------------------------------------------------------------- (a) equality


def _model(prior_name: str) -> VAE:
    torch.manual_seed(0)
    encoder = MLPEncoder((X_DIM,), LATENT, [8])
    decoder = MLPDecoder((X_DIM,), LATENT, [8])
    if prior_name == "vamp":
        prior = priors.make("vamp", LATENT, encoder=encoder, input_shape=(X_DIM,), n_components=4)
    elif prior_name == "mixture":
        prior = priors.make("mixture", LATENT, n_components=3)
    else:
        prior = priors.make(prior_name, LATENT)
    return VAE(encoder, decoder, GaussianLikelihood((X_DIM,)), prior, LATENT)


def _step(case: tuple, rank: int, world: int) -> dict[str, dict[str, torch.Tensor]]:
    """One step on the global batch: this process's shard, gathered columns, DDP gradients.

    Returns the objective terms (mean over processes) and every parameter's gradient.
    """
    prior_name, mi_estimator, entropy_estimator, mi_weight, entropy_weight = case
    model = _model(prior_name)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, X_DIM, generator=gen)
    eps = torch.randn(BATCH, LATENT, generator=gen)
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)  # as edvae.training.shard_rows
    step_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    out = step_model(x[rows], eps[rows])
    mu, logvar, offset = gather_columns(out.mu, out.logvar)
    obj = ed_elbo(
        out.log_px,
        out.z,
        mu,
        logvar,
        model.prior_distribution(),
        dataset_size=N_TRAIN,
        mi_estimator=mi_estimator,
        entropy_estimator=entropy_estimator,
        mi_weight=mi_weight,
        entropy_weight=entropy_weight,
        row_offset=offset,
    )
    obj.loss.backward()
    names = list(obj.terms)
    terms = torch.stack([obj.terms[k] for k in names])
    if world > 1:
        dist.all_reduce(terms)  # every term is a mean over R rows: the mean of the means
        terms /= world
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return {"terms": dict(zip(names, terms, strict=True)), "grads": grads}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        assert world_size() == world
        results = [_step(case, rank, world) for case in CASES]
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> list[list[dict]]:
    """Results of the W-process steps, one list per rank (spawned once for the module)."""
    tmp = tmp_path_factory.mktemp("spawn")
    mp.spawn(_worker, args=(WORLD, str(tmp / "rendezvous"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_terms_and_gradients_of_two_processes_equal_one_process(spawned, index):
    single = _step(CASES[index], rank=0, world=1)
    errors = {}
    for rank in range(WORLD):
        multi = spawned[rank][index]
        assert multi["terms"].keys() == single["terms"].keys()
        assert multi["grads"].keys() == single["grads"].keys()
        for kind in ("terms", "grads"):
            for name, value in single[kind].items():
                torch.testing.assert_close(multi[kind][name], value, rtol=1e-5, atol=1e-5, msg=f"{kind} {name}")
                errors[kind] = max(errors.get(kind, 0.0), float((multi[kind][name] - value).abs().max()))
    # the gradients are not trivially zero, and they reach the prior's parameters if it has any
    assert any(g.abs().max() > 1e-3 for g in single["grads"].values())
    if CASES[index][0] in ("mixture", "vamp"):
        assert any(name.startswith("prior.") for name in single["grads"])
    print(
        f"\n{CASES[index][0]}: max |2 processes - 1 process|: terms {errors['terms']:.2e}, gradients "
        f"{errors['grads']:.2e}"
    )


# ----------------------------------------------------------------------------- data split


@pytest.mark.parametrize("n, batch_size, world", [(512, 64, 2), (1000, 96, 4), (10, 3, 3), (7, 2, 1)])
def test_each_epoch_splits_the_global_batches_across_processes_without_overlap(n, batch_size, world):
    from edvae.training import epoch_order, rank_indices

    for epoch in (0, 1):
        shards = [rank_indices(n, batch_size, 0, epoch, rank, world) for rank in range(world)]
        per_rank = batch_size // world
        assert all(s.shape == (n // batch_size, per_rank) for s in shards)
        seen = torch.cat([s.reshape(-1) for s in shards])
        assert seen.unique().numel() == seen.numel()  # no example twice in an epoch
        used = epoch_order(n, 0, epoch)[: (n // batch_size) * batch_size]
        assert torch.equal(seen.sort().values, used.sort().values)  # exactly the global batches
        # global batch k is the concatenation of the ranks' k-th shards, in rank order
        assert torch.equal(torch.cat(shards, dim=1).reshape(-1), used)


def test_a_batch_that_does_not_split_evenly_is_refused_before_any_process_starts(tmp_path):
    from edvae.config import validate_config
    from edvae.errors import EdvaeError
    from edvae.training import train

    config = validate_config(json.loads('{"train": {"batch_size": 64, "devices": 3}}'))
    with pytest.raises(EdvaeError, match="batch_size=64 must be divisible by the number of processes"):
        train(config, tmp_path / "run")
    assert not dist.is_initialized()


# ----------------------------------------------------------------------------- (b) end to end

TINY_TOML = """
name = "tiny-ddp"
[data]
name = "complex"
options = { n_train = 512, n_val = 256, n_test = 256 }
[model]
latent_dim = 2
hidden = [32, 32]
prior = "true"
[objective]
kind = "ed"
OBJECTIVE_OPTIONS
[train]
epochs = 2
batch_size = 64
lr = 3e-3
progress = false
log_every = 2
[eval]
iwae_samples = 20
"""


def _edvae(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in _RENDEZVOUS_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    script = Path(sys.executable).with_name("edvae")  # the console script, as users run it
    command = [str(script), *args] if script.is_file() else [sys.executable, "-m", "edvae.cli", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _evaluate(run_dir: Path) -> dict[str, float]:
    from typer.testing import CliRunner

    from edvae.cli import app

    result = CliRunner().invoke(app, ["evaluate", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective_options",
    [
        "entropy_weight = 1.5",
        "",
        'mi_estimator = "infonce"\nmi_weight = -1.0\ncritic = "bilinear"',
        'mi_estimator = "infonce"\nmi_weight = -1.0\ncritic = "mlp"',
        'mi_estimator = "infonce"\nmi_weight = -1.0\ncritic = "momentum"',
    ],
    ids=["weighted", "unit-weights", "bilinear-critic", "mlp-critic", "momentum-critic"],
)
def test_two_process_training_and_resume_match_one_process(tmp_path, objective_options):
    """``edvae train --devices 2`` for one epoch, then ``--resume --devices 2`` to two epochs,
    ends where one process ends: same logs (validation reduced across processes), same
    parameters, same ``edvae evaluate`` metrics. With unit weights log q(z) cancels from the
    loss, and the processes gather the batch's posteriors only on logged steps."""
    from edvae.config import load_config, validate_config
    from edvae.objective_kinds import build_objective
    from edvae.training import train

    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TINY_TOML.replace("OBJECTIVE_OPTIONS", objective_options))
    objective = validate_config(load_config(config_path)).objective
    built = build_objective(objective, dataset_size=1)
    assert built.reads_batch_columns(diagnostics=False) == bool(objective_options)
    assert built.reads_batch_columns(diagnostics=True)
    one, two = tmp_path / "one", tmp_path / "two"
    train(validate_config(load_config(config_path)), one)

    first = _edvae(
        "train", str(config_path), "--out", str(two), "--devices", "2", "--set", "train.epochs=1", cwd=tmp_path
    )
    assert first.stdout.count("trained 8 steps") == 1  # rank 0 alone reports
    second = _edvae("train", "--resume", str(two), "--devices", "2", "--set", "train.epochs=2", cwd=tmp_path)
    assert second.stdout.count("trained 16 steps") == 1
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())

    saved_one = torch.load(one / "checkpoint.pt", weights_only=True)
    saved_two = torch.load(two / "checkpoint.pt", weights_only=True)
    assert saved_two["world_size"] == 2 and saved_two["step"] == saved_one["step"] == 16
    assert saved_two["completed"]
    for name, value in saved_one["model"].items():
        torch.testing.assert_close(saved_two["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    # An objective with state of its own (a critic's weights, a momentum queue) ends the same too,
    # every weight included (the MLP critic has no column bias, which InfoNCE cannot see and Adam
    # would move by rounding noise alone).
    assert ("objective" in saved_two) == ("objective" in saved_one) == ("critic" in objective_options)
    if "objective" in saved_one:
        critic_one, critic_two = saved_one["objective"]["critic"], saved_two["objective"]["critic"]
        # Adam amplifies rounding in entries with near-zero gradients; a missing gradient average
        # would move a weight by up to lr x steps = 0.05, far outside this tolerance
        torch.testing.assert_close(critic_two, critic_one, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(
            {k: v for k, v in saved_two["objective"].items() if k != "critic"},
            {k: v for k, v in saved_one["objective"].items() if k != "critic"},
            rtol=1e-4,
            atol=1e-5,
        )

    log_one, log_two = _log(one), _log(two)
    assert [(r["split"], r["step"]) for r in log_two] == [(r["split"], r["step"]) for r in log_one]
    worst_log = max(
        abs(b[k] - a[k]) / max(1.0, abs(a[k]))
        for a, b in zip(log_one, log_two, strict=True)
        for k in a
        if k not in ("split", "step", "epoch")
    )
    assert worst_log < 1e-4

    metrics_one, metrics_two = _evaluate(one), _evaluate(two)
    assert metrics_two.keys() == metrics_one.keys()
    unseeded = ("prior_swd", "train_seconds")  # prior samples drawn from the global RNG; wall time
    worst_eval = max(abs(metrics_two[k] - v) / max(1.0, abs(v)) for k, v in metrics_one.items() if k not in unseeded)
    assert worst_eval < 1e-4, (metrics_one, metrics_two)
    print(
        f"\n1 vs 2 processes: max relative difference of logged terms {worst_log:.2e}, of evaluation metrics "
        f"{worst_eval:.2e}"
    )
