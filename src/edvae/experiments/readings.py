r"""Study ``readings``: does ED-VAE beat the traditional VAE under any plausible reading of its objective?

The seed paper claims that ED-VAE gives a lower reconstruction MSE, a lower KL and a higher ELBO
than a traditional VAE; it states neither the sign of its mutual-information term ("estimated
with InfoNCE to encourage informative codes", i.e. maximised, against the ELBO, where I(x; z)
is penalised), nor the weights, nor the critic. Each plausible choice is a named variant
(:data:`edvae.experiments.variants.READINGS`, ``ed-<max|pen><|w_mi|>-<critic>-w<w>``):

    L = -R + w_mi I_NCE - w H_hat[q(z)] + w H_hat[q(z), p(z)],

with the true prior, I_NCE from one of the InfoNCE critics (:mod:`edvae.critics`: the encoder,
learned bilinear or MLP scores, each <= log B; a momentum encoder with a queue of K = 4096
past keys, tau = 0.1, m = 0.99, <= log(K + 1)). Each reading runs against the traditional VAE
with the true prior (``vae-true``, Monte-Carlo KL: the reference of the comparisons) and with
N(0, I) (``vae-std``), on both synthetic data sets, with the paper study's networks, optimiser
and evaluation (the same ELBO and IWAE estimators for every model), :data:`EPOCHS` epochs.

The headline table (:func:`claims_table`) answers the three claims per reading and data set
with the paired 95% interval of model - vae-true over the seeds (:mod:`edvae.stats`) and a
verdict: ``reproduced`` when the interval lies entirely on the claimed side, ``not reproduced``
when entirely on the other, ``within noise`` otherwise; the IWAE difference beside them is the
cost (or gain) in likelihood. The table is the study's headline in results.md, and its README
block (``edvae publish OUT --name readings``).
"""

from __future__ import annotations

import math
from typing import Any

from edvae.experiments.paper import DATASETS
from edvae.experiments.study import BASE, QUICK, Study, build_runs, default_seeds, shared_config
from edvae.experiments.variants import READINGS, merge
from edvae.stats import verdict

__all__ = ["CLAIMS", "EPOCHS", "QUICK_EPOCHS", "REFERENCE", "claim_verdict", "claims_table", "readings_study"]

#: Training epochs of the study (the paper study uses 120): 5 seeds of 12 models on 2 data sets
#: in about 27 minutes on 2 shared cores with ``--workers 2``. Measured (one thread, 1-seed runs on
#: ``complex``, other jobs on the machine): 0.5 s per epoch for a VAE, 0.6 s for the encoder,
#: bilinear and MLP critics, 4.1 s for the momentum critic (its 256 x 4097 logits), ~9 s to
#: evaluate a run with 1000 importance samples: 14 s per epoch for the 12 models of one data set
#: and seed, so 10 x (15 x 14 + 12 x 9) s / 2 workers ~ 27 min.
EPOCHS = 15
#: Epochs of ``--quick`` (2 seeds, 200 importance samples).
QUICK_EPOCHS = 5
#: The traditional VAE every reading is compared with.
REFERENCE = "vae-true"
#: The seed paper's three claims: (metric, text, whether the claimed difference model - VAE is negative).
CLAIMS: tuple[tuple[str, str, bool], ...] = (
    ("mse", "lower MSE", True),
    ("kl", "lower KL", True),
    ("elbo", "higher ELBO", False),
)
#: Shown beside the claims: the cost (or gain) in likelihood.
_COST = "iwae"
_VERDICTS = {"better": "reproduced", "worse": "not reproduced", "within noise": "within noise"}
_METRICS = ["mse", "kl", "elbo", "iwae", "ll_gap", "mi", "marginal_kl", "prior_swd", "active_units", "train_seconds"]


def claim_verdict(comparison: dict[str, Any], lower: bool) -> str:
    """``"reproduced"`` when the 95% interval of model - reference lies entirely on the claimed
    side (below 0 for a claimed decrease, ``lower=True``; above 0 for an increase),
    ``"not reproduced"`` when entirely on the other side, ``"within noise"`` when it holds 0 (or
    there is no interval: one seed)."""
    return _VERDICTS[verdict({**comparison, "higher_is_better": not lower})]


def _cell(c: dict[str, Any] | None, lower: bool | None) -> str:
    if c is None:
        return "–"
    values = [abs(v) for v in (c["mean_diff"], c["ci_low"], c["ci_high"]) if math.isfinite(v) and v != 0]
    digits = max(1, 2 - math.floor(math.log10(max(values)))) if values else 3  # 3 significant digits on the largest
    interval = "no interval" if math.isnan(c["ci_low"]) else f"{c['ci_low']:+.{digits}f}, {c['ci_high']:+.{digits}f}"
    text = f"{c['mean_diff']:+.{digits}f} [{interval}]"
    return text if lower is None else f"{text} {claim_verdict(c, lower)}"


def claims_table(comparisons: list[dict[str, Any]], reference: str = REFERENCE) -> str:
    """The headline table: per model and data set, each of :data:`CLAIMS` as the mean difference
    model - ``reference`` with its 95% paired interval and :func:`claim_verdict`, and the IWAE
    difference (no verdict: the cost in likelihood). ``comparisons`` are records of
    :func:`edvae.stats.paired_comparisons` (results.json's ``comparisons``)."""
    index = {(c["dataset"], c["model"], c["metric"]): c for c in comparisons if c["reference"] == reference}
    rows = list(dict.fromkeys((c["dataset"], c["model"]) for c in comparisons if c["reference"] == reference))
    if not rows:
        return ""
    seeds = max(c["n_seeds"] for c in index.values())
    header = " | ".join(text for _, text, _ in CLAIMS)
    lines = [
        f"Difference model - {reference} (mean over {seeds} paired seeds [95% interval]) and whether it "
        "reproduces the claim: 'reproduced' = the interval lies entirely on the claimed side, 'not reproduced' = "
        f"entirely on the other side. {_COST}: the difference in test log-likelihood bound (higher is better), "
        "the cost of the reading in likelihood.",
        "",
        f"| data set | model | {header} | {_COST} |",
        "|---|---|" + "---|" * (len(CLAIMS) + 1),
    ]
    for dataset, model in rows:
        cells = [_cell(index.get((dataset, model, metric)), lower) for metric, _, lower in CLAIMS]
        cells.append(_cell(index.get((dataset, model, _COST)), None))
        lines.append(f"| {dataset} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _headline(study: Study, comparisons: list[dict[str, Any]]) -> str:
    return claims_table(comparisons, study.reference or REFERENCE)


def readings_study(*, quick: bool = False, seeds: int | None = None, overrides: dict[str, Any] | None = None) -> Study:
    """Every reading of :data:`edvae.experiments.variants.READINGS` against ``vae-true`` (the
    reference) and ``vae-std`` on ``gaussian`` and ``complex``; ``quick``: :data:`QUICK_EPOCHS`
    epochs, 200 importance samples, 2 seeds."""
    base = merge(BASE, {"train": {"epochs": EPOCHS}})
    if quick:
        base = merge(merge(base, QUICK), {"train": {"epochs": QUICK_EPOCHS}})
    shown = shared_config(base, overrides)
    models = [REFERENCE, "vae-std", *READINGS]
    return Study(
        name="readings",
        title="Does ED-VAE beat the VAE? The paper's claims under every plausible reading of its objective",
        description=(
            "Readings ed-<max|pen><|w_mi|>-<critic>-w<w>: L = -R + w_mi I_NCE - w H[q(z)] + w H[q(z), p(z)] with "
            "the true prior, the MI term maximised (max, w_mi < 0, the seed's 'encourage informative codes') or "
            "penalised (pen, w_mi > 0, its sign in the ELBO), InfoNCE with the encoder as critic (enc, <= log B), "
            "learned bilinear (bil) or MLP (mlp) scores (<= log B), or a momentum encoder with a queue of 4096 keys "
            "(mom, tau = 0.1, m = 0.99, <= log 4097). References: the traditional VAE with the true prior "
            "(vae-true, Monte-Carlo KL) and with N(0, I) (vae-std). Data: x = g(z) + N(0, 0.1^2 I), 16-D, from a "
            "2-D latent with a Gaussian ('gaussian') or 8-mode ring ('complex') prior. All models share networks "
            f"({shown['model']['hidden']}), optimiser and budget ({shown['train']['epochs']} epochs) and are "
            f"evaluated on the test split with the same ELBO and IWAE ({shown['eval']['iwae_samples']} samples)."
        ),
        runs=build_runs(base, DATASETS, models, default_seeds(seeds, quick, full=5), overrides),
        metrics=_METRICS,
        reference=REFERENCE,
        headline=_headline,
    )
