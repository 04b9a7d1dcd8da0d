"""Paired comparisons across seeds (edvae.stats) against scipy's t-interval on hand data."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats as sps

from edvae.errors import EdvaeError
from edvae.stats import HIGHER_IS_BETTER, best_models, paired_comparisons, t_interval, verdict


def _records(values: dict[tuple[str, str], list[float]], metric: str = "iwae", seeds=None):
    out = []
    for (dataset, model), vals in values.items():
        for i, v in enumerate(vals):
            seed = seeds[i] if seeds else i
            out.append({"dataset": dataset, "model": model, "seed": seed, "metrics": {metric: v}})
    return out


def _key(c):
    return (c["dataset"], c["model"], c["metric"])


def test_interval_matches_scipy_on_hand_data():
    ref = [1.0, 2.0, 3.5, 0.5, 2.2]
    mod = [1.4, 2.6, 4.0, 1.2, 2.1]
    (c,) = paired_comparisons(_records({("d", "ref"): ref, ("d", "m"): mod}), "ref", ["iwae"])
    diffs = [m - r for m, r in zip(mod, ref, strict=True)]
    low, high = sps.t.interval(0.95, len(diffs) - 1, loc=sum(diffs) / 5, scale=sps.sem(diffs))
    assert c["mean_diff"] == pytest.approx(sum(diffs) / 5, abs=1e-12)
    assert (c["ci_low"], c["ci_high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert c["n_seeds"] == 5 and c["n_better"] == 4  # higher iwae is better; seed 4 is worse
    assert (c["dataset"], c["model"], c["reference"], c["metric"]) == ("d", "m", "ref", "iwae")
    assert c["ci_low"] > 0 and verdict(c) == "better"


def test_one_seed_has_no_interval():
    (c,) = paired_comparisons(_records({("d", "ref"): [1.0], ("d", "m"): [3.0]}, "mse"), "ref", ["mse"])
    assert c["mean_diff"] == 2.0 and c["n_seeds"] == 1 and c["n_better"] == 0
    assert math.isnan(c["ci_low"]) and math.isnan(c["ci_high"])
    assert verdict(c) == "within noise"


def test_identical_differences_give_a_zero_width_interval():
    (c,) = paired_comparisons(
        _records({("d", "ref"): [1.0, 5.0, -2.0], ("d", "m"): [1.5, 5.5, -1.5]}, "mse"), "ref", ["mse"]
    )
    assert c["ci_low"] == pytest.approx(0.5) and c["ci_high"] == pytest.approx(0.5)
    assert verdict(c) == "worse" and c["n_better"] == 0  # mse is lower-is-better
    (same,) = paired_comparisons(_records({("d", "ref"): [1.0, 5.0], ("d", "m"): [1.0, 5.0]}, "elbo"), "ref", ["elbo"])
    assert same["ci_low"] == same["ci_high"] == 0.0 and same["n_better"] == 0
    assert verdict(same) == "within noise"


@pytest.mark.parametrize("metric", sorted(HIGHER_IS_BETTER))
def test_sign_conventions(metric):
    """mean_diff is model - reference for every metric; better follows the metric's direction."""
    (c,) = paired_comparisons(
        _records({("d", "ref"): [0.0, 0.0, 0.0], ("d", "m"): [1.0, 1.1, 0.9]}, metric), "ref", [metric]
    )
    assert c["mean_diff"] == pytest.approx(1.0) and c["ci_low"] > 0
    up = HIGHER_IS_BETTER[metric]
    assert c["higher_is_better"] is up
    assert c["n_better"] == (3 if up else 0)
    assert verdict(c) == ("better" if up else "worse")


def test_directions():
    for m in ("elbo", "iwae", "true_ll", "probe_accuracy"):
        assert HIGHER_IS_BETTER[m]
    for m in ("mse", "kl", "ll_gap", "nll", "bpd", "prior_swd", "marginal_kl"):
        assert not HIGHER_IS_BETTER[m]


def test_pairing_by_seed_ignores_record_order_and_unpaired_seeds():
    ref = {0: 1.0, 1: 2.0, 2: 4.0, 3: 0.0}
    mod = {1: 2.5, 0: 1.2, 2: 3.0, 7: 100.0}  # seed 3 has no model run, seed 7 no reference
    records = [{"dataset": "d", "model": "ref", "seed": s, "metrics": {"elbo": v}} for s, v in ref.items()]
    records += [{"dataset": "d", "model": "m", "seed": s, "metrics": {"elbo": v}} for s, v in mod.items()]
    records += [{"dataset": "e", "model": "ref", "seed": s, "metrics": {"elbo": 10 * v}} for s, v in ref.items()]
    records += [{"dataset": "e", "model": "m", "seed": s, "metrics": {"elbo": 10 * v + s}} for s, v in ref.items()]
    expected = sorted(paired_comparisons(records, "ref", ["elbo"]), key=_key)
    (d, e) = expected
    assert d["n_seeds"] == 3 and d["mean_diff"] == pytest.approx((0.2 + 0.5 - 1.0) / 3)
    assert d["n_better"] == 2
    assert e["n_seeds"] == 4 and e["mean_diff"] == pytest.approx(1.5)  # pairs never cross data sets
    rng = random.Random(0)
    for _ in range(5):
        rng.shuffle(records)
        assert sorted(paired_comparisons(records, "ref", ["elbo"]), key=_key) == expected


def test_missing_metric_and_bad_input():
    records = _records({("d", "ref"): [1.0, 2.0], ("d", "m"): [1.0, 2.0]})
    records[3]["metrics"] = {}  # model's seed 1 did not report iwae
    (c,) = paired_comparisons(records, "ref", ["iwae"])
    assert c["n_seeds"] == 1
    assert paired_comparisons(records, "absent", ["iwae"]) == []
    with pytest.raises(EdvaeError, match="no direction"):
        paired_comparisons(records, "ref", ["active_units"])
    with pytest.raises(EdvaeError, match="two records"):
        paired_comparisons(records + records[:1], "ref", ["iwae"])
    (own,) = paired_comparisons(
        _records({("d", "ref"): [0.0, 0.0], ("d", "m"): [1.0, 2.0]}, "mi"), "ref", ["mi"], higher_is_better={"mi": True}
    )
    assert own["n_better"] == 2


def test_t_interval_closed_form():
    mean, low, high = t_interval([1.0, 3.0])  # sd = sqrt(2), t_{0.975,1} = 12.706...
    assert mean == 2.0
    assert high - mean == pytest.approx(sps.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2))
    with pytest.raises(EdvaeError):
        t_interval([])


def test_the_report_writes_comparisons_with_the_studys_reference(tmp_path):
    """results.json holds the paired comparisons on the headline metrics present (nll for
    ll_gap without a ground truth); results.md tabulates them with their verdicts."""
    import json
    import re

    from edvae.experiments.runner import Study
    from edvae.report import study_comparisons, write_report

    rng = random.Random(1)
    seed_effect = {(d, s): rng.gauss(0, 1) for d in ("a", "b") for s in range(4)}  # shared by a seed's runs
    records = []
    for dataset in ("a", "b"):
        for model, shift in (("ref", 0.0), ("good", 1.0), ("same", 0.0)):
            for seed in range(4):
                base = seed_effect[dataset, seed] + 0.05 * rng.random()
                metrics = {
                    "iwae": base + shift + 0.01 * seed,
                    "elbo": base - 1,
                    "nll": -base - shift,
                    "mi": 1.0,
                    "kl": 2.0 + 0.1 * seed,
                    "mse": 0.1,
                    "prior_swd": 0.5 + 0.01 * rng.random(),
                }
                records.append(
                    {
                        "dataset": dataset,
                        "model": model,
                        "seed": seed,
                        "metrics": metrics,
                        "run_dir": str(tmp_path / "none"),
                    }
                )
    study = Study("s", "S", "d", [], metrics=["iwae", "mi", "prior_swd"], reference="ref")
    result = write_report(study, records, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    expected = paired_comparisons(records, "ref", ["nll", "iwae", "elbo", "kl", "mse", "prior_swd"])
    assert saved["comparisons"] == result["comparisons"] == expected == study_comparisons(study, records)
    assert len(expected) == 2 * 2 * 6
    good = next(c for c in expected if c["dataset"] == "a" and c["model"] == "good" and c["metric"] == "iwae")
    assert verdict(good) == "better" and good["n_better"] == 4 and good["n_seeds"] == 4
    md = (tmp_path / "results.md").read_text()
    assert "## Paired comparisons with ref" in md
    row = re.search(r"\| good \| ref \| iwae \| (\S+) \[(\S+), (\S+)\] \| 4/4 \| better \|", md)
    assert [float(v) for v in row.groups()] == pytest.approx(
        [good["mean_diff"], good["ci_low"], good["ci_high"]], abs=1e-3
    )
    assert "| same | ref | kl | +0.0000 [+0.0000, +0.0000] | 0/4 | within noise |" in md
    study.reference = None
    assert write_report(study, records, tmp_path)["comparisons"] == []
    assert "Paired comparisons" not in (tmp_path / "results.md").read_text()


def test_best_model_is_a_conclusion_only_when_no_other_is_within_noise():
    """A model better than every other on every seed by a margin far above the seed-to-seed
    spread of the differences is the only one listed; a model whose differences with the best
    straddle 0, and a bit-identical copy of the best, are within noise of it."""
    base = [0.30, 0.52, 0.41, 0.38, 0.47]  # shared by a seed's runs
    values = {
        ("d", "clear"): [b - 0.20 for b in base],
        ("d", "other"): [b + 0.00 for b in base],
        ("d", "copy"): [b - 0.20 for b in base],
        ("d", "noisy"): [b - 0.20 + e for b, e in zip(base, [0.05, -0.06, 0.04, -0.05, 0.03], strict=True)],
        ("e", "other"): [b + 0.00 for b in base],
        ("e", "clear"): [b - 0.20 for b in base],
    }
    best = best_models(_records(values, "ll_gap"), "ll_gap")
    assert best["d"]["best"] == "clear"  # "copy" ties it exactly; the first listed wins
    assert best["d"]["tied"] == ["clear", "copy", "noisy"]
    assert list(best["d"]["means"]) == ["clear", "copy", "noisy", "other"]
    assert best["d"]["means"]["other"] == pytest.approx(sum(base) / 5)
    assert best["e"]["tied"] == ["clear"] and best["e"]["metric"] == "ll_gap"
    # leaving the winners out makes the next model the best; the direction follows the metric
    assert best_models(_records(values, "ll_gap"), "ll_gap", models=["other", "noisy"])["d"]["tied"] == ["noisy"]
    assert best_models(_records(values, "iwae"), "iwae")["d"]["tied"] == ["other"]


def test_best_model_with_one_seed_has_no_interval_so_every_model_ties():
    best = best_models(_records({("d", "a"): [1.0], ("d", "b"): [2.0]}, "kl"), "kl")["d"]
    assert best["best"] == "a" and best["tied"] == ["a", "b"]
    with pytest.raises(EdvaeError, match="no direction"):
        best_models(_records({("d", "a"): [1.0]}, "mi"), "mi")


def test_the_report_ranks_only_the_studys_contenders(tmp_path):
    from edvae.experiments.runner import Study
    from edvae.report import render_headline, render_markdown, write_report

    values = {("d", "ref"): [1.0, 1.1, 1.2], ("d", "good"): [0.5, 0.61, 0.69], ("d", "diag"): [0.1, 0.2, 0.3]}
    records = [dict(r, run_dir=str(tmp_path)) for r in _records(values, "ll_gap")]
    study = Study("s", "S", "d", [], metrics=["ll_gap"], reference="ref", contenders=["ref", "good"])
    result = write_report(study, records, tmp_path)
    assert result["best"]["d"]["best"] == "good" and result["best"]["d"]["tied"] == ["good"]
    assert "diag" not in result["best"]["d"]["means"]
    for text in (render_markdown(result), render_headline(result)):
        assert "| d | ll_gap | good (0.6) | none |" in text and "Not ranked (diagnostic): diag." in text
