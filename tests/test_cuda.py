"""CUDA: every prior x objective trains and evaluates on a GPU, checkpoints cross CPU <-> GPU,
and the first step's loss matches the CPU's for the same seed. Skipped where torch sees no GPU
(tests/test_device.py checks device placement everywhere, on the meta device)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from edvae.config import EvalConfig
from edvae.evaluate import evaluate_model
from test_device import N_TEST, PRIORS, TRAINING_CASES, cpu_model, data, objective_for, outcome, train_step  # noqa: F401

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
#: float32 on two devices: the same operations in another order (reductions, GEMM kernels)
RTOL, ATOL = 1e-4, 1e-4


@pytest.mark.parametrize("prior_id, objective_id", TRAINING_CASES)
def test_first_step_on_cuda_matches_cpu(prior_id, objective_id, data, tmp_path_factory, tiny_config):  # noqa: F811
    """Same weights, same noise (a CPU generator): the first step's loss and every term agree
    with the CPU's within float32 tolerance, and every parameter stays on the GPU."""
    from test_device import OBJECTIVE_CASES

    case = OBJECTIVE_CASES[objective_id]
    cpu = cpu_model(prior_id, data, tmp_path_factory, tiny_config)
    gpu = copy.deepcopy(cpu).to(CUDA)

    def objective(model):  # a learned critic starts from the same weights on both devices
        torch.manual_seed(0)
        return objective_for(case, tiny_config, model)

    expected, cpu_result = outcome(lambda: train_step(cpu, objective(cpu), data))
    status, gpu_result = outcome(lambda: train_step(gpu, objective(gpu), data))
    assert status == expected, gpu_result
    if status == "refused":
        return
    (_, want), (_, got) = cpu_result, gpu_result
    assert got.loss.device.type == "cuda"
    torch.testing.assert_close(got.loss.cpu(), want.loss, rtol=RTOL, atol=ATOL)
    for name, value in want.terms.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(got.terms[name].cpu(), value, rtol=RTOL, atol=ATOL)
    assert all(p.device.type == "cuda" for p in gpu.parameters())


@pytest.mark.parametrize("prior_id", list(PRIORS))
def test_evaluation_on_cuda_matches_cpu(prior_id, data, tmp_path_factory, tiny_config):  # noqa: F811
    """Evaluation of a model on the GPU, data on the CPU: the metrics drawn from the evaluation's
    CPU generator agree with the CPU's (prior_swd samples the prior on the GPU's generator)."""
    config = EvalConfig(iwae_samples=5, batch_size=8)
    true_ll = torch.zeros(N_TEST, dtype=torch.float64)
    cpu = cpu_model(prior_id, data, tmp_path_factory, tiny_config)
    want = evaluate_model(cpu, data, config, true_ll=true_ll)
    got = evaluate_model(copy.deepcopy(cpu).to(CUDA), data, config, true_ll=true_ll)
    assert set(got) == set(want)
    for name in ("elbo", "iwae", "kl", "reconstruction", "mi", "marginal_kl", "ll_gap", "active_units"):
        assert math.isclose(got[name], want[name], rel_tol=1e-3, abs_tol=1e-3), (name, got[name], want[name])


def test_checkpoint_round_trip_gpu_cpu_gpu(tmp_path, tiny_config):
    """Trained on the GPU, loaded and evaluated on the CPU, resumed on the CPU, evaluated on the GPU."""
    from edvae.runs import load_run
    from edvae.training import train

    config = tiny_config(train={"epochs": 1, "accelerator": "gpu"}, eval={"iwae_samples": 5, "true_ll": False})
    run = tmp_path / "run"
    train(config, run)
    model, _, state, run_data = load_run(run)
    assert all(p.device.type == "cpu" for p in model.parameters())
    on_cpu = evaluate_model(model, run_data, config.eval)
    on_gpu = evaluate_model(model.to(CUDA), run_data, config.eval)
    assert math.isclose(on_gpu["elbo"], on_cpu["elbo"], rel_tol=1e-3, abs_tol=1e-3)
    resumed = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 2, "accelerator": "cpu"})})
    train(resumed, run, resume=True)
    model, _, state, _ = load_run(run)
    assert state["epoch"] == 2 and all(math.isfinite(float(p.sum())) for p in model.parameters())
