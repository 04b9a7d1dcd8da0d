r"""Budget checks: would a study's verdicts change with more training?

A study trained at its budget T (every run's ``train.epochs``) is trained again with every run's
epochs multiplied by a factor f (``edvae reproduce --budget 2x``), the same seeds or a subset of
them, everything else equal. :func:`budget_check` compares the two results files (the content of
results.json, as published in docs/results/):

* per data set, model and metric of the study's paired comparisons, the verdict of model -
  reference (:func:`edvae.stats.verdict`: better / worse / within noise) at T over the study's
  seeds (as published), at T over the seeds of the check only (like for like), and at f T;
  the mean of the metric over the check's seeds at T and at f T and its change; and whether the
  like-for-like verdict changed. The reference's own means are listed too (verdict "reference").
* per data set, the best model and the models within noise of it (:func:`edvae.stats.best_models`
  on the study's ranking metric among its ranked models) at T (published), at T on the check's
  seeds and at f T, and whether the like-for-like set changed.

A verdict "held" when no like-for-like verdict and no best-model set changed.
"""

from __future__ import annotations

import math
import re
from typing import Any

from edvae.errors import EdvaeError
from edvae.stats import best_models, paired_comparisons, verdict

__all__ = ["budget_check", "budget_status", "budget_table", "check_name", "parse_budget", "scaled_epochs"]


def parse_budget(text: str | float) -> float:
    """The factor of ``--budget``: ``"2x"``, ``"2"``, ``"1.5x"`` or a number; must be positive."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*[xX]?\s*", str(text))
    factor = float(match[1]) if match else math.nan
    if not math.isfinite(factor) or factor <= 0:
        raise EdvaeError(f"--budget must be a positive factor such as 2x or 1.5, got '{text}'")
    return factor


def scaled_epochs(epochs: int, factor: float) -> int:
    """``round(factor * epochs)``, at least 1: a run's epochs under a budget factor."""
    return max(1, round(factor * epochs))


def check_name(base: str, factor: float) -> str:
    """The published name of the budget check of ``base`` at ``factor``: ``paper-2x``."""
    return f"{base}-{factor:g}x"


def _ranked(result: dict[str, Any]) -> dict[str, list[str]]:
    """Per data set, the models the study ranked for its best-model table (``best[d]["means"]``)."""
    return {dataset: list(b["means"]) for dataset, b in (result.get("best") or {}).items()}


def _best(records: list[dict[str, Any]], result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The best-model table of ``records`` ranked as the study ranks (same metric, same models)."""
    out = {}
    for dataset, models in _ranked(result).items():
        metric = result["best"][dataset]["metric"]
        rows = [r for r in records if r["dataset"] == dataset]
        out.update(best_models(rows, metric, models=models))
    return out


def _means(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], float]:
    sums: dict[tuple[str, str, str], list[float]] = {}
    for r in records:
        for metric, value in r["metrics"].items():
            sums.setdefault((r["dataset"], r["model"], metric), []).append(float(value))
    return {key: math.fsum(v) / len(v) for key, v in sums.items()}


def budget_check(base: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    """The budget check of the study result ``base`` (at T) by ``check`` (the same study trained
    with every run's epochs times ``check["budget"]["factor"]``), as in the module docstring.

    Returns ``{"factor", "epochs", "seeds", "base_seeds", "rows", "best", "changed",
    "best_changed", "held", "converged"}``: ``rows`` one per (data set, model, metric) with
    ``verdict_published``, ``verdict_t``, ``verdict_check``, ``mean_t``, ``mean_check``,
    ``change``, ``changed``; ``best`` one per data set with ``published``, ``t``, ``check`` (each
    ``{"best", "tied"}``) and ``changed``; ``changed`` the number of changed verdicts,
    ``best_changed`` the data sets whose best-model set changed, ``converged`` the converged / run
    counts at T (check's seeds) and at f T. Raises :class:`EdvaeError` when ``check`` is not a
    budget check of ``base`` (another study or reference, no budget, seeds ``base`` lacks)."""
    budget = check.get("budget")
    if not budget:
        raise EdvaeError(
            f"the results of study '{check.get('study')}' are not a budget check (no 'budget' in results.json); "
            "write them with `edvae reproduce --budget 2x ...` (it reuses finished runs of the same config)"
        )
    if (check.get("study"), check.get("reference")) != (base.get("study"), base.get("reference")):
        raise EdvaeError(
            f"a budget check of study '{base.get('study')}' (reference {base.get('reference')}) must be of the same "
            f"study and reference, got '{check.get('study')}' (reference {check.get('reference')})"
        )
    seeds = sorted({r["seed"] for r in check["records"]})
    base_seeds = sorted({r["seed"] for r in base["records"]})
    if not set(seeds) <= set(base_seeds):
        raise EdvaeError(f"the budget check has seeds {seeds}, the study only {base_seeds}: use a subset of its seeds")
    same = [r for r in base["records"] if r["seed"] in seeds]
    reference = base["reference"]
    metrics = list(dict.fromkeys(c["metric"] for c in base.get("comparisons", [])))
    published = {(c["dataset"], c["model"], c["metric"]): c for c in base.get("comparisons", [])}
    at_t = {(c["dataset"], c["model"], c["metric"]): c for c in paired_comparisons(same, reference, metrics)}
    at_check = {
        (c["dataset"], c["model"], c["metric"]): c for c in paired_comparisons(check["records"], reference, metrics)
    }
    means_t, means_check = _means(same), _means(check["records"])
    rows = []
    models = list(dict.fromkeys((r["dataset"], r["model"]) for r in base["records"]))
    for dataset, model in models:
        for metric in metrics:
            key = (dataset, model, metric)
            if key not in means_t or key not in means_check:
                continue
            if model == reference:
                verdicts = ("reference",) * 3
            elif key in at_t and key in at_check and key in published:
                verdicts = (verdict(published[key]), verdict(at_t[key]), verdict(at_check[key]))
            else:
                continue
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "metric": metric,
                    "verdict_published": verdicts[0],
                    "verdict_t": verdicts[1],
                    "verdict_check": verdicts[2],
                    "mean_t": means_t[key],
                    "mean_check": means_check[key],
                    "change": means_check[key] - means_t[key],
                    "changed": verdicts[1] != verdicts[2],
                }
            )
    best_t, best_check = _best(same, base), _best(check["records"], base)
    best = []
    for dataset, b in (base.get("best") or {}).items():
        if dataset not in best_t or dataset not in best_check:
            continue
        entry = {
            "dataset": dataset,
            "metric": b["metric"],
            "published": {"best": b["best"], "tied": b["tied"]},
            "t": {"best": best_t[dataset]["best"], "tied": best_t[dataset]["tied"]},
            "check": {"best": best_check[dataset]["best"], "tied": best_check[dataset]["tied"]},
        }
        entry["changed"] = set(entry["t"]["tied"]) != set(entry["check"]["tied"])
        best.append(entry)

    def converged(records: list[dict[str, Any]]) -> dict[str, int]:
        return {"converged": sum(bool(r.get("converged")) for r in records), "runs": len(records)}

    changed = sum(r["changed"] for r in rows)
    best_changed = [b["dataset"] for b in best if b["changed"]]
    return {
        "factor": budget["factor"],
        "epochs": budget.get("epochs", []),
        "seeds": seeds,
        "base_seeds": base_seeds,
        "rows": rows,
        "best": best,
        "changed": changed,
        "best_changed": best_changed,
        "held": changed == 0 and not best_changed,
        "converged": {"t": converged(same), "check": converged(check["records"])},
    }


def _num(value: float, scale: float | None = None, sign: str = "") -> str:
    """``value`` with 2, 3 or 4 decimals for a ``scale`` (default: the value) of >= 10, >= 1 or less."""
    size = max(abs(value if scale is None else scale), 1e-12)
    digits = 2 if size >= 10 else 3 if size >= 1 else 4
    return f"{value:{sign}.{digits}f}"


def _models(entry: dict[str, Any]) -> str:
    others = [m for m in entry["tied"] if m != entry["best"]]
    return entry["best"] + (f" (≈ {', '.join(others)})" if others else "")


def budget_status(check: dict[str, Any]) -> str:
    """One line: whether the study's verdicts held at f T (:func:`budget_check`'s result)."""
    factor = f"{check['factor']:g}x"
    seeds = f"{len(check['seeds'])} seeds"
    if check["held"]:
        return f"held at {factor} ({seeds}): no verdict and no best-model set changed"
    parts = []
    if check["changed"]:
        parts.append(f"{check['changed']} of {sum(r['verdict_t'] != 'reference' for r in check['rows'])} verdicts")
    if check["best_changed"]:
        parts.append(f"the best-model set on {', '.join(check['best_changed'])}")
    return f"changed at {factor} ({seeds}): {' and '.join(parts)}; cite the {factor} verdicts"


def budget_table(check: dict[str, Any]) -> str:
    """The budget-check section's Markdown: the status line, the best-model sets and the verdicts
    per data set (T published, T on the check's seeds, f T, means and their change)."""
    factor = f"{check['factor']:g}x"
    seeds = ", ".join(map(str, check["seeds"]))
    epochs = "; ".join(f"{a} → {b}" for a, b in check["epochs"]) or "?"
    t, c = check["converged"]["t"], check["converged"]["check"]
    lines = [
        f"**Verdicts {budget_status(check)}.**",
        "",
        f"The study trained again with every run's epochs times {check['factor']:g} (epochs: {epochs}), seeds {seeds} "
        f"of {len(check['base_seeds'])}, everything else the same. 'T' is the published study restricted to those "
        f"seeds, so that T and {factor} compare like for like; 'T (all)' is the published verdict over "
        f"{len(check['base_seeds'])} seeds. Means over seeds {seeds}. Converged: {t['converged']} of {t['runs']} "
        f"runs at T, {c['converged']} of {c['runs']} at {factor}.",
        "",
        f"| data set | metric | best (≈ within noise), T (all) | T | {factor} | changed? |",
        "|---|---|---|---|---|---|",
    ]
    for b in check["best"]:
        lines.append(
            f"| {b['dataset']} | {b['metric']} | {_models(b['published'])} | {_models(b['t'])} | "
            f"{_models(b['check'])} | {'**yes**' if b['changed'] else 'no'} |"
        )
    for dataset in dict.fromkeys(r["dataset"] for r in check["rows"]):
        lines += [
            "",
            f"**{dataset}**",
            "",
            f"| model | metric | verdict T (all) | verdict T | verdict {factor} | mean T → {factor} (change) "
            "| changed? |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in check["rows"]:
            if r["dataset"] == dataset:
                lines.append(
                    f"| {r['model']} | {r['metric']} | {r['verdict_published']} | {r['verdict_t']} | "
                    f"{r['verdict_check']} | {_num(r['mean_t'])} → {_num(r['mean_check'])} "
                    f"({_num(r['change'], max(abs(r['mean_t']), abs(r['mean_check'])), '+')}) | "
                    f"{'**yes**' if r['changed'] else 'no'} |"
                )
    return "\n".join(lines) + "\n"
