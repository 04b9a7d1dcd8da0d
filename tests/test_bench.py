"""``edvae bench``: the quick run end to end and the schema of what it writes.

Speed is what the benchmark measures; these tests check only that it runs and reports
consistently (no timing assertions).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from edvae import bench
from edvae.cli import app

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the scaling study reads /proc/self/status")


def test_quick_bench_writes_every_file_with_the_expected_schema(tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["bench", "--out", str(out), "--quick"])
    assert result.exit_code == 0, result.output
    assert "bench.md" in result.output
    report = json.loads((out / "bench.json").read_text())

    assert report["format"] == bench.BENCH_FORMAT and report["quick"] is True
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["torch"] and machine["torch_threads"] == 1

    (synthetic,) = report["overhead"]
    rows = synthetic["results"]
    assert {"vae-std", "edvae", "edvae-paper"} <= set(rows)
    assert rows["vae-std"]["ratio"] == pytest.approx(1.0)
    for row in rows.values():
        assert row["seconds_per_epoch"] > 0 and row["ratio"] > 0 and row["ratio_cpu"] > 0

    peers = report["peers"]
    assert {"edvae (vae-std objective)", "hand-written PyTorch loop"} <= set(peers["results"])
    assert all(r["examples_per_second"] > 0 and r["test_elbo"] < 0 for r in peers["results"].values())
    assert peers["ratios"]["vs_hand_written"] > 0
    assert ("vs_pythae" in peers["ratios"]) == (machine["pythae"] is not None)

    scaling = report["scaling"]
    assert [p["B"] for p in scaling["mss_forward_backward"]] == [256, 1024]
    assert all(p["seconds"] > 0 and p["peak_increase_mib"] >= 0 for p in scaling["mss_forward_backward"])
    assert scaling["slope_mss_time_vs_B"] == scaling["slope_mss_time_vs_B"]  # not NaN
    assert (out / "scaling.png").stat().st_size > 1000

    step = report["step_ratio"]
    hand, ours = step["results"]["hand loop"], step["results"]["trainer (vae-std)"]
    assert hand["ms_per_step_cpu"] > 0 and ours["ms_per_step_cpu"] > 0 and ours["ms_per_step_wall"] > 0
    assert step["ratio"] == pytest.approx(hand["ms_per_step_cpu"] / ours["ms_per_step_cpu"])
    assert ("gpu" in report) == torch.cuda.is_available()

    profile = report["profile"]
    assert profile["top"] and profile["scalar_reads_per_step"] >= 0
    assert report["hygiene"]["evaluation_inference_mode"] is True

    assert report["matmul"]["gflops"] > 0
    (limits,) = report["limits"]
    for name in ("vae-std", "edvae-paper"):
        v = limits["variants"][name]
        # the step's FLOPs are at least the three-layer MLPs' products: 2 * 3 * B * sum of layer sizes, forward alone
        assert v["flops_per_step"] >= 2 * 3 * 256 * (16 * 128 + 128 * 128) and v["top"]
        assert v["achieved_gflops"] == pytest.approx(v["flops_per_step"] / v["ms_per_step"] / 1e6)
    start = report["start_up"]
    assert set(start["seconds"]) == {"import torch", "import torch, lightning_fabric", "edvae train: first step"}
    assert start["seconds"]["edvae train: first step"] > start["seconds"]["import torch"] > 0
    assert "sklearn" not in start["evaluate_imported"] and start["evaluate_after_imports_seconds"] > 0
    table = report["threads"]
    assert 1 in table["threads"] and all(
        set(row) == {"idle", "with a competing process"} for row in table["ms_per_step"].values()
    )

    mi = report["correctness"]["results"]
    truth = mi["truth (full data set)"]["mi"]
    assert truth > report["correctness"]["log_B"] + 3  # the case is far above log B
    assert abs(mi["edvae MSS"]["mi"] - truth) < 0.1
    assert mi["edvae batch (InfoNCE bound)"]["mi"] <= report["correctness"]["log_B"] + 1e-9

    markdown = (out / "bench.md").read_text()
    for heading in ("## 1.", "## 2.", "### 2b.", "## 3.", "## 4.", "### 4b.", "### 4c.", "### 4d.", "## 5."):
        assert heading in markdown
    snippet = (out / "README-snippet.md").read_text().splitlines()
    assert snippet[0] == "## Performance" and len(snippet) <= 10


def test_without_pythae_the_comparisons_say_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pythae", None)  # import pythae -> ImportError
    monkeypatch.setitem(sys.modules, "pythae.models", None)
    result = bench.mi_correctness(quick=True)
    assert result["pythae"] == "not installed"
    assert "pythae BetaTCVAE MSS" not in result["results"]


def test_a_file_as_output_folder_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("")
    result = CliRunner().invoke(app, ["bench", "--out", str(target), "--quick"])
    assert result.exit_code == 2 and "is a file" in result.output


def test_the_beta_tcvae_terms_are_compared_with_their_closed_forms():
    """The full-data-set estimates of I, TC and the dimension-wise KL of the Gaussian case agree
    with the closed forms (finite-mixture error ~0.03 nats); pythae's row is there iff installed."""
    import importlib.util

    result = bench.tcvae_terms_correctness(quick=True)
    rows = result["results"]
    closed = rows["closed form (Gaussian q(z))"]
    assert closed["tc"]["mean"] > 0.1 and closed["dimwise_kl"]["mean"] > 0.1 and closed["mi"]["mean"] > 1
    for term in ("mi", "tc", "dimwise_kl"):
        assert abs(rows["edvae full data set"][term]["error"]) < 0.05
        assert rows["edvae MSS"][term]["std_over_batches"] > 0
    assert ("pythae BetaTCVAE MSS" in rows) == (importlib.util.find_spec("pythae") is not None)


def test_the_step_probe_profiles_a_run_shorter_than_its_steps(tiny_config, tmp_path):
    """Regression: on a task with fewer steps per epoch than the probe asked for, the full bench
    died with "'_StepProbe' object has no attribute 'events'"."""
    from edvae.bench.limits import _StepProbe
    from edvae.training import train

    probe = _StepProbe(steps=100)
    train(tiny_config(train={"epochs": 1}), tmp_path / "run", callbacks=[probe])
    assert probe.flops > 0 and probe.profile is None
    assert any("addmm" in e.key or "mm" in e.key for e in probe.events)


def test_the_step_blocks_pair_the_trainer_with_the_hand_loop():
    """_PairedBlocks: untimed warm-up, then rounds of one block per side, the order swapping each
    round; the trainer's steps walk the epoch's batches in order; one time per block and side."""
    from types import SimpleNamespace

    from edvae.bench.step import _block_row, _PairedBlocks

    calls: list[object] = []
    trainer = SimpleNamespace(
        tc=SimpleNamespace(batch_size=2),
        x_train=torch.zeros(6, 1),
        train_step=lambda rows: calls.append(tuple(rows.tolist())),
        settle=lambda: calls.append("settle"),
    )
    clock = _PairedBlocks(lambda: calls.append("hand"), rounds=3, block=2, warm=1)
    clock.on_train_start(trainer)
    sides = ["hand" if c == "hand" else "trainer" for c in calls[:-1]]
    assert calls[-1] == "settle"
    assert (
        sides
        == ["trainer", "hand"]
        + ["trainer"] * 2
        + ["hand"] * 2
        + ["hand"] * 2
        + ["trainer"] * 2
        + ["trainer"] * 2
        + ["hand"] * 2
    )
    batches = [c for c in calls if isinstance(c, tuple)]
    order = torch.randperm(6, generator=torch.Generator().manual_seed(0)).tolist()
    assert batches == [tuple(order[2 * (i % 3) : 2 * (i % 3) + 2]) for i in range(7)]
    assert all(len(clock.seconds[side][c]) == 3 for side in ("trainer", "hand") for c in ("cpu", "wall"))
    row = _block_row({"cpu": [0.003, 0.001, 0.002], "wall": [0.004, 0.006, 0.005]})
    assert row["ms_per_step_cpu"] == pytest.approx(2.0) and row["ms_per_step_wall"] == pytest.approx(5.0)
