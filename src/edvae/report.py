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
from edvae.convergence import CONVERGENCE_TOL
from edvae.figures import draw_aggregate_posterior
from edvae.runs import LATENTS_NAME, METRICS_NAME
from edvae.stats import HIGHER_IS_BETTER, best_models, paired_comparisons, verdict

if TYPE_CHECKING:
    from edvae.experiments.study import Study

__all__ = [
    "BETTER",
    "HEADLINE",
    "best_table",
    "build_result",
    "study_best",
    "comparisons_table",
    "convergence_counts",
    "convergence_table",
    "markdown_table",
    "render_headline",
    "render_markdown",
    "study_comparisons",
    "summarise",
    "write_report",
]

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


def study_comparisons(study: Study, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every model against ``study.reference`` (none without one) on :data:`HEADLINE` and the
    study's own metrics with a direction, those present in the records; ``nll`` replaces
    ``ll_gap`` where no record has a ground truth. Training times are not compared: they
    measure the machine's load as much as the model."""
    reference = getattr(study, "reference", None)
    if reference is None:
        return []
    present = {m for r in records for m in r["metrics"]}
    headline = [m if m != "ll_gap" or "ll_gap" in present else "nll" for m in HEADLINE]
    metrics = [
        m
        for m in dict.fromkeys([*headline, *study.metrics])
        if m in present and m in HIGHER_IS_BETTER and m != "train_seconds"
    ]
    return paired_comparisons(records, reference, metrics)


def _ranking_metric(records: list[dict[str, Any]]) -> str | None:
    """The metric the best model is chosen by: ``ll_gap`` with a ground truth, else ``nll``."""
    present = {m for r in records for m in r["metrics"]}
    return next((m for m in ("ll_gap", "nll") if m in present), None)


def study_best(study: Study, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per data set, the best of ``study.contenders`` (every model when None) on ``ll_gap``
    (``nll`` without a ground truth) and the models within noise of it
    (:func:`edvae.stats.best_models`); empty when the records hold neither metric."""
    metric = _ranking_metric(records)
    if metric is None:
        return {}
    return best_models(records, metric, models=getattr(study, "contenders", None))


def best_table(result: dict[str, Any]) -> str:
    """Per data set: the best model, the models a paired 95% interval cannot tell from it, and
    the models left out of the ranking."""
    best = result.get("best") or {}
    lines = ["| data set | metric | best (mean) | within noise of the best |", "|---|---|---|---|"]
    for dataset, b in best.items():
        others = ", ".join(b["tied"][1:]) or "none"
        lines.append(f"| {dataset} | {b['metric']} | {b['best']} ({b['means'][b['best']]:.4g}) | {others} |")
    left_out = sorted({r["model"] for r in result["records"]} - {m for b in best.values() for m in b["means"]})
    note = f"\nNot ranked (diagnostic): {', '.join(left_out)}.\n" if left_out else ""
    return "\n".join(lines) + "\n" + note


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
        lines += [
            f"**{dataset}**",
            "",
            "| model | vs | metric | mean diff [95% CI] | better / seeds | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for c in comparisons:
            if c["dataset"] == dataset:
                lines.append(
                    f"| {c['model']} | {c['reference']} | {c['metric']} | {_fmt_diff(c)} | "
                    f"{c['n_better']}/{c['n_seeds']} | {verdict(c)} |"
                )
        lines.append("")
    return "\n".join(lines)


def _headline(study: Study, comparisons: list[dict[str, Any]]) -> str:
    """The study's own headline (``Study.headline``, Markdown), or ""."""
    hook = getattr(study, "headline", None)
    return hook(study, comparisons) if hook is not None else ""


def _environment() -> dict[str, Any]:
    return {
        "edvae": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }


def convergence_counts(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, int]]]:
    """``counts[dataset][model] = {"converged", "runs"}``: how many seeds of each model met the
    convergence criterion (:mod:`edvae.convergence`; records without the field count as not)."""
    counts: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    for r in records:
        c = counts[r["dataset"]].setdefault(r["model"], {"converged": 0, "runs": 0})
        c["runs"] += 1
        c["converged"] += int(bool(r.get("converged", False)))
    return dict(counts)


def build_result(
    study: Study,
    records: list[dict[str, Any]],
    *,
    figures: list[str] | None = None,
    wall_seconds: float | None = None,
    plan: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The content of results.json: everything :func:`render_markdown` and the docs need.
    ``plan`` counts the runs the invocation that wrote it reused, trained ... (its wall time
    covers only those it trained or evaluated)."""
    clean = [{k: r[k] for k in _RECORD_KEYS if k in r} for r in records]
    comparisons = study_comparisons(study, clean)
    return {
        "study": study.name,
        "title": study.title,
        "description": study.description,
        "metrics": list(study.metrics),
        "notes": list(study.notes),
        "reference": getattr(study, "reference", None),
        "records": clean,
        "summary": summarise(clean),
        "convergence": convergence_counts(clean),
        "comparisons": comparisons,
        "best": study_best(study, clean),
        "headline": _headline(study, comparisons),
        "figures": list(figures or []),
        "wall_seconds": wall_seconds,
        **({"plan": dict(plan)} if plan is not None else {}),
        **({"budget": study.budget} if getattr(study, "budget", None) else {}),
        "environment": _environment(),
    }


#: What a record of results.json keeps of a run's record (not its folder).
_RECORD_KEYS = ("dataset", "model", "seed", "converged", "improvement", "window", "metrics")


def convergence_table(result: dict[str, Any]) -> str:
    """Per data set and model: seeds converged / seeds, and the largest late improvement."""
    lines = ["| data set | model | converged / seeds | largest late improvement (nats) |", "|---|---|---|---|"]
    for dataset, models in result.get("convergence", {}).items():
        for model, c in models.items():
            gains = [
                r["improvement"]
                for r in result["records"]
                if r["dataset"] == dataset and r["model"] == model and "improvement" in r
            ]
            worst = f"{max(gains):+.4f}" if gains and all(math.isfinite(g) for g in gains) else "–"
            lines.append(f"| {dataset} | {model} | {c['converged']}/{c['runs']} | {worst} |")
    return "\n".join(lines) + "\n"


def _budget_line(result: dict[str, Any]) -> list[str]:
    """For a budget check (results.json's ``budget``): what was multiplied, as a paragraph."""
    budget = result.get("budget")
    if not budget:
        return []
    epochs = "; ".join(f"{a} → {b}" for a, b in budget["epochs"])
    return [
        f"**Budget check at {budget['factor']:g}x**: every run's epochs multiplied by {budget['factor']:g} "
        f"({epochs}), everything else the same; the description above quotes the study's own budget.",
        "",
    ]


def render_markdown(result: dict[str, Any], *, figure_prefix: str = "figures/") -> str:
    """results.md from the content of results.json alone (the docs use the same renderer):
    ``figure_prefix`` + a figure's file name is the link to it."""
    seeds = sorted({r["seed"] for r in result["records"]})
    shown = [m for m in result["metrics"] if m != "train_seconds"]  # times measure the machine's load; kept in the JSON
    md = [
        f"# {result['title']}",
        "",
        result["description"],
        "",
        *_budget_line(result),
        *(["## Headline", "", result["headline"], "## All models", ""] if result.get("headline") else []),
        f"Mean ± standard deviation over {len(seeds)} seed(s); best mean per column in bold "
        f"(higher is better for {', '.join(m for m in shown if HIGHER_IS_BETTER.get(m) is True)}; "
        f"lower for {', '.join(m for m in shown if HIGHER_IS_BETTER.get(m) is False)}). "
        "Values in nats per example except mse (per element); training times are in results.json only.",
        "",
        markdown_table(result["summary"], shown),
    ]
    md += [f"- {note}" for note in result.get("notes", [])]
    if result.get("convergence"):
        md += [
            "",
            "## Convergence",
            "",
            "A run converged when its best validation ELBO over the last tenth of its epochs exceeds its best "
            f"before them by less than {CONVERGENCE_TOL} nats (edvae.convergence).",
            "",
            convergence_table(result),
        ]
    if result.get("best"):
        md += [
            "",
            "## Best model per data set",
            "",
            "The model with the best mean, and every model whose paired 95% interval of the difference "
            "with it contains 0 (edvae.stats.best_models): a single best model is a conclusion only when "
            "that list is empty.",
            "",
            best_table(result),
        ]
    if result.get("comparisons"):
        md += [
            "",
            f"## Paired comparisons with {result['reference']}",
            "",
            "Mean over seeds of the per-seed difference model - reference (same data set and seed), with "
            "its 95% Student-t interval; 'better / seeds' counts the seeds where the model is better in the "
            "metric's direction; the verdict is 'within noise' when the interval contains 0.",
            "",
            comparisons_table(result["comparisons"]),
        ]
    if result.get("figures"):
        md += ["", "## Figures", ""] + [f"![{Path(name).stem}]({figure_prefix}{name})" for name in result["figures"]]
    if result.get("wall_seconds") is not None:
        plan = result.get("plan")
        reused = (plan or {}).get("reuse", 0) + (plan or {}).get("evaluate", 0)
        of = (
            f" (the invocation that finished it; {reused} of {len(result['records'])} runs were reused from an earlier "
            "one)"
            if reused
            else ""
        )
        md += ["", f"Wall time of the study: {result['wall_seconds']:.0f} s{of}."]
    return "\n".join(md) + "\n"


def render_headline(result: dict[str, Any]) -> str:
    """The short form for the README: the study's own headline table when it has one (the
    readings study's claims), else the headline metrics (mean ± std) and the paired comparisons
    with the reference; and the runs converged."""
    counts = [c for models in result.get("convergence", {}).values() for c in models.values()]
    converged = (
        [f"Runs converged: {sum(c['converged'] for c in counts)} of {sum(c['runs'] for c in counts)}.\n"]
        if counts
        else []
    )
    if result.get("headline"):
        return "\n".join([result["headline"], *converged])
    present = {m for r in result["records"] for m in r["metrics"]}
    headline = [
        m
        for m in dict.fromkeys([m if m != "ll_gap" or "ll_gap" in present else "nll" for m in HEADLINE])
        if m in present
    ]
    parts = [markdown_table(result["summary"], headline), *converged]
    if result.get("best"):
        parts.append(
            "Best model per data set (and those a paired 95% interval cannot tell from it):\n\n" + best_table(result)
        )
    if result.get("comparisons"):
        shown = [c for c in result["comparisons"] if c["metric"] in headline]
        parts.append(
            f"Paired with {result['reference']} (model - reference, 95% interval):\n\n" + comparisons_table(shown)
        )
    return "\n".join(parts)


def write_report(
    study: Study,
    records: list[dict[str, Any]],
    out_dir: str | Path,
    *,
    wall_seconds: float | None = None,
    plan: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Write results.json, results.csv, results.md (:func:`render_markdown` of results.json) and
    figures/ into ``out_dir``; returns results.json's content."""
    out_dir = Path(out_dir)
    clean = [{k: r[k] for k in _RECORD_KEYS if k in r} for r in records]
    figures = _figures(study, records, summarise(clean), out_dir / "figures")
    extra_figures = getattr(study, "extra_figures", None)
    if extra_figures is not None:
        figures += extra_figures(study, records, out_dir / "figures")
    result = build_result(study, records, figures=[p.name for p in figures], wall_seconds=wall_seconds, plan=plan)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    metric_names = sorted({m for r in clean for m in r["metrics"]})
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "model", "seed", "converged", *metric_names])
        for r in clean:
            writer.writerow(
                [
                    r["dataset"],
                    r["model"],
                    r["seed"],
                    r.get("converged", ""),
                    *(r["metrics"].get(m, "") for m in metric_names),
                ]
            )
    (out_dir / "results.md").write_text(render_markdown(result))
    return result


def _figures(study: Study, records: list[dict[str, Any]], summary: dict[str, Any], fig_dir: Path) -> list[Path]:
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
    fig, axes = plt.subplots(
        len(datasets), len(models), figsize=(3.2 * len(models), 3.2 * len(datasets)), squeeze=False
    )
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

    written.append(_training_curves(plt, shown, datasets, fig_dir / "training_curves.png"))
    written.append(_decomposition(plt, summary, datasets, models, fig_dir / "decomposition.png"))
    return written


#: Line styles cycled over the models of a figure, so that curves which coincide (``edvae`` and
#: ``vae-true`` do, by design) stay visible: a dashed line over a solid one, markers at different epochs.
_STYLES = [("-", "o", 2.4), ("--", "s", 1.6), (":", "^", 2.0), ("-.", "v", 1.6), ((0, (5, 1, 1, 1)), "D", 1.4)]


def _training_curves(plt: Any, shown: list[dict[str, Any]], datasets: list[str], path: Path) -> Path:
    """The validation ELBO after every epoch, one panel per data set, one styled line per model."""
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.2), squeeze=False)
    lows: dict[str, list[float]] = defaultdict(list)
    for i, r in enumerate(shown):
        path_metrics = Path(r["run_dir"]) / METRICS_NAME
        if not path_metrics.exists():
            continue
        rows = [json.loads(line) for line in path_metrics.read_text().splitlines()]
        val = [row for row in rows if row.get("split") == "val"]
        if not val:
            continue
        ax = axes[0][datasets.index(r["dataset"])]
        key = "elbo_mc" if "elbo_mc" in val[0] else "elbo"
        epochs = [row["epoch"] for row in val]
        values = [row[key] for row in val]
        style, marker, width = _STYLES[i % len(_STYLES)]
        every = max(1, len(epochs) // 8)
        ax.plot(
            epochs,
            values,
            linestyle=style,
            marker=marker,
            markevery=(i % every, every),
            markersize=4,
            linewidth=width,
            label=r["model"],
            alpha=0.85,
        )
        lows[r["dataset"]].append(min(values[len(values) // 10 :]) if len(values) > 1 else values[0])
    for dataset, ax in zip(datasets, axes[0], strict=True):
        ax.set_title(f"{dataset}: validation ELBO per epoch (one-sample MC, the same noise every epoch)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation ELBO (nats per example)")
        if lows[dataset]:
            top = ax.get_ylim()[1]
            low = min(lows[dataset])
            ax.set_ylim(low - 0.05 * (top - low), top)  # the first tenth of the epochs may fall below
            ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _decomposition(plt: Any, summary: dict[str, Any], datasets: list[str], models: list[str], path: Path) -> Path:
    """ELBO = R - I - (H[q(z), p(z)] - H[q(z)]) per model, drawn so that the parts add up.

    For each model a bar rises from 0 to the reconstruction term R; beside it the KL is a stack
    hanging down from R, first I(x; z), then the marginal KL H[q(z), p(z)] - H[q(z)]; its bottom
    is R - KL, and the measured ELBO is marked with a black bar (they differ by the evaluation's
    Monte Carlo error only). Means over seeds."""
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(max(6.0, 1.3 * len(models) + 2) * len(datasets), 4.6), squeeze=False
    )
    colours = {"reconstruction": "tab:blue", "mi": "tab:orange", "marginal_kl": "tab:red"}
    for di, dataset in enumerate(datasets):
        ax = axes[0][di]
        names = [
            m
            for m in models
            if all(t in summary.get(dataset, {}).get(m, {}) for t in ("reconstruction", "mi", "marginal_kl", "elbo"))
        ]
        width = 0.38
        for i, name in enumerate(names):
            stats = summary[dataset][name]
            recon, mi, mkl, elbo = (stats[t]["mean"] for t in ("reconstruction", "mi", "marginal_kl", "elbo"))
            first = i == 0
            ax.bar(
                i - width / 2,
                recon,
                width,
                color=colours["reconstruction"],
                label="R = E log p(x|z)" if first else None,
            )
            ax.bar(i + width / 2, -mi, width, bottom=recon, color=colours["mi"], label="I(x; z)" if first else None)
            ax.bar(
                i + width / 2,
                -mkl,
                width,
                bottom=recon - mi,
                color=colours["marginal_kl"],
                label="H[q(z), p(z)] - H[q(z)]" if first else None,
            )
            ax.hlines(
                elbo, i - width, i + width, colors="black", linewidth=2.5, label="ELBO (measured)" if first else None
            )
            ax.annotate(
                f"KL = {mi + mkl:.2f}",
                (i + width / 2, recon - (mi + mkl) / 2),
                ha="center",
                va="center",
                fontsize=6,
                rotation=90,
            )
        ax.set_xticks(range(len(names)), names, fontsize=8, rotation=20 if len(names) > 4 else 0)
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_ylabel("nats per example")
        ax.set_title(f"{dataset}: ELBO = R - KL, KL = I(x; z) + (H[q(z), p(z)] - H[q(z)])", fontsize=9)
        if names:
            heights = [summary[dataset][m][t]["mean"] for m in names for t in ("reconstruction", "elbo")] + [0.0]
            low, high = min(heights), max(heights)
            ax.set_ylim(low - 0.06 * (high - low), high + 0.06 * (high - low))
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
