"""Where a run executes: ``cpu``, ``gpu`` or ``auto``, resolved to one torch device.

The choice is ``train.accelerator`` (``--accelerator`` of ``edvae train`` and ``edvae
reproduce``, ``edvae.fit(accelerator=...)``) for training, and ``edvae evaluate --accelerator``
/ ``Run.evaluate(accelerator=...)`` for evaluation. ``gpu`` means CUDA (or Apple's MPS) and is
refused with one line on a machine where torch sees none. ``auto`` is
:func:`choose_accelerator`: the GPU only where a pass of the networks is big enough to pay for
the GPU's fixed cost per kernel launch (docs/performance.md, "GPU").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from edvae.config import ModelConfig
from edvae.errors import EdvaeError

__all__ = [
    "ACCELERATORS",
    "AUTO_GPU_MIN_MACS",
    "PLACEMENT",
    "accelerator_device",
    "choose_accelerator",
    "gpu_available",
    "network_macs",
]

#: The ``train.*`` settings that say where and how a run executes, not what it computes: a run
#: may resume with other values, and a study reuses a finished run whatever they were.
PLACEMENT = ("devices", "num_nodes", "accelerator", "threads", "progress", "rendezvous_timeout")

#: The values of ``train.accelerator`` and of every ``--accelerator`` option.
ACCELERATORS = ("cpu", "gpu", "auto")

#: ``auto`` picks the GPU for a pass of at least this many forward multiply-adds (one training
#: step's batch through encoder and decoder, or one evaluation chunk of K importance samples).
#: Below it a GPU step is bound by kernel launches and host synchronisation, not arithmetic,
#: and one CPU core is as fast. Between the paper study's MLP (about 9.6e6 per step at batch
#: 256) and the real study's MNIST-size MLP (about 1.4e8 at batch 128); the conv network on
#: 28x28 images is about 1.3e9 at batch 256. Measured with scripts/gpu_check.sh (its
#: ``auto_rule`` section); adjust here.
AUTO_GPU_MIN_MACS = 50_000_000


def gpu_available() -> bool:
    """True when torch sees a GPU it can train on (CUDA, or MPS on Apple silicon)."""
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def network_macs(config: ModelConfig, x_shape: Sequence[int]) -> tuple[int, int]:
    """Forward multiply-adds of the encoder and of the decoder for ONE example of shape
    ``x_shape``, ``(encoder, decoder)``: counted by torch's FLOP counter on the ``meta`` device
    (nothing is allocated or computed; matrix products and convolutions count, element-wise
    operations do not), halved from FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from edvae.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder

    x_shape = tuple(int(s) for s in x_shape)
    with torch.device("meta"):
        if config.network == "mlp":
            encoder: torch.nn.Module = MLPEncoder(x_shape, config.latent_dim, config.hidden)
            decoder: torch.nn.Module = MLPDecoder(x_shape, config.latent_dim, list(reversed(config.hidden)))
        else:
            encoder, decoder = ConvEncoder(x_shape, config.latent_dim), ConvDecoder(x_shape, config.latent_dim)
        x, z = torch.empty(1, *x_shape), torch.empty(1, config.latent_dim)
        counts = []
        for network, inputs in ((encoder, x), (decoder, z)):
            with FlopCounterMode(display=False) as counter:
                network(inputs)
            counts.append(int(counter.get_total_flops()) // 2)
    return counts[0], counts[1]


def choose_accelerator(requested: str, macs: int, *, setting: str = "accelerator") -> str:
    """``"cpu"`` or ``"gpu"`` for a ``requested`` accelerator (``cpu``, ``gpu`` or ``auto``) and
    the forward multiply-adds ``macs`` of one pass (:func:`network_macs` times the rows of the pass).

    The rule of ``auto``: ``"gpu"`` when torch sees a GPU and ``macs >= AUTO_GPU_MIN_MACS``,
    else ``"cpu"``. The paper's networks (MLP [128, 128], 2-D latent, batch 256) stay on the
    CPU, where one core trains them as fast as a GPU; conv networks on images and wide MLPs on
    MNIST-size data go to the GPU. ``"gpu"`` on a machine without one raises :class:`EdvaeError`
    naming ``setting``.
    """
    if requested not in ACCELERATORS:
        raise EdvaeError(f"{setting} must be one of {', '.join(ACCELERATORS)}, got {requested!r}")
    if requested == "gpu" and not gpu_available():
        raise EdvaeError(
            f"{setting}='gpu' but torch sees no GPU on this machine; "
            f"use {setting}=cpu (or auto, which falls back to the CPU)"
        )
    chosen = requested
    if requested == "auto":
        chosen = "gpu" if gpu_available() and macs >= AUTO_GPU_MIN_MACS else "cpu"
    if chosen == "gpu":
        strict_float32()
    return chosen


def strict_float32() -> None:
    """Keep float32 arithmetic float32 on CUDA: no TF32 in matrix products or cuDNN convolutions.

    torch leaves TF32 off for matrix products but on for cuDNN convolutions; TF32 rounds their
    inputs to 10 mantissa bits (relative error ~1e-3 instead of ~1e-7), which would make a conv
    model trained or evaluated on a GPU differ from the published float32 numbers by more than
    float32 rounding. Called whenever :func:`choose_accelerator` picks the GPU."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def accelerator_device(accelerator: str) -> torch.device:
    """The torch device of a resolved accelerator: ``cpu``, or ``cuda`` (the current CUDA device;
    ``mps`` where only Apple's GPU exists) for ``gpu``."""
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator == "gpu":
        return torch.device("cuda" if torch.cuda.is_available() else "mps")
    raise EdvaeError(f"accelerator must be 'cpu' or 'gpu' here (resolve 'auto' first), got {accelerator!r}")
