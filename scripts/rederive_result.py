"""Recompute the derived parts of a published results file from its records, after a change of
the report code (e.g. a new table), without retraining: every field :func:`edvae.report.build_result`
computes from the records (summary, convergence, comparisons, best, headline) plus the study's
description, notes and contenders; the records, figures, wall time and environment of the run
that made them are kept. Then the page and README block are re-rendered as `edvae publish` does.

    python scripts/rederive_result.py paper            # docs/results/paper.json, .md, README block
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edvae.experiments import get_study
from edvae.publish import refresh
from edvae.report import build_result


def main(name: str, docs_dir: Path = Path("docs/results"), readme: Path = Path("README.md")) -> None:
    path = docs_dir / f"{name}.json"
    old = json.loads(path.read_text())
    study = get_study(old["study"])  # published studies are default (not --quick) runs
    new = build_result(
        study, old["records"], figures=old["figures"], wall_seconds=old["wall_seconds"], plan=old.get("plan")
    )
    new["environment"] = old["environment"]
    if old.get("budget"):  # a budget check (reproduce --budget) keeps its factor
        new["budget"] = old["budget"]
    path.write_text(json.dumps(new, indent=2) + "\n")
    refresh(docs_dir, readme)  # every page and README block, from the published JSON


if __name__ == "__main__":
    main(sys.argv[1])
