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
  ``elbo = reconstruction - mi - marginal_kl`` up to Monte-Carlo error;
* ``active_units``: latent dimensions with Var_x E[z|x] > 0.01 (Burda et al., 2016);
* ``prior_swd``: sliced 2-Wasserstein distance between aggregate-posterior samples and prior
  samples (how well q(z) matches p(z));
* ``true_ll`` and ``ll_gap`` = true_ll - iwae on synthetic data (distance to the best model);
* ``probe_accuracy``: a linear probe (logistic regression) on posterior means, when labelled.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from edvae.config import EvalConfig
from edvae.data import DataSplits, binarize_batch
from edvae.errors import EdvaeError
from edvae.estimators import dataset_decomposition, kl_divergence, log_posterior
from edvae.model import VAE
from edvae.runs import load_run  # also importable from here, its former home

__all__ = ["evaluate_model", "evaluate_run", "load_run", "mean_true_log_likelihood", "sliced_wasserstein", "active_units"]

#: Importance samples times examples held in memory at once during evaluation.
_SAMPLES_PER_CHUNK = 100_000


def sliced_wasserstein(a: Tensor, b: Tensor, *, projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance between two equal-size samples ``(n, D)``.

    SW_2(a, b) = sqrt( E_theta W_2^2(theta^T a, theta^T b) ), theta uniform on the sphere; each
    one-dimensional W_2 is the mean squared difference of the sorted projections.
    """
    n = min(a.shape[0], b.shape[0])
    a, b = a[:n].double(), b[:n].double()
    theta = torch.randn(a.shape[1], projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ theta, dim=0)
    pb, _ = torch.sort(b @ theta, dim=0)
    return float((pa - pb).square().mean().sqrt())


def active_units(mu: Tensor, threshold: float = 0.01) -> int:
    """Number of latent dimensions whose posterior mean varies across data: Var_x mu_d(x) > threshold."""
    return int((mu.double().var(dim=0) > threshold).sum())


def _probe_accuracy(model: VAE, data: DataSplits, x_eval: Tensor, y_eval: Tensor, seed: int) -> float:
    """Accuracy on (x_eval, y_eval) of a logistic regression fitted to the posterior means of
    the training split, as the model sees its inputs: with dynamic binarisation (binary test
    images) the training images are binarised once with ``seed``, not left in grey levels."""
    from sklearn.linear_model import LogisticRegression

    x_fit = binarize_batch(data.train, seed) if getattr(data, "binarize", "none") == "dynamic" else data.train
    feats_train = model.encode(x_fit)[0].double().numpy()
    feats_eval = model.encode(x_eval)[0].double().numpy()
    probe = LogisticRegression(max_iter=2000)
    probe.fit(feats_train, data.train_labels.numpy())
    return float(probe.score(feats_eval, y_eval.numpy()))


@torch.inference_mode()
def evaluate_model(
    model: VAE,
    data: DataSplits,
    config: EvalConfig | None = None,
    *,
    split: str = "test",
    true_ll: float | None = None,
) -> dict[str, float]:
    """Every metric of the module docstring for ``model`` on ``data``'s ``split``.

    ``true_ll`` may pass a precomputed mean log p_true(x) of the split (it depends only on the
    data, so a study computes it once per data set).
    """
    config = config or EvalConfig()
    model.eval()
    gen = torch.Generator().manual_seed(config.seed)
    x_all: Tensor = getattr(data, split)
    labels = getattr(data, f"{split}_labels", None)
    if getattr(data, "binarize", "none") == "dynamic":
        x_all = binarize_batch(x_all, config.seed + 1)
    prior = model.prior_distribution()
    k = config.iwae_samples
    chunk = max(1, min(config.batch_size, _SAMPLES_PER_CHUNK // k))
    sums = {"elbo": 0.0, "iwae": 0.0, "kl": 0.0, "reconstruction": 0.0, "mse": 0.0}
    mus, logvars = [], []
    for start in range(0, x_all.shape[0], chunk):
        x = x_all[start:start + chunk]
        b = x.shape[0]
        mu, logvar = model.encode(x)
        mus.append(mu)
        logvars.append(logvar)
        eps = torch.randn((k, b, mu.shape[1]), generator=gen)
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
        sums["iwae"] += float((torch.logsumexp(log_w, 0) - math.log(k)).sum())
        sums["kl"] += float(kl.sum())
        sums["reconstruction"] += float(recon.sum())
        sums["elbo"] += float((recon - kl).sum())
        x_mean = model.likelihood.mean(model.decode(mu))
        sums["mse"] += float((x_mean - x).double().square().flatten(1).mean(1).sum())
    n = x_all.shape[0]
    metrics: dict[str, float] = {name: value / n for name, value in sums.items()}
    mu_all, logvar_all = torch.cat(mus), torch.cat(logvars)
    decomposition = dataset_decomposition(mu_all, logvar_all, prior, generator=gen)
    for name in ("mi", "entropy", "cross_entropy", "marginal_kl"):
        metrics[name] = float(getattr(decomposition, name))
    metrics["active_units"] = float(active_units(mu_all))
    z_agg = mu_all + torch.exp(0.5 * logvar_all) * torch.randn(mu_all.shape, generator=gen)
    with torch.random.fork_rng():  # distributions sample from the global generator: seed it here
        torch.manual_seed(config.seed)
        prior_samples = prior.sample((n,))
    metrics["prior_swd"] = sliced_wasserstein(z_agg, prior_samples, generator=gen)
    metrics["nll"] = -metrics["iwae"]
    if model.likelihood.__class__.__name__ == "BernoulliLikelihood":
        metrics["bpd"] = metrics["nll"] / (math.prod(data.x_shape) * math.log(2))
    truth = getattr(data, "ground_truth", None)
    if truth is not None and config.true_ll:
        metrics["true_ll"] = true_ll if true_ll is not None else mean_true_log_likelihood(data, split)
        metrics["ll_gap"] = metrics["true_ll"] - metrics["iwae"]
    if labels is not None and getattr(data, "train_labels", None) is not None:
        metrics["probe_accuracy"] = _probe_accuracy(model, data, x_all, labels, config.seed + 2)
    return metrics


def mean_true_log_likelihood(data: DataSplits, split: str = "test") -> float:
    """mean_n log p_true(x_n) over a split of synthetic data (exact up to quadrature)."""
    return float(data.ground_truth.true_log_likelihood(getattr(data, split)).double().mean())


def evaluate_run(
    run_dir: str | Path,
    *,
    config: EvalConfig | None = None,
    data: DataSplits | None = None,
    split: str = "test",
    true_ll: float | None = None,
) -> dict[str, float]:
    """Evaluate the model saved in ``run_dir``; adds ``train_seconds`` from its checkpoint."""
    model, run_config, state, data = load_run(run_dir, data)
    metrics = evaluate_model(model, data, config or run_config.eval, split=split, true_ll=true_ll)
    metrics["train_seconds"] = float(state["train_seconds"])
    return metrics
