"""Documentation generated from results: a study's results.json becomes docs/results/<name>.json,
docs/results/<name>.md and the README block between ``<!-- results:<name> -->`` and
``<!-- /results:<name> -->``, all rendered from that JSON by :mod:`edvae.report` (the renderer of
results.md), so that no number in the docs is copied by hand.

:func:`stale_docs` lists every committed page or README block that its committed JSON no longer
renders to (the test suite requires it to be empty).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edvae.errors import EdvaeError
from edvae.report import render_headline, render_markdown

__all__ = ["MARKER", "docs_markdown", "publish", "readme_blocks", "stale_docs", "update_readme"]

#: A README block generated from docs/results/<name>.json: its opening marker, body and closing marker.
MARKER = re.compile(r"<!-- results:(?P<name>[A-Za-z0-9_.-]+) -->\n(?P<body>.*?)<!-- /results:(?P=name) -->", re.S)


def docs_markdown(result: dict[str, Any], name: str) -> str:
    """docs/results/<name>.md: results.md with the figures at img/<name>-<figure>."""
    return render_markdown(result, figure_prefix=f"img/{name}-")


def _block(result: dict[str, Any]) -> str:
    return "\n" + render_headline(result) + "\n"


def readme_blocks(text: str) -> dict[str, str]:
    """The generated blocks of a README, by study name (their bodies between the markers)."""
    return {m["name"]: m["body"] for m in MARKER.finditer(text)}


def update_readme(text: str, results: Mapping[str, dict[str, Any]]) -> str:
    """``text`` with every block whose name is in ``results`` re-rendered (others left as they are)."""

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in results:
            return match[0]
        return f"<!-- results:{name} -->\n{_block(results[name])}<!-- /results:{name} -->"

    return MARKER.sub(replace, text)


def publish(
    results_dir: str | Path, name: str, docs_dir: str | Path = "docs/results", readme: str | Path | None = "README.md"
) -> list[Path]:
    """Copy ``results_dir``/results.json to ``docs_dir``/<name>.json and its figures to
    ``docs_dir``/img/<name>-<figure>, render ``docs_dir``/<name>.md from the JSON, and re-render
    the README's ``results:<name>`` block. Returns the files written.

    Everything is checked before anything is written: the name (a letter or digit, then letters,
    digits, '.', '_' or '-'), that results.json is a results file edvae renders, and that the
    README (unless ``readme`` is None or "") exists and holds the block
    ``<!-- results:<name> -->`` ... ``<!-- /results:<name> -->``; any problem is one line."""
    results_dir, docs_dir = Path(results_dir), Path(docs_dir)
    source = results_dir / "results.json"
    if not source.is_file():
        raise EdvaeError(f"{source} not found: publish takes the --out folder of `edvae reproduce`")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise EdvaeError(
            f"--name must start with a letter or digit, then letters, digits, '.', '_' or '-', got {name!r}"
        )
    try:
        result = json.loads(source.read_text())
        docs_markdown(result, name), _block(result)  # renders, or the file is not a results file
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        what = f"lacks {err}" if isinstance(err, KeyError) else f"cannot be read ({' '.join(str(err).split())[:120]})"
        raise EdvaeError(
            f"{source} is not a results file of `edvae reproduce`: it {what}; run the study again to rewrite it"
        ) from None
    if readme is not None and str(readme) != "":
        if not Path(readme).is_file():
            raise EdvaeError(f"README {readme} not found; pass --readme PATH, or --readme '' to publish the pages only")
        if name not in readme_blocks(Path(readme).read_text()):
            raise EdvaeError(
                f"{readme} has no block for {name}: add the lines '<!-- results:{name} -->' and "
                f"'<!-- /results:{name} -->' where it goes, or pass --readme '' to publish the pages only"
            )
    else:
        readme = None
    (docs_dir / "img").mkdir(parents=True, exist_ok=True)
    written = [docs_dir / f"{name}.json"]
    shutil.copyfile(source, written[0])
    for figure in result.get("figures", []):
        if (results_dir / "figures" / figure).is_file():
            written.append(docs_dir / "img" / f"{name}-{figure}")
            shutil.copyfile(results_dir / "figures" / figure, written[-1])
    written.append(docs_dir / f"{name}.md")
    written[-1].write_text(docs_markdown(result, name))
    if readme is not None and Path(readme).is_file():
        text = Path(readme).read_text()
        updated = update_readme(text, {name: result})
        if updated != text:
            Path(readme).write_text(updated)
            written.append(Path(readme))
    return written


def stale_docs(docs_dir: str | Path = "docs/results", readme: str | Path | None = "README.md") -> list[str]:
    """One line per generated document that disagrees with its JSON: every docs_dir/<name>.md
    beside a <name>.json, and every README block (whose JSON must exist)."""
    docs_dir = Path(docs_dir)
    results = {path.stem: json.loads(path.read_text()) for path in sorted(docs_dir.glob("*.json"))}
    problems = []
    for name, result in results.items():
        page = docs_dir / f"{name}.md"
        if not page.is_file() or page.read_text() != docs_markdown(result, name):
            problems.append(f"{page} is not what {docs_dir / name}.json renders to (run `edvae publish`)")
    if readme is not None and Path(readme).is_file():
        for name, body in readme_blocks(Path(readme).read_text()).items():
            if name not in results:
                problems.append(f"{readme}: block results:{name} has no {docs_dir / name}.json")
            elif body != _block(results[name]):
                problems.append(f"{readme}: block results:{name} is not what {docs_dir / name}.json renders to")
    return problems
