"""Evaluation: the same metrics for every model, whatever objective trained it.

On a held-out split x_1..x_N, with K importance samples z_k ~ q(z|x) per example and log
weights w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x):

* ``elbo``  = mean_x [ mean_k log p(x|z_k) - KL(q(z|x) || p(z)) ] (KL analytic where registered,
  else the Monte-Carlo mean of log q - log p over the same K samples);
* ``iwae``  = mean_x [ logsumexp_k w_k - log K ] (Burda et al.), a tighter lower bound on
  log p(x) that approaches it as K grows, so ``iwae >= elbo`` up to Monte-Carlo error;
* ``kl``, ``reconstruction`` (mean_k log p(x|z_k)), ``mse`` (decoder mean at the posterior mean,
  per element), ``nll`` = -iwae and ``bpd`` = nll / (dims * ln 2) for binary data;
* ``mi``, ``entropy``, ``cross_entropy``, ``marginal_kl``: the full-data-set decomposition of the
  split's aggregate posterior (:func:`edvae.estimators.dataset_decomposition`), so that
  ``elbo = reconstruction - mi - marginal_kl`` up to Monte-Carlo error, and
  ``decomposition_gap`` = kl - (mi + marginal_kl), that Monte-Carlo error (expectation 0);
* ``<metric>_se``: the standard error of every metric that is a mean over examples (and their
  samples), sd_n / sqrt(N) of the per-example values (see :func:`evaluate_model`);
* ``active_units``: latent dimensions with Var_x E[z|x] > 0.01 (Burda et al., 2016);
* ``prior_swd``: sliced 2-Wasserstein distance between aggregate-posterior samples and prior
  samples (how well q(z) matches p(z));
* ``true_ll`` and ``ll_gap`` = true_ll - iwae on synthetic data (distance to the best model);
* ``probe_accuracy``: a linear probe (logistic regression) on posterior means, when labelled;
* on data with known generating factors (``DataSplits.{split}_factors``, :mod:`edvae.data.factors`):
  ``mig`` (mutual information gap), ``dci`` and ``dci_completeness`` (DCI disentanglement and
  completeness) of the split's posteriors (:mod:`edvae.disentanglement`), and the total
  correlation ``tc`` and dimension-wise KL ``dimwise_kl`` (summed over dimensions; factorised
  priors) of its aggregate posterior (:func:`edvae.estimators.dataset_decomposition`), see
  :func:`disentanglement_metrics`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from edvae.accelerator import accelerator_device, choose_accelerator, network_macs
from edvae.checkpoint import save_atomic
from edvae.config import EvalConfig, ModelConfig, RunConfig
from edvae.data import DataSplits, binarize_batch
from edvae.data.sampling import derive_seed
from edvae.errors import EdvaeError
from edvae.estimators import PriorLike, dataset_decomposition_terms, kl_divergence, log_posterior
from edvae.model import VAE, check_fits_memory
from edvae.numeric_files import machine_memory_bytes
from edvae.runs import load_data, load_run, run_folder  # load_run also importable from here, its former home

__all__ = [
    "CACHE_DIR_NAME",
    "cached_true_log_likelihoods",
    "evaluate_model",
    "evaluate_run",
    "evaluation_accelerator",
    "evaluation_seed",
    "fit_logistic_regression",
    "load_run",
    "run_cache_dir",
    "mean_true_log_likelihood",
    "true_log_likelihoods",
    "sliced_wasserstein",
    "active_units",
    "disentanglement_metrics",
]

#: Importance samples times examples held in memory at once during evaluation.
_SAMPLES_PER_CHUNK = 100_000
#: Bumped when the true log-likelihood cache's content changes meaning (old files are recomputed).
TRUE_LL_CACHE_FORMAT = 2
#: The folder, next to a run folder, where ``edvae evaluate`` caches per-data-set results.
CACHE_DIR_NAME = ".edvae-cache"


def _progress(items: Iterable[Any], *, enabled: bool, total: int | None = None, desc: str = "") -> Iterator[Any]:
    """``items``, with a tqdm bar on stderr when ``enabled``."""
    if not enabled:
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)


def sliced_wasserstein(
    a: Tensor, b: Tensor, *, projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced 2-Wasserstein distance between two equal-size samples ``(n, D)``.

    SW_2(a, b) = sqrt( E_theta W_2^2(theta^T a, theta^T b) ), theta uniform on the sphere; each
    one-dimensional W_2 is the mean squared difference of the sorted projections.
    """
    n = min(a.shape[0], b.shape[0])
    a, b = a[:n].detach().double(), b[:n].detach().double()  # a metric: no graph (and no torch warning)
    theta = torch.randn(a.shape[1], projections, generator=generator, dtype=torch.float64).to(a.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ theta, dim=0)
    pb, _ = torch.sort(b @ theta, dim=0)
    return float((pa - pb).square().mean().sqrt())


def active_units(mu: Tensor, threshold: float = 0.01) -> int:
    """Number of latent dimensions whose posterior mean varies across data: Var_x mu_d(x) > threshold."""
    return int((mu.double().var(dim=0) > threshold).sum())


def fit_logistic_regression(
    features: Tensor, labels: Tensor, *, iterations: int = 100, tolerance: float = 1e-10
) -> tuple[Tensor, Tensor]:
    r"""Multinomial logistic regression with an L2 penalty on the weights (not the intercept):

        (W, b) = argmin  L(W, b) = sum_n -log softmax(W f_n + b)_{y_n} + 1/2 ||W||_F^2,

    the objective of scikit-learn's ``LogisticRegression()`` (C = 1). It is convex, and strictly
    so up to adding one constant to every intercept (softmax ignores it); its minimiser is found
    by Newton's method in float64 from zero, with the Hessian (with p_n = softmax(W f_n + b),
    g_n = (f_n, 1))

        d^2 L / d theta_{c,i} d theta_{d,j}
            = sum_n (delta_cd p_nc - p_nc p_nd) g_ni g_nj + delta_cd delta_ij [i is a weight],

    a step halved until L decreases, stopping when the gradient's largest entry is below
    ``tolerance`` times N. The flat direction (one constant added to every intercept) gets
    curvature 1 in the Newton system; the gradient is orthogonal to it, so the intercepts keep
    summing to zero, as scikit-learn's do. ``labels``: integers 0..C-1, C = the
    largest label + 1. Returns (W (C, F), b (C,)).
    """
    x = features.detach().double()
    y = labels.detach().long()
    n, dims = x.shape
    classes = int(y.max()) + 1
    g = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)  # (N, F + 1): the intercept as a feature
    onehot = torch.nn.functional.one_hot(y, classes).double()
    theta = torch.zeros(classes, dims + 1, dtype=torch.float64)
    penalised = torch.ones_like(theta)
    penalised[:, -1] = 0.0

    def loss(t: Tensor) -> Tensor:
        return torch.nn.functional.cross_entropy(g @ t.T, y, reduction="sum") + 0.5 * (penalised * t.square()).sum()

    size = classes * (dims + 1)
    shift = (1.0 - penalised).reshape(-1) / math.sqrt(classes)  # unit vector: one constant added to every intercept
    current = loss(theta)
    for _ in range(iterations):
        p = torch.softmax(g @ theta.T, 1)
        grad = (p - onehot).T @ g + penalised * theta
        if float(grad.abs().max()) < tolerance * n:
            break
        pg = (p.unsqueeze(2) * g.unsqueeze(1)).reshape(n, size)  # p_nc g_ni
        hessian = -(pg.T @ pg)
        blocks = torch.einsum("nc,ni,nj->cij", p, g, g)
        for c in range(classes):
            hessian[c * (dims + 1) : (c + 1) * (dims + 1), c * (dims + 1) : (c + 1) * (dims + 1)] += blocks[c]
        hessian += torch.diag(penalised.reshape(-1)) + torch.outer(
            shift, shift
        )  # shift: the flat direction, given curvature 1
        step = torch.linalg.solve(hessian, grad.reshape(-1)).reshape(classes, dims + 1)
        scale = 1.0
        while scale > 1e-6:
            candidate = theta - scale * step
            value = loss(candidate)
            if value <= current:
                break
            scale /= 2
        theta, current = candidate, value
    return theta[:, :-1].contiguous(), theta[:, -1].contiguous()


def _probe_accuracy(model: VAE, data: DataSplits, x_eval: Tensor, y_eval: Tensor, seed: int) -> float:
    """Accuracy on (x_eval, y_eval) of a logistic regression (:func:`fit_logistic_regression`)
    fitted to the posterior means of the training split, as the model sees its inputs: with
    dynamic binarisation (binary test images) the training images are binarised once with
    ``seed``, not left in grey levels."""
    x_fit = binarize_batch(data.train, seed) if getattr(data, "binarize", "none") == "dynamic" else data.train
    device = x_eval.device  # the model's; the regression runs on the CPU
    features, labels = model.encode(x_fit.to(device))[0].cpu(), data.train_labels
    assert labels is not None  # the callers probe only data with labels
    weight, bias = fit_logistic_regression(features, labels)
    predicted = (model.encode(x_eval)[0].double().cpu() @ weight.T + bias).argmax(1)
    return float((predicted == y_eval.long()).double().mean())


def evaluation_seed(seed: int, purpose: str = "noise") -> int:
    """The 32-bit seed of one of the evaluation's random streams (``purpose``: ``"noise"``,
    ``"binarise"``, ``"prior"``, ``"probe"``), hashed from ``("evaluation", purpose, seed)``.

    Training seeds its generators with ``train.seed`` itself (and simple functions of it), so an
    evaluation generator seeded with ``eval.seed`` would replay the training noise when the two
    seeds agree; a hashed seed makes every evaluation stream unrelated to every training stream
    (up to a 2**-32 chance of a collision per pair). torch's CPU generator keeps only the low 32
    bits of a seed, so offsetting by 2**32 would not do.
    """
    return derive_seed(seed, "evaluation", purpose)


def _chunk_size(config: EvalConfig) -> int:
    """Examples per pass of the importance sampling: at most ``_SAMPLES_PER_CHUNK`` samples in memory."""
    return max(1, min(config.batch_size, _SAMPLES_PER_CHUNK // config.iwae_samples))


def _mean_se(values: Tensor) -> tuple[float, float]:
    """mean_n v_n and its standard error sd(v) / sqrt(N) (sample sd; NaN for N = 1)."""
    values = values.detach().double()
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


def evaluation_memory_bytes(samples: int, chunk: int, features: int, latent_dim: int) -> int:
    """A lower estimate of the memory of one evaluation block, in bytes: K importance samples of
    a block of b examples hold the repeated inputs and decoder outputs (3 K b F float32 values for
    F features) and the codes, noise and log-densities (6 K b D + 8 K b values)."""
    return 4 * samples * chunk * (3 * features + 6 * latent_dim + 8)


@torch.inference_mode()
def evaluate_model(
    model: VAE,
    data: DataSplits,
    config: EvalConfig | None = None,
    *,
    split: str = "test",
    true_ll: Tensor | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Every metric of the module docstring for ``model`` on ``data``'s ``split``
    (``progress``: bars on stderr for the importance-sampling pass and the true likelihood).

    Monte Carlo errors: every metric that is a mean over the N examples of a per-example value
    v_n (elbo, iwae, kl, reconstruction, mse, nll, bpd, true_ll, ll_gap; mi, entropy,
    cross_entropy, marginal_kl over the decomposition's query points, one per example) comes
    with ``<metric>_se`` = sd_n(v_n) / sqrt(N): the error of the split mean from the examples
    and the importance samples together (NaN for a single example). ``ll_gap_se`` is that of
    the per-example gap log p_true(x_n) - iwae_n (paired). ``active_units`` and ``prior_swd``
    are not means over examples and have none. The examples' own spread dominates these errors;
    two models evaluated on the same split share it, so the error of their difference is that
    of the per-example differences, far smaller than the two errors combined.

    ``decomposition_gap`` = kl - (mi + marginal_kl). mi and marginal_kl come from one draw
    z_n ~ q(z|x_n) per example, and their sum is mean_n [log q(z_n|x_n) - log p(z_n)] exactly
    (the aggregate-posterior estimate and its bias cancel), an unbiased one-sample estimate of
    the KL; so the gap has expectation 0 and measures the decomposition's sampling error alone
    (``decomposition_gap_se``, paired per example).

    The evaluation's random streams are seeded by :func:`evaluation_seed` of ``config.seed``,
    independent of the training noise. ``true_ll`` may pass the precomputed per-example
    log p_true(x_n) of the split, shape (N,) (:func:`true_log_likelihoods`; it depends only on the
    data, so a study computes it once per data set).

    It runs on the model's device: the inputs, and the noise drawn from the seeded CPU
    generators, are moved there (on the CPU every number is that of a CPU-only evaluation).
    """
    config = config or EvalConfig()
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(evaluation_seed(config.seed))
    x_all: Tensor = getattr(data, split)
    labels = getattr(data, f"{split}_labels", None)
    if getattr(data, "binarize", "none") == "dynamic":
        x_all = binarize_batch(x_all, evaluation_seed(config.seed, "binarise"))
    x_all = x_all.to(device)
    prior = model.prior_distribution()
    k = config.iwae_samples
    chunk = _chunk_size(config)
    check_fits_memory(
        evaluation_memory_bytes(k, chunk, math.prod(data.x_shape), model.latent_dim),
        machine_memory_bytes(),
        f"evaluating with eval.iwae_samples={k}",
        "lower --iwae-samples (eval.iwae_samples)",
    )
    per_example: dict[str, list[Tensor]] = {"elbo": [], "iwae": [], "kl": [], "reconstruction": [], "mse": []}
    mus, logvars = [], []
    starts = range(0, x_all.shape[0], chunk)
    for start in _progress(starts, enabled=progress, total=len(starts), desc=f"evaluate ({k} importance samples)"):
        x = x_all[start : start + chunk]
        b = x.shape[0]
        mu, logvar = model.encode(x)
        mus.append(mu)
        logvars.append(logvar)
        eps = torch.randn((k, b, mu.shape[1]), generator=gen).to(device)
        z = (mu + torch.exp(0.5 * logvar) * eps).reshape(k * b, -1)
        x_rep = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        log_px = model.likelihood.log_prob(x_rep, model.decode(z)).view(k, b)
        log_pz = prior.log_prob(z).view(k, b)
        log_qz = log_posterior(z, mu.repeat(k, 1), logvar.repeat(k, 1)).view(k, b)
        log_w = (log_px + log_pz - log_qz).double()
        try:  # the closed form where torch registers one ...
            kl = kl_divergence(mu, logvar, prior, method="analytic").double()
        except EdvaeError:  # ... else Monte Carlo over the same K samples, reusing log p(z)
            kl = (log_qz - log_pz).double().mean(0)
        recon = log_px.double().mean(0)
        x_mean = model.likelihood.mean(model.decode(mu))
        per_example["iwae"].append(torch.logsumexp(log_w, 0) - math.log(k))
        per_example["kl"].append(kl)
        per_example["reconstruction"].append(recon)
        per_example["elbo"].append(recon - kl)
        per_example["mse"].append((x_mean - x).double().square().flatten(1).mean(1))
    values = {name: torch.cat(parts) for name, parts in per_example.items()}
    n = x_all.shape[0]
    mu_all, logvar_all = torch.cat(mus), torch.cat(logvars)
    terms = dataset_decomposition_terms(mu_all, logvar_all, prior, generator=gen)
    for name in ("mi", "entropy", "cross_entropy", "marginal_kl"):
        values[name] = getattr(terms, name)
    values["decomposition_gap"] = values["kl"][terms.index] - (terms.mi + terms.marginal_kl)
    values["nll"] = -values["iwae"]
    if model.likelihood.__class__.__name__ == "BernoulliLikelihood":
        values["bpd"] = values["nll"] / (math.prod(data.x_shape) * math.log(2))
    truth = getattr(data, "ground_truth", None)
    if truth is not None and config.true_ll:
        if true_ll is not None and tuple(true_ll.shape) != (n,):
            raise EdvaeError(
                f"true_ll has shape {tuple(true_ll.shape)} but the {split} split has {n} examples; "
                "pass the per-example log p_true(x) of that split (edvae.evaluate.true_log_likelihoods)"
            )
        if true_ll is None:
            for _ in _progress(range(1), enabled=progress, total=1, desc=f"true log-likelihood of {n} examples"):
                true_ll = true_log_likelihoods(data, split)
        assert true_ll is not None  # computed in the loop above
        values["true_ll"] = true_ll.to(device)
        values["ll_gap"] = values["true_ll"] - values["iwae"]
    metrics: dict[str, float] = {}
    for name, per in values.items():
        metrics[name], metrics[f"{name}_se"] = _mean_se(per)
    metrics["active_units"] = float(active_units(mu_all))
    z_agg = mu_all + torch.exp(0.5 * logvar_all) * torch.randn(mu_all.shape, generator=gen).to(device)
    with torch.random.fork_rng():  # distributions sample from the global generator: seed it here
        torch.manual_seed(evaluation_seed(config.seed, "prior"))
        prior_samples = prior.sample((n,))
    metrics["prior_swd"] = sliced_wasserstein(z_agg, prior_samples, generator=gen)
    if labels is not None and getattr(data, "train_labels", None) is not None:
        metrics["probe_accuracy"] = _probe_accuracy(model, data, x_all, labels, evaluation_seed(config.seed, "probe"))
    factors = getattr(data, f"{split}_factors", None)
    if factors is not None:
        metrics.update(
            disentanglement_metrics(mu_all, logvar_all, factors, prior, seed=evaluation_seed(config.seed, "factors"))
        )
    return metrics


def evaluation_accelerator(
    requested: str, model_config: ModelConfig, x_shape: tuple[int, ...], config: EvalConfig
) -> str:
    """``cpu`` or ``gpu`` for evaluating a model (:func:`edvae.accelerator.choose_accelerator`);
    the pass that ``auto`` weighs is one chunk of :func:`evaluate_model`: its b examples through
    the encoder and their b x K importance samples through the decoder."""
    macs = 0
    if requested == "auto":
        encoder, decoder = network_macs(model_config, x_shape)
        chunk = _chunk_size(config)
        macs = chunk * (encoder + config.iwae_samples * decoder)
    return choose_accelerator(requested, macs)


# ----------------------------------------------------------------------------- known factors
#: Examples the disentanglement metrics use at most (MIG and TC cost O(N^2 D))
DISENTANGLEMENT_EXAMPLES = 2000


def disentanglement_metrics(
    mu: Tensor, logvar: Tensor, factors: Tensor, prior: PriorLike, *, seed: int
) -> dict[str, float]:
    """``mig``, ``dci``, ``dci_completeness``, ``tc`` and (factorised prior) ``dimwise_kl`` of
    the posteriors (N, D) of examples with known ``factors`` (N, K), on at most
    :data:`DISENTANGLEMENT_EXAMPLES` of them (the first), all random draws from ``seed``."""
    from edvae.disentanglement import dci, mutual_information_gap
    from edvae.estimators import dataset_decomposition

    mu, logvar, factors = (t[:DISENTANGLEMENT_EXAMPLES] for t in (mu, logvar, factors))
    gen = torch.Generator().manual_seed(seed)
    out = {"mig": mutual_information_gap(mu, logvar, factors, generator=gen).score}
    scores = dci(mu, factors, seed=seed)
    out.update(dci=scores.disentanglement, dci_completeness=scores.completeness)
    split = dataset_decomposition(mu, logvar, prior, generator=gen, per_dimension=True)
    assert split.total_correlation is not None  # per_dimension=True computes it
    out["tc"] = float(split.total_correlation)
    if split.dimwise_kl is not None:
        out["dimwise_kl"] = float(split.dimwise_kl.sum())
    return out


def true_log_likelihoods(data: DataSplits, split: str = "test") -> Tensor:
    """log p_true(x_n) for every example of a split of synthetic data, (N,) float64 (exact up
    to quadrature)."""
    if data.ground_truth is None:
        raise EdvaeError(
            f"data set {data.name!r} has no known generative process; "
            "true log-likelihoods exist only for synthetic data"
        )
    return data.ground_truth.true_log_likelihood(getattr(data, split)).double()


def mean_true_log_likelihood(data: DataSplits, split: str = "test") -> float:
    """mean_n log p_true(x_n) over a split of synthetic data (exact up to quadrature)."""
    return float(true_log_likelihoods(data, split).mean())


def run_cache_dir(run_dir: str | Path) -> Path:
    """Where ``edvae evaluate`` caches per-data-set results for a run: ``.edvae-cache/`` in the
    run folder's parent, shared by the runs of one parent folder (a study keeps its own,
    ``OUT/cache``). Deleting it is always safe."""
    return run_folder(run_dir).resolve().parent / CACHE_DIR_NAME


def _digest(key: str, values: Tensor) -> str:
    """sha256 of a cache key and the cached values' bytes (a cache edited after writing fails it)."""
    return hashlib.sha256(key.encode() + values.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def cached_true_log_likelihoods(
    config: RunConfig, cache_dir: str | Path, *, split: str = "test", data: DataSplits | None = None
) -> Tensor | None:
    """log p_true(x_n) of every example of ``split`` of the data set ``config.data`` names,
    (N,) float64, computed once per data set and cached in ``cache_dir``.

    The cache file carries its key and a digest of its values: the sha256 of the data config (name, seed, options), the
    split, the edvae version, :data:`TRUE_LL_CACHE_FORMAT` and the split's bytes. A file whose
    key differs, that cannot be read, or whose values are not N finite float64 numbers is
    recomputed and rewritten. ``None`` when ``config.eval.true_ll`` is off or the data have
    no ground truth (real data, files, data stored from memory). A cache that cannot be written
    is skipped (the value is still returned).
    """
    if not config.eval.true_ll or config.data.name in ("file", "stored"):
        return None
    from edvae._version import __version__

    settings = {
        "data": config.data.model_dump(),
        "split": split,
        "version": __version__,
        "format": TRUE_LL_CACHE_FORMAT,
    }
    name = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / (f"true_ll-{name}.pt" if split == "test" else f"true_ll-{name}-{split}.pt")
    data = data if data is not None else load_data(config)
    if data.ground_truth is None:
        return None
    x = getattr(data, split)
    key = hashlib.sha256(name.encode() + x.contiguous().numpy().tobytes()).hexdigest()
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            cached = stored["log_p_true"] if stored.get("key") == key else None
            if cached is not None and stored.get("digest") != _digest(key, cached):
                cached = None  # values changed after they were written
        except Exception:  # noqa: BLE001 - a cache that cannot be read is recomputed, whatever the damage
            cached = None
        if (
            isinstance(cached, Tensor)
            and cached.dtype == torch.float64
            and tuple(cached.shape) == (x.shape[0],)
            and bool(torch.isfinite(cached).all())
        ):
            return cached
    value = true_log_likelihoods(data, split)
    try:
        save_atomic({"log_p_true": value, "key": key, "digest": _digest(key, value), "settings": settings}, path)
    except OSError:
        pass
    return value


def evaluate_run(
    run_dir: str | Path,
    *,
    config: EvalConfig | None = None,
    data: DataSplits | None = None,
    split: str = "test",
    true_ll: Tensor | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    accelerator: str = "cpu",
) -> dict[str, float]:
    """Evaluate the model saved in ``run_dir``; adds ``train_seconds`` from its checkpoint (when
    it records them).

    ``data``: other data to evaluate on (default: the run's own, checked against the recorded
    hashes); ``cache_dir``: where the true log-likelihood is cached per data set
    (:func:`cached_true_log_likelihoods`; not used with ``data``). ``accelerator``: ``cpu``
    (default), ``gpu`` or ``auto`` (:func:`evaluation_accelerator`): the model and the split
    move there."""
    model, run_config, state, data_used = load_run(run_dir, data)
    config = config or run_config.eval
    model.to(accelerator_device(evaluation_accelerator(accelerator, run_config.model, data_used.x_shape, config)))
    if true_ll is None and cache_dir is not None and data is None and config.true_ll:
        with_eval = run_config.model_copy(update={"eval": config})
        true_ll = cached_true_log_likelihoods(with_eval, cache_dir, split=split, data=data_used)
    metrics = evaluate_model(model, data_used, config, split=split, true_ll=true_ll, progress=progress)
    if state.get("train_seconds") is not None:  # a checkpoint of an earlier version may not record it
        metrics["train_seconds"] = float(state["train_seconds"])
    return metrics
