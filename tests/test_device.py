"""Every tensor of a step on the model's device, checked without a GPU.

The model is moved to torch's ``meta`` device: tensors there have shapes but no values, and an
operation mixing a meta tensor with a non-scalar CPU tensor raises, exactly as CUDA does with
CPU tensors. So a training step (forward, objective, backward, optimiser step, the critic's
update), a decomposition and the evaluation run with the model on ``meta`` turn every stray CPU
tensor of the library into an error, on any machine.

Meta tensors have no values to read, so :class:`MetaDevice` (one small dispatch mode, active in
these tests only) answers host reads of a meta tensor (``.item()``, ``float(t)``, ``bool(t)``,
``int(t)``) with a stand-in (True, 0.0, 1), a deliberate copy to the CPU (``t.cpu()``, for metrics
computed there by design) with seeded uniform noise, and lets ``nonzero`` find every element non-zero.
The numbers computed on meta mean nothing; the tests check where tensors live and that nothing
raises. It also raises when a random draw uses a generator on another device than its output,
which CUDA refuses and meta would let pass.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal
from torch.utils._python_dispatch import TorchDispatchMode

from edvae import priors
from edvae.config import EvalConfig
from edvae.data import load_dataset
from edvae.errors import EdvaeError
from edvae.estimators import dataset_decomposition, decompose
from edvae.evaluate import evaluate_model
from edvae.model import build_model
from edvae.objective_kinds import OBJECTIVES, build_objective

META = torch.device("meta")


#: the ops through which a tensor's value reaches the host (is_nonzero and item are decomposed
#: into _local_scalar_dense, except in inference mode)
_HOST_READS = (
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.item.default,
    torch.ops.aten.is_nonzero.default,
)


#: samplers whose meta kernel older torch lacks (torch 2.11 has none for _standard_gamma, which
#: Student-t sampling uses; seen on the GPU machine): their output has the input's shape
_NO_META_KERNEL_BEFORE_2_13 = (torch.ops.aten._standard_gamma.default,)


class MetaDevice(TorchDispatchMode):
    """Stand-in values for host reads of meta tensors; generator devices checked (module docstring)."""

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _HOST_READS and args[0].device == META:
            tensor = args[0]
            if func is torch.ops.aten.is_nonzero.default or tensor.dtype == torch.bool:
                return True
            return 0.0 if tensor.is_floating_point() else 1
        if func is torch.ops.aten.nonzero.default and args[0].device == META:  # every element non-zero
            return torch.empty(args[0].numel(), args[0].dim(), dtype=torch.long, device=META)
        generator = kwargs.get("generator")
        if generator is not None:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            out = kwargs.get("device") or (tensors[0].device if tensors else torch.device("cpu"))
            if torch.device(out).type != generator.device.type:
                raise RuntimeError(f"{func}: a generator on {generator.device} draws on {out}")
        try:
            return func(*args, **kwargs)
        except NotImplementedError as err:  # a deliberate copy to the CPU (.cpu(), .to("cpu"), for
            if func in _NO_META_KERNEL_BEFORE_2_13 and args[0].device == META:  # a shape-preserving sampler
                return torch.empty_like(args[0])
            if "Cannot copy out of meta tensor" not in str(err):  # metrics computed there by design)
                raise
            dtype = kwargs.get("dtype") or next((a for a in args if isinstance(a, torch.dtype)), args[0].dtype)
            return torch.rand(args[0].shape, generator=torch.Generator().manual_seed(0)).to(dtype)  # seeded noise


def test_meta_device_catches_a_stray_cpu_tensor():
    """The mechanism itself: a CPU tensor beside a meta one raises; a CPU scalar is fine."""
    z = torch.zeros(4, 2, device=META)
    with MetaDevice():
        with pytest.raises(RuntimeError):
            z + torch.ones(2)
        with pytest.raises(RuntimeError, match="generator"):
            torch.randn(3, generator=torch.Generator().manual_seed(0), device=META)
        assert (z + torch.tensor(1.0)).device == META
        assert bool((z > 0).all()) and float(z.sum()) == 0.0


# ------------------------------------------------------------------------------ the matrix
DIM = 2
N_TRAIN, N_TEST, BATCH = 64, 24, 16


@pytest.fixture(scope="module")
def data():
    return load_dataset("complex", n_train=N_TRAIN, n_val=16, n_test=N_TEST, hidden_sizes=(8,))


class OnesPrior(nn.Module):
    """A user's prior done right: its tensors are buffers."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(dim))

    def forward(self) -> Independent:
        return Independent(Normal(torch.zeros_like(self.scale), self.scale), 1)


class StrayPrior(nn.Module):
    """A user's prior done wrong: ``forward()`` builds its tensors on the CPU."""

    def forward(self) -> Independent:
        return Independent(Normal(torch.zeros(DIM), torch.ones(DIM)), 1)


#: every registered prior (plus both fits of ``samples``, a ready-made Distribution as
#: edvae.fit wraps it, and a user's module), by test id: name and options
PRIORS: dict[str, tuple[str, dict[str, Any]]] = {
    **{name: (name, {}) for name in priors.names(in_model=True) if name not in ("samples", "flow")},
    "flow": ("flow", {"transforms": 1, "hidden_features": [8]}),  # one transform: meta runs ops slowly
    "samples-kde": ("samples", {"method": "kde", "bandwidth": "cv"}),
    "samples-flow": ("samples", {"method": "flow", "flow_steps": 2}),
    "user-distribution": ("user-distribution", {}),
    "user-module": ("user-module", {}),
}

#: every objective kind, the ED objective with each estimator, and each InfoNCE critic
OBJECTIVE_CASES: dict[str, dict[str, Any]] = {
    **{kind: {"kind": kind} for kind in OBJECTIVES if kind != "ed"},
    "elbo-mc": {"kind": "elbo", "kl": "mc"},
    **{f"ed-{e}": {"kind": "ed", "mi_estimator": e, "entropy_estimator": e} for e in ("mss", "mws", "batch")},
    **{
        f"ed-infonce-{critic}": {
            "kind": "ed",
            "mi_estimator": "infonce",
            "critic": critic,
            "critic_options": {"queue_size": 8} if critic == "momentum" else {},
        }
        for critic in ("encoder", "bilinear", "mlp", "momentum")
    },
}

_MODELS: dict[str, Any] = {}


def cpu_model(prior_id: str, data, tmp_path_factory, tiny_config):
    """A fresh copy of the model with this prior, built once per prior (on the CPU)."""
    if prior_id not in _MODELS:
        name, options = PRIORS[prior_id]
        if name == "samples":
            path = tmp_path_factory.mktemp("samples") / "s.npy"
            np.save(path, np.random.default_rng(0).normal(size=(200, DIM)))
            options = {**options, "path": str(path)}
        user = name.startswith("user-")
        cfg = tiny_config(
            model={"latent_dim": DIM, "hidden": [8], "prior": "normal" if user else name, "prior_options": options}
        )
        torch.manual_seed(0)
        model = build_model(cfg.model, data)
        if name == "user-distribution":
            model.prior = priors.as_prior(priors.make("mog_ring", DIM)())
        elif name == "user-module":
            model.prior = OnesPrior(DIM)
        _MODELS[prior_id] = model
    return copy.deepcopy(_MODELS[prior_id])


def objective_for(case: dict[str, Any], tiny_config, model):
    cfg = tiny_config(objective=case)
    objective = build_objective(cfg.objective, N_TRAIN)
    objective.setup(model)
    return objective


def train_step(model, objective, data, seed: int = 0):
    """One step as the trainer takes it (forward, objective, backward, optimiser step,
    after_step), on the model's device; returns the model output and the objective. (SGD, not
    the trainer's Adam: the optimiser is torch's, and meta runs every op slowly.)"""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(N_TRAIN, generator=gen)[:BATCH]
    x = data.train[rows].to(device)
    eps = torch.randn(BATCH, DIM, generator=gen).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + objective.parameters()
    optimizer = torch.optim.SGD(params, lr=1e-3)
    out = model(x, eps)
    inputs = {"x": x} if objective.reads_inputs else {}
    result = objective(out, model.prior_distribution(), out.mu, out.logvar, 0, diagnostics=True, **inputs)
    optimizer.zero_grad()
    result.loss.backward()
    optimizer.step()
    objective.after_step(model, applied=True)
    return out, result


def outcome(fn) -> tuple[str, Any]:
    """("ok", value) or ("refused", the EdvaeError's message)."""
    try:
        return "ok", fn()
    except EdvaeError as err:
        return "refused", str(err)


#: (prior, objective) pairs: every prior x every objective, except that the flow fitted to
#: samples (a FlowPrior with three transforms, as "flow" but slower on meta) takes one objective
TRAINING_CASES = [
    (p, o) for p in PRIORS for o in OBJECTIVE_CASES if p != "samples-flow" or o in ("ed-mss", "ed-infonce-momentum")
]


@pytest.mark.parametrize("prior_id, objective_id", TRAINING_CASES)
def test_training_step_on_meta(prior_id, objective_id, data, tmp_path_factory, tiny_config):
    """A step and its objective terms stay on the model's device, for every prior x objective
    kind x critic; a combination the CPU refuses (a factorised-prior objective with a mixture)
    is refused on meta with the same line."""
    case = OBJECTIVE_CASES[objective_id]
    cpu = cpu_model(prior_id, data, tmp_path_factory, tiny_config)
    expected, _ = outcome(lambda: train_step(cpu, objective_for(case, tiny_config, cpu), data))
    model = cpu_model(prior_id, data, tmp_path_factory, tiny_config).to(META)
    objective = objective_for(case, tiny_config, model)
    with MetaDevice():
        status, value = outcome(lambda: train_step(model, objective, data))
    assert status == expected, value
    if status == "refused":
        return
    _, result = value
    terms = {name: t.device for name, t in result.terms.items() if isinstance(t, torch.Tensor)}
    assert result.loss.device == META and terms == dict.fromkeys(terms, META)
    assert all(p.device == META for p in (*model.parameters(), *model.buffers(), *objective.parameters()))
    assert all(t.device == META for t in priors.distribution_tensors(model.prior_distribution()))


@pytest.mark.parametrize("prior_id", list(PRIORS))
def test_decomposition_and_evaluation_on_meta(prior_id, data, tmp_path_factory, tiny_config):
    """The batch and full-data-set decompositions, and every evaluation metric (ELBO, IWAE, KL,
    the decomposition, the true log-likelihood's gap, active units, the prior's sliced
    Wasserstein distance, the linear probe), run with the model on the meta device and the data
    (and a precomputed log p_true) on the CPU."""
    config = EvalConfig(iwae_samples=3, batch_size=8)
    true_ll = torch.zeros(N_TEST, dtype=torch.float64)
    expected = evaluate_model(cpu_model(prior_id, data, tmp_path_factory, tiny_config), data, config, true_ll=true_ll)
    model = cpu_model(prior_id, data, tmp_path_factory, tiny_config).to(META)
    with MetaDevice(), torch.no_grad():
        out = model(data.train[:BATCH].to(META))
        prior = model.prior_distribution()
        parts = decompose(out.z, out.mu, out.logvar, prior, dataset_size=N_TRAIN)
        full = dataset_decomposition(
            out.mu, out.logvar, prior, generator=torch.Generator().manual_seed(1), num_queries=BATCH // 2
        )
        metrics = evaluate_model(model, data, config, true_ll=true_ll)
    for split in (parts, full):
        assert split.mi.device == META and split.cross_entropy.device == META
    assert set(metrics) == set(expected) and {"probe_accuracy", "ll_gap", "mi", "prior_swd"} <= set(metrics)


def test_disentanglement_metrics_on_meta():
    """MIG, DCI, TC and the dimension-wise KL of posteriors on the model's device, factors on the CPU."""
    from edvae.evaluate import disentanglement_metrics

    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(40, 3, generator=gen), torch.randn(40, 3, generator=gen) * 0.1 - 1
    factors = torch.randint(0, 4, (40, 2), generator=gen).double()
    prior = priors.make("normal", 3)
    prior.to(META)
    with MetaDevice():
        got = disentanglement_metrics(mu.to(META), logvar.to(META), factors, prior(), seed=0)
    assert set(got) == {"mig", "dci", "dci_completeness", "tc", "dimwise_kl"}


# ------------------------------------------------------------------------------ the prior's device
def test_distribution_prior_follows_to_and_leaves_the_original_alone():
    """A ready-made distribution (the data set's own "true" prior is one) moves with the module,
    lazily cached tensors included (Categorical.probs after .logits), and the distribution passed
    in, shared with the data set, keeps its tensors."""
    dist = priors.make("mog_ring", DIM)()
    _ = dist.mixture_distribution.probs  # cached lazily in the instance's __dict__
    prior = priors.DistributionPrior(dist)
    on_meta = copy.deepcopy(prior).to(META)
    assert [t.device for t in priors.distribution_tensors(on_meta())] == [META] * 4
    assert all(t.device.type == "cpu" for t in priors.distribution_tensors(dist))
    assert on_meta.state_dict().keys() == prior.state_dict().keys() == set()  # checkpoints unchanged
    prior.double()
    z = torch.tensor([[2.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    assert torch.allclose(prior().log_prob(z), dist.log_prob(z.float()).double(), atol=1e-6)
    assert prior().log_prob(z).dtype == torch.float64


def test_distribution_prior_maps_transforms_and_their_inverses():
    """Transforms (an inverse whose forward holds the tensors, a cached inverse) move too."""
    from torch.distributions import AffineTransform, ExpTransform, TransformedDistribution

    affine = AffineTransform(torch.ones(DIM), 2 * torch.ones(DIM), event_dim=1)
    dist = TransformedDistribution(
        Independent(Normal(torch.zeros(DIM), torch.ones(DIM)), 1), [affine.inv, ExpTransform()]
    )
    prior = priors.DistributionPrior(dist).double()
    assert {t.dtype for t in priors.distribution_tensors(prior())} == {torch.float64}
    z = torch.tensor([0.5, 2.0])
    assert torch.allclose(prior().log_prob(z.double()).float(), dist.log_prob(z))
    assert affine.loc.dtype == torch.float32


def test_a_prior_on_another_device_is_refused_in_one_line(data, tmp_path_factory, tiny_config):
    """A user's prior building its tensors on the CPU inside forward() is refused at the first
    step, naming the prior and the fix, not with a torch traceback."""
    model = cpu_model("normal", data, tmp_path_factory, tiny_config)
    model.prior = StrayPrior()
    model.prior_distribution()  # on the CPU it is fine
    model.to(META)
    with pytest.raises(
        EdvaeError,
        match=r"^the prior StrayPrior .* on cpu while the model is on meta; build its "
        r"tensors as buffers/parameters so they follow \.to\(\), or on the model's device$",
    ):
        train_step(model, objective_for({"kind": "ed"}, tiny_config, model), data)
