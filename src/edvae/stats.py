r"""Paired comparisons of models across seeds: is a difference larger than the seed-to-seed noise?

Within one data set, a run of model m and a run of the reference r with the same seed share the
data, the initial weights' seed and the evaluation's noise stream, so they are compared as a pair.
For a metric with values m_s and r_s over the seeds s = 1..n present in both,

    d_s = m_s - r_s,   mean_diff = mean_s d_s,   SE = sd(d) / sqrt(n)   (sample sd, n - 1),

and the 95% interval is mean_diff -+ t_{0.975, n-1} SE (Student t with n - 1 degrees of freedom:
the seeds are few and their differences are assumed roughly normal). With one seed there is no
interval: ``ci_low`` and ``ci_high`` are NaN. Identical differences give a zero-width interval.

``mean_diff`` keeps the sign of model - reference whatever the metric; the metric's direction
(:data:`HIGHER_IS_BETTER`) only decides ``n_better`` (seeds where the model beats the reference,
ties not counted) and the :func:`verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from edvae.errors import EdvaeError

__all__ = ["HIGHER_IS_BETTER", "best_models", "paired_comparisons", "t_interval", "verdict", "VERDICTS"]

#: The direction of every metric that has one: True where higher is better (likelihoods and
#: their bounds, reconstruction, probe accuracy), False where lower is better (errors,
#: divergences, gaps, code lengths and times). Metrics not listed (mi, entropy, active_units,
#: decomposition_gap, standard errors ...) are descriptive: no model is "better" for them.
HIGHER_IS_BETTER: dict[str, bool] = {
    **dict.fromkeys(["elbo", "iwae", "true_ll", "reconstruction", "probe_accuracy"], True),
    **dict.fromkeys(["mig", "dci", "dci_completeness"], True),  # disentanglement (data with known factors)
    **dict.fromkeys(["mse", "kl", "ll_gap", "nll", "bpd", "marginal_kl", "prior_swd", "train_seconds"], False),
}

#: The possible answers of :func:`verdict`.
VERDICTS: tuple[str, ...] = ("better", "worse", "within noise")

_CONFIDENCE = 0.95


def t_interval(values: list[float], confidence: float = _CONFIDENCE) -> tuple[float, float, float]:
    r"""``(mean, low, high)``: the Student-t interval mean -+ t_{(1+c)/2, n-1} sd / sqrt(n).

    ``low`` and ``high`` are NaN for fewer than two values (no estimate of the spread).
    """
    from scipy.stats import t

    n = len(values)
    if n == 0:
        raise EdvaeError("t_interval needs at least one value")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _by_seed(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], dict[int, Mapping[str, float]]]:
    """``{(dataset, model): {seed: metrics}}``; a repeated (dataset, model, seed) is an error."""
    groups: dict[tuple[str, str], dict[int, Mapping[str, float]]] = {}
    for rec in records:
        runs = groups.setdefault((rec["dataset"], rec["model"]), {})
        if rec["seed"] in runs:
            raise EdvaeError(
                f"two records for data set {rec['dataset']!r}, model {rec['model']!r}, seed "
                f"{rec['seed']}; pass one record per run"
            )
        runs[rec["seed"]] = rec["metrics"]
    return groups


def paired_comparisons(
    records: Iterable[Mapping[str, Any]],
    reference: str,
    metrics: Iterable[str],
    *,
    higher_is_better: Mapping[str, bool] | None = None,
    confidence: float = _CONFIDENCE,
) -> list[dict[str, Any]]:
    r"""Every model against ``reference`` on every metric, paired by seed within each data set.

    ``records`` are study records (``dataset``, ``model``, ``seed``, ``metrics``). For each data
    set holding the reference, each other model and each metric with a direction in
    ``higher_is_better`` (default :data:`HIGHER_IS_BETTER`), over the seeds where both runs report
    the metric: one record with ``dataset``, ``model``, ``reference``, ``metric``, ``mean_diff``
    (mean of model - reference), ``ci_low``, ``ci_high`` (the t-interval of the module docstring,
    NaN for one seed), ``n_seeds``, ``n_better`` (seeds where the model is strictly better) and
    ``higher_is_better``. Pairs with no common seed are left out. Records are in the order the
    data sets and models first appear, metrics in the order given.
    """
    directions = HIGHER_IS_BETTER if higher_is_better is None else higher_is_better
    metrics = list(metrics)
    undirected = [m for m in metrics if m not in directions]
    if undirected:
        raise EdvaeError(
            f"metric(s) {', '.join(undirected)} have no direction; compare metrics of "
            f"{', '.join(directions)} or pass higher_is_better={{name: True/False}}"
        )
    groups = _by_seed(records)
    out: list[dict[str, Any]] = []
    for (dataset, model), runs in groups.items():
        ref = groups.get((dataset, reference))
        if model == reference or ref is None:
            continue
        for metric in metrics:
            seeds = sorted(s for s in runs.keys() & ref.keys() if metric in runs[s] and metric in ref[s])
            if not seeds:
                continue
            diffs = [float(runs[s][metric]) - float(ref[s][metric]) for s in seeds]
            mean, low, high = t_interval(diffs, confidence)
            up = directions[metric]
            out.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "reference": reference,
                    "metric": metric,
                    "mean_diff": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "n_seeds": len(seeds),
                    "n_better": sum(d > 0 if up else d < 0 for d in diffs),
                    "higher_is_better": up,
                }
            )
    return out


def verdict(comparison: Mapping[str, Any]) -> str:
    r"""``"better"`` or ``"worse"`` when the interval of model - reference excludes 0 (in the
    metric's direction, ``comparison["higher_is_better"]``), else ``"within noise"`` -- also when
    there is no interval (one seed)."""
    low, high = comparison["ci_low"], comparison["ci_high"]
    if math.isnan(low) or math.isnan(high) or low <= 0 <= high:
        return "within noise"
    higher = low > 0
    return "better" if higher == comparison["higher_is_better"] else "worse"


def best_models(
    records: Iterable[Mapping[str, Any]],
    metric: str,
    *,
    models: Iterable[str] | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
    confidence: float = _CONFIDENCE,
) -> dict[str, dict[str, Any]]:
    r"""Per data set, the model with the best mean of ``metric`` and the models a paired test
    cannot tell from it.

    Among ``models`` (default: every model of the records), the best is the one whose mean over
    seeds is best in the metric's direction; ``tied`` lists, best first and then by mean, every
    model whose per-seed differences with the best have a 95% t-interval (:func:`t_interval`)
    that contains 0, or have no interval (one common seed): the set of models the data do not
    rank below the best. A study's conclusion "model m is best on this data set" is supported
    only when ``tied == [m]``. Returns ``{dataset: {"metric", "best", "tied", "means"}}``, with
    ``means`` the per-model means in ranking order.
    """
    directions = HIGHER_IS_BETTER if higher_is_better is None else higher_is_better
    if metric not in directions:
        raise EdvaeError(f"metric {metric!r} has no direction; rank by one of {', '.join(directions)}")
    up = directions[metric]
    wanted = None if models is None else set(models)
    groups = _by_seed(records)
    datasets = list(dict.fromkeys(dataset for dataset, _ in groups))
    out: dict[str, dict[str, Any]] = {}
    for dataset in datasets:
        values = {
            model: {s: float(m[metric]) for s, m in runs.items() if metric in m}
            for (d, model), runs in groups.items()
            if d == dataset and (wanted is None or model in wanted)
        }
        means = {model: math.fsum(v.values()) / len(v) for model, v in values.items() if v}
        if not means:
            continue
        ranked = sorted(means, key=lambda model: -means[model] if up else means[model])
        best = ranked[0]
        tied = [best]
        for model in ranked[1:]:
            seeds = sorted(values[model].keys() & values[best].keys())
            if not seeds:
                continue
            _, low, high = t_interval([values[model][s] - values[best][s] for s in seeds], confidence)
            if math.isnan(low) or low <= 0 <= high:
                tied.append(model)
        out[dataset] = {"metric": metric, "best": best, "tied": tied, "means": {m: means[m] for m in ranked}}
    return out
