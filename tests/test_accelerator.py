"""Where runs execute: the ``auto`` rule, the multiply-adds it weighs, a study reused across accelerators."""

from __future__ import annotations

import pytest

import edvae.accelerator as acc
from edvae.accelerator import AUTO_GPU_MIN_MACS, choose_accelerator, network_macs
from edvae.config import EvalConfig, ModelConfig
from edvae.errors import EdvaeError


def test_network_macs_of_an_mlp_are_the_sum_of_its_layer_products():
    enc, dec = network_macs(ModelConfig(hidden=[128, 64], latent_dim=2), (16,))
    assert enc == 16 * 128 + 128 * 64 + 64 * 2 * 2  # the head gives mu and log-variance
    assert dec == 2 * 64 + 64 * 128 + 128 * 16


def test_network_macs_of_the_conv_network_count_every_output_pixel():
    enc, dec = network_macs(ModelConfig(network="conv", latent_dim=16), (1, 28, 28))
    # 4x4 stride-2 convolutions 1 -> 32 (14x14) and 32 -> 64 (7x7), then linear 3136 -> 256 -> 32
    assert enc == 32 * 14 * 14 * 1 * 16 + 64 * 7 * 7 * 32 * 16 + 3136 * 256 + 256 * 32
    # linear 16 -> 256 -> 3136, transposed 4x4 stride-2 convolutions 64 -> 32 (to 14x14 from 7x7) and 32 -> 1
    assert dec == 16 * 256 + 256 * 3136 + 7 * 7 * 64 * 32 * 16 + 14 * 14 * 32 * 1 * 16


@pytest.mark.parametrize("has_gpu", [True, False])
def test_auto_keeps_the_study_mlp_on_the_cpu_and_sends_conv_and_mnist_networks_to_the_gpu(monkeypatch, has_gpu):
    monkeypatch.setattr(acc, "gpu_available", lambda: has_gpu)

    def step(config: ModelConfig, x_shape: tuple[int, ...], batch: int) -> str:
        return choose_accelerator("auto", batch * sum(network_macs(config, x_shape)))

    gpu = "gpu" if has_gpu else "cpu"
    assert step(ModelConfig(), (16,), 256) == "cpu"  # the paper study: [128, 128], 2-D latent, batch 256
    assert step(ModelConfig(latent_dim=16, hidden=[512, 256]), (1, 28, 28), 128) == gpu  # the real study's MLP
    assert step(ModelConfig(network="conv", latent_dim=16), (1, 28, 28), 256) == gpu
    assert (
        choose_accelerator("auto", AUTO_GPU_MIN_MACS) == gpu
        and choose_accelerator("auto", AUTO_GPU_MIN_MACS - 1) == "cpu"
    )
    assert choose_accelerator("cpu", 10**15) == "cpu"


def test_evaluation_weighs_a_chunk_of_importance_samples(monkeypatch):
    from edvae.evaluate import evaluation_accelerator

    monkeypatch.setattr(acc, "gpu_available", lambda: True)
    study = ModelConfig()  # decoder ~1.9e4 multiply-adds per sample
    assert evaluation_accelerator("auto", study, (16,), EvalConfig(iwae_samples=1000)) == "gpu"  # 100 x 1000 samples
    assert evaluation_accelerator("auto", study, (16,), EvalConfig(iwae_samples=1, batch_size=100)) == "cpu"


def test_gpu_without_one_and_unknown_names_are_refused(monkeypatch):
    monkeypatch.setattr(acc, "gpu_available", lambda: False)
    with pytest.raises(EdvaeError, match="train.accelerator='gpu' but torch sees no GPU"):
        choose_accelerator("gpu", 0, setting="train.accelerator")
    with pytest.raises(EdvaeError, match="must be one of cpu, gpu, auto"):
        choose_accelerator("tpu", 0)


def test_a_study_trained_on_one_accelerator_is_reused_on_another(tmp_path):
    """Where a run executed is not part of what it is: a finished study is reused, not
    refused, when ``reproduce --accelerator`` changes."""
    from edvae.experiments import get_study, run_study

    def study():
        chosen = get_study("paper", quick=True, seeds=1)
        chosen.runs = chosen.runs[:1]
        for spec in chosen.runs:
            spec.config = spec.config.model_copy(
                update={
                    "train": spec.config.train.model_copy(update={"epochs": 1}),
                    "eval": spec.config.eval.model_copy(update={"iwae_samples": 5, "true_ll": False}),
                }
            )
        return chosen

    assert run_study(study(), tmp_path, workers=1, progress=False)["plan"]["train"] == 1
    again = run_study(study(), tmp_path, workers=1, progress=False, accelerator="auto")
    assert again["plan"]["reuse"] == 1 and again["plan"]["refuse"] == 0


def test_choosing_the_gpu_turns_tf32_off_for_convolutions_too(monkeypatch):
    """torch turns TF32 on for cuDNN convolutions by default (seen on the H200: cudnn.allow_tf32
    True); a GPU run must keep float32 arithmetic, as the published numbers are float32."""
    import torch

    monkeypatch.setattr(acc, "gpu_available", lambda: True)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        assert choose_accelerator("cpu", 10**12) == "cpu" and torch.backends.cudnn.allow_tf32  # the CPU: untouched
        assert choose_accelerator("gpu", 0) == "gpu"
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
