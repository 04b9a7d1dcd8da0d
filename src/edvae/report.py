"""Reports: results.json, results.csv, results.md and figures for a study.

The summary gives, per data set and model, the mean and the sample standard deviation over
seeds of every metric. In the Markdown table the best mean of each column is in bold, "best"
meaning higher for log-likelihoods, ELBO and probe accuracy, lower for errors, divergences and
times (:data:`edvae.stats.HIGHER_IS_BETTER`).

When the study names a ``reference`` model, ``comparisons`` holds every other model against it,
paired by seed within each data set (:func:`edvae.stats.paired_comparisons`), on the headline
metrics (:data:`HEADLINE`, ``nll`` standing in for ``ll_gap`` without a ground truth) and the
study's own metrics that have a direction; results.md shows them as a table.
"""

from __future__ import annotations

import csv
import json
import math
import platform
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edvae._version import __version__
from edvae.figures import draw_aggregate_posterior
from edvae.runs import LATENTS_NAME, METRICS_NAME
from edvae.stats import HIGHER_IS_BETTER, paired_comparisons, verdict

if TYPE_CHECKING:
    from edvae.experiments.study import Study

__all__ = ["BETTER", "HEADLINE", "summarise", "write_report", "markdown_table", "study_comparisons", "comparisons_table"]

#: Which way is better for the metrics that have a direction (others are descriptive).
BETTER: dict[str, str] = {name: "max" if up else "min" for name, up in HIGHER_IS_BETTER.items()}

#: The metrics every study compares with its reference (those its records hold).
HEADLINE: tuple[str, ...] = ("ll_gap", "iwae", "elbo", "kl", "mse")


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``summary[dataset][model][metric] = {"mean", "std", "n"}`` over seeds (sample std)."""
    groups: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for rec in records:
        groups[(rec["dataset"], rec["model"])].append(rec["metrics"])
    summary: dict[str, dict[str, dict[str, dict[str, float]]]] = defaultdict(dict)
    for (dataset, model), rows in groups.items():
        stats = {}
        for metric in rows[0]:
            values = torch.tensor([r[metric] for r in rows if metric in r], dtype=torch.float64)
            std = float(values.std()) if len(values) > 1 else 0.0
            stats[metric] = {"mean": float(values.mean()), "std": std, "n": len(values)}
        summary[dataset][model] = stats
    return dict(summary)


def _fmt(mean: float, std: float) -> str:
    scale = max(abs(mean), 1e-12)
    digits = 2 if scale >= 10 else 3 if scale >= 1 else 4
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(summary: dict[str, Any], metrics: list[str]) -> str:
    """The paper-style table: one block per data set, mean ± std, best mean in bold."""
    lines = []
    for dataset, models in summary.items():
        shown = [m for m in metrics if any(m in s for s in models.values())]
        lines.append(f"**{dataset}**\n")
        lines.append("| model | " + " | ".join(shown) + " |")
        lines.append("|---|" + "---|" * len(shown))
        best: dict[str, float] = {}
        for m in shown:
            if m in BETTER:
                means = [s[m]["mean"] for s in models.values() if m in s]
                best[m] = max(means) if BETTER[m] == "max" else min(means)
        for model, stats in models.items():
            cells = []
            for m in shown:
                if m not in stats:
                    cells.append("–")
                    continue
                text = _fmt(stats[m]["mean"], stats[m]["std"])
                cells.append(f"**{text}**" if m in best and math.isclose(stats[m]["mean"], best[m]) else text)
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def study_comparisons(study: "Study", records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every model against ``study.reference`` (none without one) on :data:`HEADLINE` and the
    study's own metrics with a direction, those present in the records; ``nll`` replaces
    ``ll_gap`` where no record has a ground truth. Training times are not compared: they
    measure the machine's load as much as the model."""
    reference = getattr(study, "reference", None)
    if reference is None:
        return []
    present = {m for r in records for m in r["metrics"]}
    headline = [m if m != "ll_gap" or "ll_gap" in present else "nll" for m in HEADLINE]
    metrics = [m for m in dict.fromkeys([*headline, *study.metrics]) if m in present and m in HIGHER_IS_BETTER and m != "train_seconds"]
    return paired_comparisons(records, reference, metrics)


def _fmt_diff(c: dict[str, Any]) -> str:
    scale = max(abs(c["mean_diff"]), abs(c["ci_low"]) if math.isfinite(c["ci_low"]) else 0.0, 1e-12)
    digits = 2 if scale >= 10 else 3 if scale >= 1 else 4
    interval = "no interval" if math.isnan(c["ci_low"]) else f"{c['ci_low']:+.{digits}f}, {c['ci_high']:+.{digits}f}"
    return f"{c['mean_diff']:+.{digits}f} [{interval}]"


def comparisons_table(comparisons: list[dict[str, Any]]) -> str:
    """One block per data set: model vs reference, metric, mean difference (model - reference)
    with its 95% interval, seeds where the model is better / seeds, and the verdict."""
    lines: list[str] = []
    for dataset in dict.fromkeys(c["dataset"] for c in comparisons):
        lines += [f"**{dataset}**", "", "| model | vs | metric | mean diff [95% CI] | better / seeds | verdict |", "|---|---|---|---|---|---|"]
        for c in comparisons:
            if c["dataset"] == dataset:
                lines.append(
                    f"| {c['model']} | {c['reference']} | {c['metric']} | {_fmt_diff(c)} | "
                    f"{c['n_better']}/{c['n_seeds']} | {verdict(c)} |"
                )
        lines.append("")
    return "\n".join(lines)


def _headline(study: "Study", comparisons: list[dict[str, Any]]) -> list[str]:
    """The study's own headline section (``Study.headline``), or nothing."""
    hook = getattr(study, "headline", None)
    text = hook(study, comparisons) if hook is not None else ""
    return ["## Headline", "", text, "## All models", ""] if text else []


def _environment() -> dict[str, Any]:
    return {
        "edvae": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }


def write_report(study: "Study", records: list[dict[str, Any]], out_dir: str | Path, *, wall_seconds: float | None = None) -> dict[str, Any]:
    """Write results.json, results.csv, results.md and figures/ into ``out_dir``."""
    out_dir = Path(out_dir)
    summary = summarise(records)
    clean = [{k: r[k] for k in ("dataset", "model", "seed", "metrics")} for r in records]
    result = {
        "study": study.name,
        "title": study.title,
        "description": study.description,
        "records": clean,
        "summary": summary,
        "comparisons": study_comparisons(study, clean),
        "environment": _environment(),
    }
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    metric_names = sorted({m for r in clean for m in r["metrics"]})
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "model", "seed", *metric_names])
        for r in clean:
            writer.writerow([r["dataset"], r["model"], r["seed"], *(r["metrics"].get(m, "") for m in metric_names)])
    figures = _figures(study, records, summary, out_dir / "figures")
    if getattr(study, "extra_figures", None) is not None:
        figures += study.extra_figures(study, records, out_dir / "figures")
    seeds = sorted({r["seed"] for r in clean})
    md = [
        f"# {study.title}",
        "",
        study.description,
        "",
        *_headline(study, result["comparisons"]),
        f"Mean ± standard deviation over {len(seeds)} seed(s); best mean per column in bold "
        f"(higher is better for {', '.join(m for m, up in HIGHER_IS_BETTER.items() if up)}; "
        f"lower for {', '.join(m for m, up in HIGHER_IS_BETTER.items() if not up)}). "
        "All values in nats per example except mse (per element) and times (seconds).",
        "",
        markdown_table(summary, study.metrics),
    ]
    md += [f"- {note}" for note in study.notes]
    if result["comparisons"]:
        md += [
            "",
            f"## Paired comparisons with {study.reference}",
            "",
            "Mean over seeds of the per-seed difference model - reference (same data set and seed), with "
            "its 95% Student-t interval; 'better / seeds' counts the seeds where the model is better in the "
            "metric's direction; the verdict is 'within noise' when the interval contains 0.",
            "",
            comparisons_table(result["comparisons"]),
        ]
    if figures:
        md += ["", "## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in figures]
    if wall_seconds is not None:
        md += ["", f"Wall time of the study: {wall_seconds:.0f} s."]
    (out_dir / "results.md").write_text("\n".join(md) + "\n")
    return result


def _figures(study: "Study", records: list[dict[str, Any]], summary: dict[str, Any], fig_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    first_seed = min(r["seed"] for r in records)
    shown = [r for r in records if r["seed"] == first_seed]
    datasets = list(dict.fromkeys(r["dataset"] for r in shown))
    models = list(dict.fromkeys(r["model"] for r in shown))

    # Aggregate posterior over the prior density.
    fig, axes = plt.subplots(len(datasets), len(models), figsize=(3.2 * len(models), 3.2 * len(datasets)), squeeze=False)
    for r in shown:
        ax = axes[datasets.index(r["dataset"])][models.index(r["model"])]
        path = Path(r["run_dir"]) / LATENTS_NAME
        title = f"{r['dataset']} / {r['model']}"
        if path.exists():
            lat = torch.load(path, weights_only=True)
            density = (lat["grid"], lat["prior_log_density"]) if "grid" in lat else None
            draw_aggregate_posterior(ax, lat["z"], lat.get("labels"), title=title, prior_density=density, legend=False)
        else:
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Aggregate posterior samples (points) over the model's prior density (shading)")
    fig.tight_layout()
    written.append(fig_dir / "aggregate_posterior.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # Training curves of every logged term.
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for r in shown:
        path = Path(r["run_dir"]) / METRICS_NAME
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        val = [row for row in rows if row["split"] == "val"]
        ax = axes[0][datasets.index(r["dataset"])]
        key = "elbo_mc" if "elbo_mc" in val[0] else "elbo"
        ax.plot([row["epoch"] for row in val], [row[key] for row in val], label=r["model"])
        ax.set_title(f"{r['dataset']}: validation ELBO (one-sample MC) per epoch", fontsize=9)
        ax.set_xlabel("epoch")
    for ax in axes[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(fig_dir / "training_curves.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # The decomposition per model as bars.
    terms = ["reconstruction", "mi", "marginal_kl", "kl"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for di, dataset in enumerate(datasets):
        ax = axes[0][di]
        width = 0.8 / len(terms)
        names = [m for m in models if m in summary.get(dataset, {})]
        for ti, term in enumerate(terms):
            vals = [summary[dataset][m].get(term, {}).get("mean", float("nan")) for m in names]
            ax.bar([i + ti * width for i in range(len(names))], vals, width, label=term)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, fontsize=8)
        ax.set_title(f"{dataset}: ELBO = reconstruction - MI - KL(q(z)||p(z))", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(fig_dir / "decomposition.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written
