"""Docs generated from results: every committed page and README block is what its committed
results JSON renders to, and `edvae publish` makes them so from a study's output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_raw
from edvae.experiments.runner import run_study
from edvae.experiments.study import Study, build_runs
from edvae.publish import HAND_WRITTEN, MARKER, publish, readme_blocks, render_page, stale_docs
from edvae.report import render_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_committed_docs_agree_with_their_results():
    assert stale_docs(ROOT / "docs" / "results", ROOT / "README.md") == []


def test_the_readme_is_a_front_page_whose_summary_and_headline_are_generated():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert (
        text.index("bash scripts/reproduce.sh") < text.index("bash scripts/test.sh") < text.index("## What ED-VAE is")
    )
    tags = [m["tag"] for m in MARKER.finditer(text)]
    assert tags == ["studies", "headline:paper"]
    summary = next(m["body"] for m in MARKER.finditer(text) if m["tag"] == "studies")
    studies = [p.stem for p in sorted((ROOT / "docs" / "results").glob("*.json"))]
    for name in studies:
        result = json.loads((ROOT / "docs" / "results" / f"{name}.json").read_text())
        if not result.get("budget"):  # a budget check is reported on its study's line
            assert f"| [{name}](docs/results/{name}.md) | {result['title']} |" in summary
            page = (ROOT / "docs" / "results" / f"{name}.md").read_text()
            assert "## Budget check" in page and "Converged: " in page


def test_the_quoted_benchmark_numbers_are_those_of_the_committed_bench_run():
    """README's performance bullet quotes only ratios that the generated README-snippet.md holds,
    and docs/benchmarks.md copies the snippet's lines verbatim (the bench's output, not retyped)."""
    import re

    results = ROOT / "benchmarks" / "results"
    snippet = (results / "README-snippet.md").read_text()
    assert json.loads((results / "bench.json").read_text())["step_ratio"]["ratio"] > 0
    readme = (ROOT / "README.md").read_text()
    bullet = readme[readme.index("## Performance and GPUs") :].split("\n* ")[1]
    quoted = re.findall(r"\d+\.\d+x", bullet)
    assert quoted and all(ratio in snippet for ratio in quoted), quoted
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    for line in snippet.splitlines():
        if line.startswith("* "):
            assert line in page, line


def test_the_hand_written_part_of_a_page_is_not_checked_but_the_generated_part_is(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    source = ROOT / "docs" / "results" / "ablation.json"
    (docs / "ablation.json").write_text(source.read_text())
    results = {"ablation": json.loads(source.read_text())}
    generated = render_page("ablation", results)
    (docs / "ablation.md").write_text(generated + "\n" + HAND_WRITTEN + "\nanything at all\n")
    assert stale_docs(docs, None) == []
    (docs / "ablation.md").write_text(generated.replace("No budget check was run", "A budget check was run"))
    assert stale_docs(docs, None) == [
        f"{docs / 'ablation.md'} is not what {docs / 'ablation'}.json renders to (run `edvae publish`)"
    ]


@pytest.fixture(scope="module")
def study_out(tmp_path_factory):
    """A tiny two-model, two-seed study run end to end (the shape of a --quick study's output)."""
    out = tmp_path_factory.mktemp("study")
    base = tiny_raw(train={"epochs": 2}, eval={"true_ll": False, "iwae_samples": 16})
    study = Study(
        name="tiny",
        title="Tiny study",
        description="Two models, two seeds.",
        runs=build_runs(base, {"complex": {}}, ["vae-true", "vae-std"], seeds=2),
        reference="vae-true",
    )
    run_study(study, out, workers=1, progress=False)
    return out


def test_results_md_is_rendered_from_results_json(study_out):
    result = json.loads((study_out / "results.json").read_text())
    assert (study_out / "results.md").read_text() == render_markdown(result)
    assert all({"converged", "improvement", "window"} <= r.keys() for r in result["records"])
    assert sum(c["runs"] for models in result["convergence"].values() for c in models.values()) == 4
    assert "train_seconds" not in (study_out / "results.md").read_text()
    assert all("train_seconds" in r["metrics"] for r in result["records"])  # kept in the JSON


def test_publish_writes_pages_and_readme_blocks_that_stay_checked(study_out, tmp_path):
    docs, readme = tmp_path / "docs", tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:tiny -->\nhand-written, stale\n<!-- /results:tiny -->\nend\n")
    assert stale_docs(docs, readme) == [f"{readme}: block results:tiny has no {docs / 'tiny'}.json"]

    written = publish(study_out, "tiny", docs, readme)
    result = json.loads((docs / "tiny.json").read_text())
    assert result == json.loads((study_out / "results.json").read_text())
    assert (docs / "tiny.md").read_text() == render_page("tiny", {"tiny": result})
    for figure in result["figures"]:
        assert (docs / "img" / f"tiny-{figure}").stat().st_size > 1000
        assert f"(img/tiny-{figure})" in (docs / "tiny.md").read_text()
    assert readme in written and stale_docs(docs, readme) == []
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "hand-written" not in text
    elbo = result["summary"]["complex"]["vae-std"]["elbo"]
    assert f"{elbo['mean']:.2f}" in readme_blocks(text)["tiny"]
    assert "| vae-std | vae-true | elbo |" in readme_blocks(text)["tiny"]  # the paired comparison

    # Any hand edit of a generated number is caught, in the page and in the README block.
    page = (docs / "tiny.md").read_text()
    (docs / "tiny.md").write_text(page.replace(f"{elbo['mean']:.2f}", f"{elbo['mean'] + 1:.2f}", 1))
    assert stale_docs(docs, readme) == [
        f"{docs / 'tiny.md'} is not what {docs / 'tiny'}.json renders to (run `edvae publish`)"
    ]
    (docs / "tiny.md").write_text(page)
    readme.write_text(text.replace(f"{elbo['mean']:.2f}", f"{elbo['mean'] + 1:.2f}", 1))
    assert stale_docs(docs, readme) == [f"{readme}: block results:tiny is not what {docs / 'tiny'}.json renders to"]


def test_publish_cli_refuses_a_folder_without_results(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "edvae.cli", "publish", str(tmp_path), "--name", "x"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "results.json not found" in done.stderr and "Traceback" not in done.stderr
