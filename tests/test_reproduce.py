"""The main job end to end on a tiny configuration: schema and sanity of the report."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest

from edvae.errors import EdvaeError
from edvae.experiments import get_study
from edvae.experiments.paper import MODELS

TINY = [
    "data.options.n_train=512",
    "data.options.n_val=256",
    "data.options.n_test=256",
    "model.hidden=[32,32]",
    "train.epochs=3",
    "train.batch_size=64",
    "eval.iwae_samples=64",
]


def _reproduce(out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "edvae.cli",
        "reproduce",
        "--quick",
        "--seeds",
        "1",
        "--workers",
        "1",
        "--out",
        str(out),
    ]
    for item in TINY:
        cmd += ["--set", item]
    return subprocess.run(cmd + list(extra), capture_output=True, text=True, timeout=300)


def test_reproduce_writes_a_sane_report(tmp_path):
    done = _reproduce(tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "results.json").read_text())
    assert {(r["dataset"], r["model"]) for r in result["records"]} == {
        (d, m) for d in ("gaussian", "complex") for m in MODELS
    }
    required = {
        "mse",
        "kl",
        "elbo",
        "iwae",
        "true_ll",
        "ll_gap",
        "mi",
        "entropy",
        "cross_entropy",
        "marginal_kl",
        "active_units",
        "prior_swd",
        "train_seconds",
    }
    log_n = math.log(256)
    for record in result["records"]:
        m = record["metrics"]
        assert required <= m.keys()
        assert all(math.isfinite(v) for v in m.values())
        assert m["kl"] >= 0
        # The full-data-set estimate is unbiased, so a collapsed posterior (I = 0) can read a hair below 0.
        assert -0.02 <= m["mi"] <= log_n + 1e-6
        assert m["ll_gap"] >= -0.1  # no model beats the true likelihood
        assert m["true_ll"] - m["ll_gap"] == pytest.approx(m["iwae"])
        assert all(m[f"{name}_se"] > 0 for name in required - {"active_units", "prior_swd", "train_seconds"})
        assert abs(m["decomposition_gap"]) <= 5 * m["decomposition_gap_se"] + 1e-9  # sampling noise only
    comparisons = result["comparisons"]  # one seed: differences without intervals
    compared = ["ll_gap", "iwae", "elbo", "kl", "mse", "marginal_kl", "prior_swd"]
    assert {(c["dataset"], c["model"], c["metric"]) for c in comparisons} == {
        (d, m, metric) for d in ("gaussian", "complex") for m in MODELS if m != "vae-true" for metric in compared
    }
    assert all(c["reference"] == "vae-true" and c["n_seeds"] == 1 and math.isnan(c["ci_low"]) for c in comparisons)
    mean_gap = sum(r["metrics"]["iwae"] - r["metrics"]["elbo"] for r in result["records"]) / len(result["records"])
    assert mean_gap >= 0
    summary = result["summary"]
    assert set(summary) == {"gaussian", "complex"}
    assert set(summary["complex"]["edvae"]["elbo"]) >= {"mean", "std"}
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 2 * len(MODELS)
    assert all(
        isinstance(r["converged"], bool) and r["window"] == 1 for r in result["records"]
    )  # 3 epochs: a window of 1
    table = (tmp_path / "results.md").read_text()
    assert "| edvae-paper |" in table and "**" in table
    for figure in ("aggregate_posterior.png", "training_curves.png", "decomposition.png"):
        assert (tmp_path / "figures" / figure).stat().st_size > 1000

    # Run again: finished runs are reused, not retrained, and the records are unchanged.
    again = _reproduce(tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "results.json").read_text())["records"] == result["records"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--study", "nope"], "unknown study 'nope'; choose one of"),
        (["--set", "train.epochs=-1"], "train.epochs"),
        (["--set", "train.epoch=3"], "unknown config key 'train.epoch'"),
        (["--set", "model.prior=nonsense"], "nonsense"),
        (["--set", "data.name=nonsense"], "nonsense"),
        (["--budget", "0"], "--budget must be a positive factor such as 2x or 1.5, got '0'"),
    ],
)
def test_bad_study_input_is_one_clear_line(tmp_path, args, message):
    done = _reproduce(tmp_path, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_unknown_study_raises():
    with pytest.raises(EdvaeError, match="paper"):
        get_study("nope")


def test_a_study_reuses_matching_runs_and_never_replaces_a_finished_run_without_overwrite(
    tmp_path, tiny_config, monkeypatch
):
    from edvae.checkpoint import load_checkpoint
    from edvae.experiments import RunSpec, Study, run_study

    monkeypatch.setattr("edvae.report._figures", lambda *args, **kwargs: [])

    def study(epochs: int) -> Study:
        runs = [
            RunSpec(
                "complex",
                "edvae",
                seed,
                tiny_config(train={"epochs": epochs, "seed": seed}, eval={"iwae_samples": 20, "true_ll": False}),
            )
            for seed in (0, 1)
        ]
        return Study(name="tiny", title="tiny", description="two tiny runs", runs=runs)

    first = run_study(study(1), tmp_path, workers=1, progress=False)
    assert first["plan"] == {"reuse": 0, "evaluate": 0, "resume": 0, "train": 2, "refuse": 0}
    folder = tmp_path / "runs" / study(1).runs[0].folder
    before = (folder / "checkpoint.pt").read_bytes()
    assert "runs were reused" not in (tmp_path / "results.md").read_text()
    assert run_study(study(1), tmp_path, workers=1, progress=False)["plan"]["reuse"] == 2  # same config: reused
    assert (
        "2 of 2 runs were reused from an earlier one" in (tmp_path / "results.md").read_text()
    )  # its wall time is not the study's
    with pytest.raises(
        EdvaeError,
        match=r"0 runs reused, 0 trained, 2 refused: nothing was run; .*s0 \(and 1 other finished run\) "
        r"holds a finished run with another config \(train.epochs differ\); pass --overwrite",
    ):
        run_study(study(2), tmp_path, workers=1, progress=False)
    assert (folder / "checkpoint.pt").read_bytes() == before  # untouched
    replaced = run_study(study(2), tmp_path, workers=1, overwrite=True, progress=False)
    assert replaced["plan"]["train"] == 2 and load_checkpoint(folder)["config"]["train"]["epochs"] == 2


def test_a_pool_worker_whose_study_process_is_gone_starts_no_run(tmp_path, tiny_config):
    """Killing `edvae reproduce` leaves its pool processes with the jobs already queued for them;
    a job handed over by a process that is no longer this worker's parent returns None and
    creates nothing, while the same job from the live parent trains."""
    import os

    from edvae.experiments import RunSpec
    from edvae.experiments.runner import _pool_worker

    spec = RunSpec(
        "complex", "edvae", 0, tiny_config(train={"epochs": 1, "seed": 0}, eval={"iwae_samples": 5, "true_ll": False})
    )
    gone = os.getppid() + 1 if os.getppid() + 1 != os.getpid() else os.getppid() + 2
    assert _pool_worker((spec, str(tmp_path / "orphan"), False, gone)) is None
    assert not (tmp_path / "orphan").exists()
    record = _pool_worker((spec, str(tmp_path / "live"), False, os.getppid()))
    assert record is not None and (tmp_path / "live" / "runs" / spec.folder / "checkpoint.pt").is_file()


@pytest.mark.parametrize("study, epochs", [("paper", 320), ("readings", 30)])
def test_a_doubled_budget_builds_the_runs_that_set_builds_with_twice_the_epochs(study, epochs):
    """`--budget 2x` and `--set train.epochs=2T` give the same run folders and configs, so a study
    folder trained one way is reused by the other (run_study's plan compares the configs)."""
    from edvae.experiments.study import with_budget

    doubled = with_budget(get_study(study, seeds=3), 2.0)
    by_set = get_study(study, seeds=3, overrides={"train": {"epochs": epochs}})
    assert [s.folder for s in doubled.runs] == [s.folder for s in by_set.runs]
    assert [s.config.model_dump() for s in doubled.runs] == [s.config.model_dump() for s in by_set.runs]
    assert doubled.budget == {"factor": 2.0, "epochs": [[epochs // 2, epochs]]} and by_set.budget is None


def test_a_budget_check_reuses_runs_trained_with_those_epochs_and_records_its_factor(
    tmp_path, tiny_config, monkeypatch
):
    from edvae.experiments import RunSpec, Study, run_study
    from edvae.experiments.study import with_budget

    monkeypatch.setattr("edvae.report._figures", lambda *args, **kwargs: [])

    def study(epochs: int) -> Study:
        config = tiny_config(train={"epochs": epochs, "seed": 0}, eval={"iwae_samples": 20, "true_ll": False})
        return Study(
            name="tiny", title="tiny", description="one tiny run", runs=[RunSpec("complex", "edvae", 0, config)]
        )

    assert run_study(study(2), tmp_path, workers=1, progress=False)["plan"]["train"] == 1
    result = run_study(with_budget(study(1), 2.0), tmp_path, workers=1, progress=False)
    assert result["plan"]["reuse"] == 1 and result["budget"] == {"factor": 2.0, "epochs": [[1, 2]]}
    assert json.loads((tmp_path / "results.json").read_text())["budget"] == result["budget"]
    assert "**Budget check at 2x**: every run's epochs multiplied by 2 (1 → 2)" in (tmp_path / "results.md").read_text()
