"""The paper's objective under every reading (issue 17): InfoNCE critics as options of the ED
objective through the config and the trainer, the readings as variants, the readings study and
its headline table of the seed's three claims."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_raw
from edvae.checkpoint import load_checkpoint
from edvae.config import validate_config
from edvae.errors import EdvaeError
from edvae.experiments import get_study
from edvae.experiments.readings import CLAIMS, REFERENCE, claim_verdict, claims_table
from edvae.experiments.runner import preflight
from edvae.experiments.study import BASE, Study, build_runs
from edvae.experiments.variants import READING_GRID, READINGS, VARIANTS, reading_name
from edvae.report import write_report
from edvae.stats import paired_comparisons
from edvae.training import train

STEPS_PER_EPOCH = 512 // 64  # tiny_raw: 512 training examples, batch 64


def _critic_raw(critic: str, **options):
    return tiny_raw(
        objective={
            "kind": "ed",
            "mi_estimator": "infonce",
            "mi_weight": -1.0,
            "critic": critic,
            "critic_options": options,
        }
    )


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "objective, match",
    [
        ({"kind": "ed", "critic": "momentum"}, r"set objective.kind='ed' and objective.mi_estimator='infonce'"),
        ({"kind": "elbo", "mi_estimator": "infonce", "critic": "mlp"}, r"acts only with objective.kind 'ed'"),
        (
            {"kind": "ed", "mi_estimator": "infonce", "critic": "moco"},
            r"unknown critic 'moco'; choose one of: encoder, bilinear",
        ),
        (
            {"kind": "ed", "mi_estimator": "infonce", "critic": "momentum", "critic_options": {"K": 8}},
            r"no option 'K'; its options are queue_size",
        ),
        (
            {"kind": "ed", "mi_estimator": "infonce", "critic": "bilinear", "critic_options": {"hidden": 8}},
            r"no option 'hidden'; its options are none",
        ),
        (
            {"kind": "ed", "mi_estimator": "infonce", "critic": "momentum", "critic_options": {"temperature": 0}},
            r"temperature=0: Input should be greater than 0",
        ),
        (
            {"kind": "ed", "mi_estimator": "infonce", "critic_options": {"queue_size": 8}},
            r"critic_options needs objective.critic",
        ),
    ],
)
def test_critic_settings_are_refused_in_one_line(objective, match):
    with pytest.raises(EdvaeError, match=match) as err:
        validate_config({"objective": objective})
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("critic", ["encoder", "bilinear", "mlp", "momentum"])
def test_each_critic_trains_through_the_config(tmp_path, critic):
    options = {"queue_size": 100} if critic == "momentum" else {}
    cfg = validate_config(_critic_raw(critic, **options))
    plain = validate_config(tiny_raw())
    result = train(cfg, tmp_path / "run")
    train(plain, tmp_path / "plain", stop_at_step=1)
    assert result.completed and result.skipped_steps == 0 and math.isfinite(result.last_validation["mi"])
    saved = load_checkpoint(tmp_path / "run")
    # the critic lives outside the model: the model's state layout is that of any other run
    assert saved["model"].keys() == load_checkpoint(tmp_path / "plain")["model"].keys()
    critic_state = saved.get("objective", {}).get("critic", {})
    optimised = saved["optimizer"]["param_groups"][0]["params"]
    model_only = load_checkpoint(tmp_path / "plain")["optimizer"]["param_groups"][0]["params"]
    if critic == "encoder":  # no parameters, no state
        assert critic_state == {} and "objective" not in saved and len(optimised) == len(model_only)
    if critic in ("bilinear", "mlp"):  # trained by the same Adam, beside the model's parameters
        assert critic_state and all(torch.isfinite(v).all() for v in critic_state.values())
        assert len(optimised) == len(model_only) + len(critic_state)  # every entry of their state is a parameter
    if critic == "momentum":  # every step enqueued its 64 keys into the queue of 100
        assert int(critic_state["size"]) == 100
        assert int(critic_state["pointer"]) == (3 * STEPS_PER_EPOCH * 64) % 100
        assert any(k.startswith("key_encoder.") for k in critic_state)
        # the key encoder moved towards the encoder but is not the encoder
        enc = {k[len("encoder.") :]: v for k, v in saved["model"].items() if k.startswith("encoder.")}
        keyed = {k[len("key_encoder.") :]: v for k, v in critic_state.items() if k.startswith("key_encoder.")}
        assert enc.keys() == keyed.keys() and any(not torch.equal(enc[k], keyed[k]) for k in enc)
        assert len(optimised) == len(model_only)  # the key encoder and the queue are not trained


def test_learned_critic_parameters_are_optimised(tmp_path):
    cfg = validate_config(_critic_raw("bilinear"))
    train(cfg, tmp_path / "one", stop_at_step=1)
    train(cfg, tmp_path / "many", stop_at_step=2 * STEPS_PER_EPOCH)
    first = load_checkpoint(tmp_path / "one")["objective"]["critic"]["score.weight"]
    later = load_checkpoint(tmp_path / "many")["objective"]["critic"]["score.weight"]
    assert not torch.equal(first, later)


def test_momentum_critic_resumes_bit_exactly(tmp_path):
    cfg = validate_config(_critic_raw("momentum", queue_size=100))
    whole = train(cfg, tmp_path / "whole")
    train(cfg, tmp_path / "split", stop_at_step=STEPS_PER_EPOCH + 3)
    resumed = train(cfg, tmp_path / "split", resume=True)
    assert whole.completed and resumed.completed and whole.step == resumed.step
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    for part in ("model",):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    ca, cb = a["objective"]["critic"], b["objective"]["critic"]
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)


def test_skipped_steps_enqueue_nothing(tmp_path, poison_objective):
    poison_objective("loss", lambda n: n in (2, 3))
    cfg = validate_config(merge_train(_critic_raw("momentum", queue_size=1000), on_nonfinite="skip", epochs=1))
    result = train(cfg, tmp_path / "run")
    assert result.skipped_steps == 2
    state = load_checkpoint(tmp_path / "run")["objective"]["critic"]
    assert int(state["size"]) == (STEPS_PER_EPOCH - 2) * 64


def test_momentum_critic_enqueues_every_micro_batch(tmp_path):
    cfg = validate_config(merge_train(_critic_raw("momentum", queue_size=1000), grad_accum_steps=2, epochs=1))
    train(cfg, tmp_path / "run")
    assert int(load_checkpoint(tmp_path / "run")["objective"]["critic"]["size"]) == STEPS_PER_EPOCH * 64


def merge_train(raw, **train_options):
    raw["train"].update(train_options)
    return raw


# ----------------------------------------------------------------------------- variants and study


def test_readings_are_variants_with_systematic_names():
    assert len(READINGS) == len(READING_GRID) == len(set(READINGS))
    runs = build_runs(BASE, {"complex": {"data": {"name": "complex"}}}, list(READINGS), 1)
    for spec, (mi_weight, critic, weight) in zip(runs, READING_GRID, strict=True):
        objective = spec.config.objective
        assert spec.model in VARIANTS and spec.model == reading_name(mi_weight, critic, weight)
        assert (objective.mi_weight, objective.entropy_weight, objective.cross_entropy_weight) == (
            mi_weight,
            weight,
            weight,
        )
        assert objective.mi_estimator == "infonce" and objective.critic is not None
    assert reading_name(-0.1, "enc", 1.0) == "ed-max0.1-enc-w1" and reading_name(1.0, "mom", 0.5) == "ed-pen1-mom-w0.5"
    assert {s for _, s in [(r, r.split("-")[1][:3]) for r in READINGS]} == {"max", "pen"}
    with pytest.raises(EdvaeError, match="unknown"):
        reading_name(-1.0, "vae", 1.0)


def test_readings_study_builds_and_passes_preflight():
    study = get_study("readings", quick=True, seeds=1)
    models = {s.model for s in study.runs}
    assert models == {REFERENCE, "vae-std", *READINGS} and {s.dataset for s in study.runs} == {"gaussian", "complex"}
    assert study.reference == REFERENCE and study.headline is not None
    assert len({s.config.train.epochs for s in study.runs}) == 1  # same budget for every model
    preflight(study)


# ----------------------------------------------------------------------------- the claims table


def _records(diffs: dict[str, list[float]], model: str = "ed-x") -> list[dict]:
    """A reference and a model over len(seeds) seeds, model = reference + the given differences."""
    n = len(next(iter(diffs.values())))
    records = []
    for seed in range(n):
        ref = {"mse": 0.05 + 0.01 * seed, "kl": 3.0 + seed, "elbo": -12.0 - seed, "iwae": -11.0 - seed}
        mod = {m: ref[m] + diffs.get(m, [0.0] * n)[seed] for m in ref}
        records += [
            {"dataset": "d", "model": REFERENCE, "seed": seed, "metrics": ref},
            {"dataset": "d", "model": model, "seed": seed, "metrics": mod},
        ]
    return records


def test_claim_verdicts_follow_the_claimed_side_of_the_interval():
    records = _records(
        {"mse": [-0.01, -0.012, -0.011], "kl": [1.0, 1.2, 1.1], "elbo": [0.5, -0.4, 0.1], "iwae": [-1, -2, -3]}
    )
    comparisons = paired_comparisons(records, REFERENCE, ["mse", "kl", "elbo", "iwae"])
    by_metric = {c["metric"]: c for c in comparisons}
    lower = {metric: low for metric, _, low in CLAIMS}
    assert claim_verdict(by_metric["mse"], lower["mse"]) == "reproduced"  # all lower: the claim
    assert claim_verdict(by_metric["kl"], lower["kl"]) == "not reproduced"  # all higher
    assert claim_verdict(by_metric["elbo"], lower["elbo"]) == "within noise"
    table = claims_table(comparisons)
    row = next(line for line in table.splitlines() if line.startswith("| d | ed-x |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2].endswith(" reproduced") and cells[2].startswith("-0.0110 [")  # 3 significant digits
    assert cells[3].endswith("not reproduced") and cells[4].endswith("within noise")
    assert cells[5].startswith("-2.00 [") and "reproduced" not in cells[5] and "noise" not in cells[5]


def test_claimed_increase_of_the_elbo_is_reproduced_only_above_zero():
    up = paired_comparisons(_records({"elbo": [0.3, 0.4, 0.35]}), REFERENCE, ["elbo"])[0]
    down = paired_comparisons(_records({"elbo": [-0.3, -0.4, -0.35]}), REFERENCE, ["elbo"])[0]
    one_seed = paired_comparisons(_records({"elbo": [0.3]}), REFERENCE, ["elbo"])[0]
    assert claim_verdict(up, lower=False) == "reproduced" and claim_verdict(down, lower=False) == "not reproduced"
    assert claim_verdict(one_seed, lower=False) == "within noise" and "no interval" in claims_table([one_seed])


def test_report_puts_the_headline_first(tmp_path):
    records = [dict(r, run_dir=str(tmp_path / "none")) for r in _records({"mse": [-0.01, -0.02, -0.015]})]
    study = Study(
        name="s",
        title="t",
        description="d",
        runs=[],
        metrics=["mse", "kl", "elbo", "iwae"],
        reference=REFERENCE,
        headline=lambda study, comparisons: claims_table(comparisons, study.reference),
    )
    result = write_report(study, records, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert md.index("## Headline") < md.index("## All models") < md.index("Mean ± standard deviation")
    assert claims_table(result["comparisons"]) in md


def test_the_readme_block_of_the_study_is_its_claims_table(tmp_path):
    """`edvae publish` puts the readings study's own headline (the claims table) in its README block."""
    from edvae.publish import readme_blocks, update_readme
    from edvae.report import render_headline

    records = [dict(r, run_dir=str(tmp_path / "none")) for r in _records({"kl": [1.0, 1.1, 1.2]})]
    study = Study(
        name="readings",
        title="t",
        description="d",
        runs=[],
        metrics=["mse", "kl", "elbo", "iwae"],
        reference=REFERENCE,
        headline=lambda study, comparisons: claims_table(comparisons, study.reference),
    )
    result = write_report(study, records, tmp_path)
    assert render_headline(result).startswith(claims_table(result["comparisons"], REFERENCE))
    readme = "# t\n<!-- results:readings -->\nold\n<!-- /results:readings -->\nafter\n"
    body = readme_blocks(update_readme(readme, {"readings": result}))["readings"]
    assert claims_table(result["comparisons"], REFERENCE) in body and "old" not in body
