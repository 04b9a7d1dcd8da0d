"""``python -m edvae.experiments.readings_table RESULTS.json [README.md]``: the readings study's
headline table (:func:`edvae.experiments.readings.claims_table`) from its results file, printed
or written between the README's markers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edvae.errors import EdvaeError
from edvae.experiments.readings import REFERENCE, claims_table

__all__ = ["TABLE_MARKERS", "insert_table", "main"]

#: The markers in a Markdown file between which :func:`insert_table` puts the table.
TABLE_MARKERS = ("<!-- readings-table -->", "<!-- /readings-table -->")


def insert_table(markdown: str, table: str) -> str:
    """``markdown`` with the text between :data:`TABLE_MARKERS` replaced by ``table``."""
    start, end = TABLE_MARKERS
    if markdown.count(start) != 1 or markdown.count(end) != 1 or markdown.index(start) > markdown.index(end):
        raise EdvaeError(f"the file needs one {start} line followed by one {end} line where the table goes")
    head, rest = markdown.split(start)
    return f"{head}{start}\n{table}{end}{rest.split(end, 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    """``python -m edvae.experiments.readings_table RESULTS.json [README.md]``: print the headline
    table of a readings results file, or write it between the markers of README.md."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2) or not all(Path(a).is_file() for a in args):
        print("usage: python -m edvae.experiments.readings_table OUT/results.json [README.md]", file=sys.stderr)
        return 2
    table = claims_table(json.loads(Path(args[0]).read_text()).get("comparisons", []), REFERENCE)
    if len(args) == 1:
        print(table, end="")
        return 0
    try:
        Path(args[1]).write_text(insert_table(Path(args[1]).read_text(), table))
    except EdvaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
