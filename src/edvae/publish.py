"""Documentation generated from results: a study's results.json becomes docs/results/<name>.json,
docs/results/<name>.md and the README's generated blocks, all rendered from the published JSON
files by :mod:`edvae.report` (the renderer of results.md) and :mod:`edvae.budget`, so that no
number in the docs is copied by hand.

* A page is results.md (figures at img/<name>-<figure>) plus a "Budget check" section: the runs
  converged, and the budget-check table when docs/results/<name>-<f>x.json holds the same study
  trained with every run's epochs times f (:func:`edvae.budget.budget_check`), "pending" for a
  study in :data:`BUDGET_PLANNED` without one, else that no budget check was run. Text below the
  line :data:`HAND_WRITTEN` (the readings of the numbers, written by hand) is kept by publish and
  not checked.
* README blocks: ``<!-- studies -->`` (one line per study, the studies of
  :data:`BUDGET_PLANNED` first: question, best models, runs converged, budget check, link),
  ``<!-- headline:<name> -->`` (the headline metrics' table and best models) and
  ``<!-- results:<name> -->`` (:func:`edvae.report.render_headline`), each up to its closing
  ``<!-- /... -->``.

:func:`stale_docs` lists every committed page or README block that its committed JSON no longer
renders to (the test suite requires it to be empty).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edvae.budget import budget_check, budget_status, budget_table, check_name
from edvae.errors import EdvaeError
from edvae.report import HEADLINE, markdown_table, render_headline, render_markdown

__all__ = [
    "BUDGET_PLANNED",
    "HAND_WRITTEN",
    "MARKER",
    "docs_markdown",
    "publish",
    "readme_blocks",
    "refresh",
    "render_page",
    "stale_docs",
    "studies_table",
    "update_readme",
]

#: A README block generated from the published results: ``results:<name>``, ``headline:<name>``
#: or ``studies``, its body and its closing marker.
MARKER = re.compile(
    r"<!-- (?P<tag>(?P<kind>results|headline):(?P<name>[A-Za-z0-9_.-]+)|studies) -->\n(?P<body>.*?)<!-- /(?P=tag) -->",
    re.S,
)

#: The line of a page below which the text is written by hand (kept by publish, not checked).
HAND_WRITTEN = "<!-- Written by hand below this line: kept by `edvae publish`, not generated. -->"

#: Studies whose budget check (every run's epochs doubled) is planned: their pages say "pending"
#: until docs/results/<name>-2x.json is published.
BUDGET_PLANNED: tuple[str, ...] = ("paper", "readings")


def docs_markdown(result: dict[str, Any], name: str) -> str:
    """results.md with the figures at img/<name>-<figure> (the generated page without its budget section)."""
    return render_markdown(result, figure_prefix=f"img/{name}-")


def _checks(results: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    """``{base name: check name}``: every published budget check (a result with ``budget``) named
    :func:`edvae.budget.check_name` of a published base."""
    out: dict[str, str] = {}
    for name, result in results.items():
        budget = result.get("budget")
        if not budget:
            continue
        for base in results:
            if not results[base].get("budget") and name == check_name(base, budget["factor"]):
                if base in out:
                    raise EdvaeError(f"two budget checks of {base} ({out[base]}, {name}); publish one")
                out[base] = name
    return out


def _converged(result: dict[str, Any]) -> tuple[int, int]:
    counts = [c for models in result.get("convergence", {}).values() for c in models.values()]
    return sum(c["converged"] for c in counts), sum(c["runs"] for c in counts)


def _budget_section(name: str, results: Mapping[str, dict[str, Any]]) -> str:
    result = results[name]
    converged, runs = _converged(result)
    lines = [
        "",
        "## Budget check",
        "",
        f"Converged: {converged} of {runs} runs (the criterion of Convergence above).",
        "",
    ]
    budget = result.get("budget")
    checks = _checks(results)
    if budget:
        base = next((b for b, c in checks.items() if c == name), None)
        of = f"[{base}]({base}.md)" if base else "its study"
        lines.append(f"This is the budget check of {of} at {budget['factor']:g}x; the verdicts are compared there.")
    elif name in checks:
        lines.append(
            f"Full report at {results[checks[name]]['budget']['factor']:g}x: [{checks[name]}]({checks[name]}.md)."
        )
        lines += ["", budget_table(budget_check(result, results[checks[name]]))]
    elif name in BUDGET_PLANNED:
        lines.append(
            f"Budget check: pending (`edvae reproduce --study {result['study']} --budget 2x`, then "
            f"`edvae publish OUT --budget-of {name}`)."
        )
    else:
        lines.append(
            "No budget check was run for this study: whether its verdicts hold with more training is not measured."
        )
    return "\n".join(lines) + "\n"


def render_page(name: str, results: Mapping[str, dict[str, Any]]) -> str:
    """The generated part of docs/results/<name>.md given every published result by name."""
    return docs_markdown(results[name], name) + _budget_section(name, results)


def _status(name: str, results: Mapping[str, dict[str, Any]]) -> str:
    checks = _checks(results)
    if name in checks:
        return budget_status(budget_check(results[name], results[checks[name]]))
    return "pending" if name in BUDGET_PLANNED else "not run"


def _best_line(result: dict[str, Any]) -> str:
    parts = []
    for dataset, b in (result.get("best") or {}).items():
        others = [m for m in b["tied"] if m != b["best"]]
        parts.append(f"{dataset}: {b['best']}" + (f" (≈ {', '.join(others)})" if others else ""))
    return "; ".join(parts) or "–"


def studies_table(results: Mapping[str, dict[str, Any]], link_prefix: str = "docs/results/") -> str:
    """The README's summary: one line per published study (budget checks excluded) with its
    question (title), the best model per data set by ll_gap/nll and those within noise of it
    (at f T where a budget check changed that set), runs converged, and the budget check's status."""
    checks = _checks(results)
    lines = [
        "| study | question | best (≈ within noise), per data set | converged | budget check |",
        "|---|---|---|---|---|",
    ]
    order = sorted(results, key=lambda n: (BUDGET_PLANNED.index(n) if n in BUDGET_PLANNED else len(BUDGET_PLANNED), n))
    for name in order:
        result = results[name]
        if result.get("budget"):
            continue
        best = _best_line(result)
        if name in checks and budget_check(result, results[checks[name]])["best_changed"]:
            best = f"at {results[checks[name]]['budget']['factor']:g}x: {_best_line(results[checks[name]])}"
        converged, runs = _converged(result)
        lines.append(
            f"| [{name}]({link_prefix}{name}.md) | {result['title']} | {best} | {converged} of {runs} | "
            f"{_status(name, results)} |"
        )
    return "\n".join(lines) + "\n"


def _headline_block(result: dict[str, Any]) -> str:
    """The README's table of a study: its headline metrics (mean ± std), runs converged, best models."""
    present = {m for r in result["records"] for m in r["metrics"]}
    metrics = [
        m for m in dict.fromkeys(m if m != "ll_gap" or m in present else "nll" for m in HEADLINE) if m in present
    ]
    seeds = len({r["seed"] for r in result["records"]})
    converged, runs = _converged(result)
    ranked_by = {b["metric"] for b in (result.get("best") or {}).values()}
    best = f" Best by {', '.join(sorted(ranked_by))} (≈ within noise): {_best_line(result)}." if ranked_by else ""
    return (
        f"Mean ± std over {seeds} seeds, best mean in bold; runs converged: {converged} of {runs}.{best}\n\n"
        + markdown_table(result["summary"], metrics)
    )


def _render_block(match: re.Match[str], results: Mapping[str, dict[str, Any]], link_prefix: str) -> str | None:
    """The body a block should have, or None when its JSON is not in ``results``."""
    if match["tag"] == "studies":
        return "\n" + studies_table(results, link_prefix) + "\n" if results else None
    if match["name"] not in results:
        return None
    result = results[match["name"]]
    return "\n" + (render_headline(result) if match["kind"] == "results" else _headline_block(result)) + "\n"


def readme_blocks(text: str) -> dict[str, str]:
    """The ``results:<name>`` blocks of a README, by study name (their bodies between the markers)."""
    return {m["name"]: m["body"] for m in MARKER.finditer(text) if m["kind"] == "results"}


def update_readme(text: str, results: Mapping[str, dict[str, Any]], link_prefix: str = "docs/results/") -> str:
    """``text`` with every block whose JSON is in ``results`` re-rendered (others left as they are);
    the ``studies`` block lists every study of ``results``."""

    def replace(match: re.Match[str]) -> str:
        body = _render_block(match, results, link_prefix)
        return match[0] if body is None else f"<!-- {match['tag']} -->\n{body}<!-- /{match['tag']} -->"

    return MARKER.sub(replace, text)


def _published(docs_dir: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(docs_dir.glob("*.json"))}


def _link_prefix(docs_dir: Path, readme: Path) -> str:
    return Path(os.path.relpath(docs_dir.resolve(), readme.resolve().parent)).as_posix() + "/"


def _write_page(docs_dir: Path, name: str, results: Mapping[str, dict[str, Any]]) -> Path:
    """docs_dir/<name>.md re-rendered, keeping its hand-written part."""
    path = docs_dir / f"{name}.md"
    old = path.read_text() if path.is_file() else ""
    hand = old[old.index(HAND_WRITTEN) :] if HAND_WRITTEN in old else ""
    path.write_text(render_page(name, results) + ("\n" + hand if hand else ""))
    return path


def refresh(docs_dir: str | Path = "docs/results", readme: str | Path | None = "README.md") -> list[Path]:
    """Re-render every page of ``docs_dir`` and every README block from the published JSON files
    (keeping the pages' hand-written parts); returns the files that changed."""
    docs_dir = Path(docs_dir)
    results = _published(docs_dir)
    written = []
    for name in results:
        page = docs_dir / f"{name}.md"
        before = page.read_text() if page.is_file() else None
        if _write_page(docs_dir, name, results).read_text() != before:
            written.append(page)
    if readme is not None and Path(readme).is_file():
        text = Path(readme).read_text()
        updated = update_readme(text, results, _link_prefix(docs_dir, Path(readme)))
        if updated != text:
            Path(readme).write_text(updated)
            written.append(Path(readme))
    return written


def publish(
    results_dir: str | Path,
    name: str | None = None,
    docs_dir: str | Path = "docs/results",
    readme: str | Path | None = "README.md",
    *,
    budget_of: str | None = None,
) -> list[Path]:
    """Copy ``results_dir``/results.json to ``docs_dir``/<name>.json and its figures to
    ``docs_dir``/img/<name>-<figure>, and re-render every page and README block from the
    published JSON (:func:`refresh`). With ``budget_of=BASE`` the results are the budget check of
    the published study BASE (written by ``edvae reproduce --budget``): ``name`` defaults to
    ``BASE-<f>x`` (and must be it), and BASE's page gains the budget-check table. Returns the
    files written."""
    results_dir, docs_dir = Path(results_dir), Path(docs_dir)
    source = results_dir / "results.json"
    if not source.is_file():
        raise EdvaeError(f"{source} not found: publish takes the --out folder of `edvae reproduce`")
    result = json.loads(source.read_text())
    if budget_of is not None:
        base_path = docs_dir / f"{budget_of}.json"
        if not base_path.is_file():
            raise EdvaeError(f"--budget-of {budget_of}: {base_path} not found; publish the study itself first")
        budget_check(json.loads(base_path.read_text()), result)  # refuses results that are not its budget check
        expected = check_name(budget_of, result["budget"]["factor"])
        if name not in (None, expected):
            raise EdvaeError(f"a budget check of {budget_of} is published as {expected}; drop --name or pass that")
        name = expected
    elif result.get("budget"):
        raise EdvaeError("these results are a budget check (reproduce --budget): publish them with --budget-of STUDY")
    if name is None:
        raise EdvaeError("give --name NAME (docs/results/NAME.json) or --budget-of STUDY")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise EdvaeError(f"--name must be letters, digits, '.', '_' or '-', got '{name}'")
    (docs_dir / "img").mkdir(parents=True, exist_ok=True)
    written = [docs_dir / f"{name}.json"]
    shutil.copyfile(source, written[0])
    for figure in result.get("figures", []):
        if (results_dir / "figures" / figure).is_file():
            written.append(docs_dir / "img" / f"{name}-{figure}")
            shutil.copyfile(results_dir / "figures" / figure, written[-1])
    changed = refresh(docs_dir, readme)
    written += [docs_dir / f"{name}.md", *(p for p in changed if p != docs_dir / f"{name}.md")]
    return written


def stale_docs(docs_dir: str | Path = "docs/results", readme: str | Path | None = "README.md") -> list[str]:
    """One line per generated document that disagrees with its JSON: every docs_dir/<name>.md
    beside a <name>.json (its part above :data:`HAND_WRITTEN`), and every README block (whose
    JSON must exist)."""
    docs_dir = Path(docs_dir)
    results = _published(docs_dir)
    problems = []
    for name in results:
        page = docs_dir / f"{name}.md"
        text = page.read_text() if page.is_file() else ""
        generated = text.split("\n" + HAND_WRITTEN, 1)[0] if HAND_WRITTEN in text else text
        if not page.is_file() or generated != render_page(name, results):
            problems.append(f"{page} is not what {docs_dir / name}.json renders to (run `edvae publish`)")
    if readme is not None and Path(readme).is_file():
        for match in MARKER.finditer(Path(readme).read_text()):
            body = _render_block(match, results, _link_prefix(docs_dir, Path(readme)))
            json_name = "*" if match["tag"] == "studies" else match["name"]
            if body is None:
                problems.append(f"{readme}: block {match['tag']} has no {docs_dir / json_name}.json")
            elif match["body"] != body:
                problems.append(f"{readme}: block {match['tag']} is not what {docs_dir / json_name}.json renders to")
    return problems
