"""Budget checks: the table comparing a study at T with the same study at f T, on a constructed
pair of results with known verdicts, and its publication in the docs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edvae.budget import budget_check, budget_status, budget_table, parse_budget, scaled_epochs
from edvae.errors import EdvaeError
from edvae.experiments.study import Study
from edvae.publish import HAND_WRITTEN, publish, stale_docs
from edvae.report import build_result

REF = [1.0, 1.1, 0.9, 1.05, 0.95]  # the reference's ll_gap per seed (lower is better)

#: Per model, its ll_gap minus the reference's, seed by seed, at T (5 seeds) and at 2T (seeds 0-2).
AT_T = {
    "a": [-0.50, -0.52, -0.48, -0.51, -0.49],  # better, clearly
    "b": [0.30, 0.32, 0.28, 0.31, 0.29],  # worse, clearly
    "c": [-0.10, 0.00, -0.20, -0.10, -0.10],  # better over 5 seeds, within noise over seeds 0-2
}
AT_2T = {
    "a": [0.01, -0.02, 0.015],  # within noise now: a changed verdict, and a changed best set
    "b": [0.40, 0.42, 0.38],  # still worse: a verdict that holds
    "c": [-0.10, 0.00, -0.20],  # within noise on seeds 0-2 at both budgets: held like for like
}


def _result(diffs: dict[str, list[float]], budget: dict | None = None) -> dict:
    seeds = range(len(next(iter(diffs.values()))))
    records = [
        {"dataset": "d", "model": "r", "seed": s, "converged": True, "metrics": {"ll_gap": REF[s]}} for s in seeds
    ]
    records += [
        {"dataset": "d", "model": m, "seed": s, "converged": s > 0, "metrics": {"ll_gap": REF[s] + diff[s]}}
        for m, diff in diffs.items()
        for s in seeds
    ]
    study = Study(name="paper", title="A study", description="d", runs=[], metrics=["ll_gap"], reference="r")
    return build_result(dataclasses.replace(study, budget=budget), records)


BUDGET = {"factor": 2.0, "epochs": [[160, 320]]}


def test_the_budget_check_of_a_constructed_pair_has_the_known_verdicts():
    check = budget_check(_result(AT_T), _result(AT_2T, BUDGET))
    rows = {r["model"]: r for r in check["rows"]}
    assert (rows["a"]["verdict_t"], rows["a"]["verdict_check"], rows["a"]["changed"]) == (
        "better",
        "within noise",
        True,
    )
    assert (rows["b"]["verdict_t"], rows["b"]["verdict_check"], rows["b"]["changed"]) == ("worse", "worse", False)
    # c: the published 5-seed verdict is 'better', but over seeds 0-2 it is within noise at T and at 2T.
    assert (rows["c"]["verdict_published"], rows["c"]["verdict_t"], rows["c"]["changed"]) == (
        "better",
        "within noise",
        False,
    )
    assert rows["r"]["verdict_t"] == "reference" and rows["r"]["change"] == pytest.approx(0.0)
    # the means are over seeds 0-2 at both budgets: b's moved by the mean of (0.40, 0.42, 0.38) - (0.30, 0.32, 0.28)
    assert rows["b"]["change"] == pytest.approx(0.1)
    assert rows["b"]["mean_t"] == pytest.approx(sum(REF[s] + AT_T["b"][s] for s in range(3)) / 3)
    (best,) = check["best"]
    assert best["t"] == {"best": "a", "tied": ["a"]} and best["published"]["tied"] == ["a"]
    assert best["check"] == {"best": "c", "tied": ["c", "r", "a"]}  # c's mean is lowest, none is told apart
    assert best["changed"] and check["best_changed"] == ["d"]
    assert check["changed"] == 1 and not check["held"] and check["seeds"] == [0, 1, 2]
    assert check["converged"] == {"t": {"converged": 9, "runs": 12}, "check": {"converged": 9, "runs": 12}}
    assert budget_status(check) == (
        "changed at 2x (3 seeds): 1 of 3 verdicts and the best-model set on d; cite the 2x verdicts"
    )  # 3 verdicts: models a, b and c on ll_gap
    table = budget_table(check)
    assert "| a | ll_gap | better | better | within noise | 0.5000 → 1.002 (+0.502) | **yes** |" in table
    assert "| d | ll_gap | a | a | c (≈ r, a) | **yes** |" in table and "epochs: 160 → 320" in table


def test_a_check_where_nothing_changes_held():
    same = {m: d[:3] for m, d in AT_T.items()}
    check = budget_check(_result(AT_T), _result(same, BUDGET))
    assert check["held"] and check["changed"] == 0 and not check["best_changed"]
    assert budget_status(check) == "held at 2x (3 seeds): no verdict and no best-model set changed"


def test_a_result_that_is_not_a_budget_check_is_refused():
    with pytest.raises(EdvaeError, match="not a budget check"):
        budget_check(_result(AT_T), _result(AT_2T))
    other = _result(AT_2T, BUDGET) | {"study": "other"}
    with pytest.raises(EdvaeError, match="same study and reference"):
        budget_check(_result(AT_T), other)
    with pytest.raises(EdvaeError, match="use a subset of its seeds"):
        budget_check(_result({m: d[:3] for m, d in AT_T.items()}), _result(AT_T, BUDGET))


@pytest.mark.parametrize("text, factor", [("2x", 2.0), ("2", 2.0), ("1.5X", 1.5), (3, 3.0)])
def test_budget_factors(text, factor):
    assert parse_budget(text) == factor


@pytest.mark.parametrize("text", ["0", "x", "-2x", "2xx", ""])
def test_bad_budget_factors_are_one_line(text):
    with pytest.raises(EdvaeError, match="--budget must be a positive factor"):
        parse_budget(text)


def test_scaled_epochs():
    assert scaled_epochs(160, 2.0) == 320 and scaled_epochs(15, 2.0) == 30 and scaled_epochs(1, 0.1) == 1


def test_publishing_a_budget_check_regenerates_the_page_and_readme_and_stays_checked(tmp_path):
    docs, readme = tmp_path / "docs", tmp_path / "README.md"
    for folder, result in (("t", _result(AT_T)), ("t2", _result(AT_2T, BUDGET))):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "results.json").write_text(json.dumps(result))
    readme.write_text(
        "# x\n<!-- studies -->\n<!-- /studies -->\n<!-- headline:paper -->\n<!-- /headline:paper -->\nend\n"
    )
    with pytest.raises(EdvaeError, match="--budget-of"):
        publish(tmp_path / "t2", "paper-2x", docs, readme)  # a budget check needs --budget-of
    publish(tmp_path / "t", "paper", docs, readme)
    assert "| [paper](docs/paper.md) | A study | d: a | 17 of 20 | pending |" in readme.read_text()
    assert "Budget check: pending" in (docs / "paper.md").read_text()
    page = (docs / "paper.md").read_text()
    (docs / "paper.md").write_text(page + "\n" + HAND_WRITTEN + "\n\nThe reading, by hand.\n")
    assert stale_docs(docs, readme) == []

    written = publish(tmp_path / "t2", None, docs, readme, budget_of="paper")
    assert docs / "paper-2x.json" in written and docs / "paper.md" in written and readme in written
    text = (docs / "paper.md").read_text()
    assert budget_table(budget_check(_result(AT_T), _result(AT_2T, BUDGET))) in text
    assert text.endswith(HAND_WRITTEN + "\n\nThe reading, by hand.\n")  # kept
    assert "budget check of [paper](paper.md) at 2x" in (docs / "paper-2x.md").read_text()
    line = "| [paper](docs/paper.md) | A study | at 2x: d: c (≈ r, a) | 17 of 20 | changed at 2x (3 seeds): 1 of 3"
    assert line in readme.read_text()
    assert stale_docs(docs, readme) == []

    # A hand edit of the budget-check table, or of the README's summary line, is caught.
    (docs / "paper.md").write_text(text.replace("| **yes** |", "| no |", 1))
    assert stale_docs(docs, readme) == [
        f"{docs / 'paper.md'} is not what {docs / 'paper'}.json renders to (run `edvae publish`)"
    ]
    (docs / "paper.md").write_text(text)
    readme.write_text(readme.read_text().replace("changed at 2x", "held at 2x", 1))
    assert stale_docs(docs, readme) == [f"{readme}: block studies is not what {docs / '*'}.json renders to"]
