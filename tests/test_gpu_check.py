"""scripts/gpu_check.sh and scripts/gpu_check.py: the CPU dry run writes its JSON summary; without
a GPU the script stops at once with one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_script_stops_with_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    env.pop("EDVAE_GPU_CHECK_FORCE_CPU", None)
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/gpu_check.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1 and "no CUDA GPU" in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_dry_run_runs_every_stage_on_the_cpu_and_writes_one_json(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "EDVAE_GPU_CHECK_FORCE_CPU": "1"}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/gpu_check.sh")], capture_output=True, text=True, env=env, timeout=600
    )
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert done.returncode == 0 and summary["ok"], done.stdout + done.stderr
    assert summary["dry_run"] and set(summary["checks"]) == {
        "cuda_tests",
        "matrix",
        "checkpoints",
        "first_losses",
        "bench",
        "iwae",
    }
    assert summary["checks"]["first_losses"]["edvae"]["max_relative"] == 0.0  # CPU against CPU: identical
    assert summary["checks"]["checkpoints"]["cpu_to_gpu_resume"]["final_step"] == 4
    assert all(row["ok"] for row in summary["checks"]["matrix"]["runs"].values())
    bench = summary["checks"]["bench"]
    assert bench["vae-std"]["cpu_ms"] > 0 and bench["conv 28x28"]["macs_per_step"] > bench["vae-std"]["macs_per_step"]
    assert "all checks passed" in done.stdout


def test_a_failing_stage_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "scripts"))

    def broken(check):
        raise RuntimeError("boom")

    monkeypatch.setitem(gpu_check.STAGES, "cuda_tests", broken)
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), "--only", "cuda_tests", "first_losses"]) == 1
    checks = json.loads((tmp_path / "gpu_check.json").read_text())["checks"]
    assert checks["cuda_tests"] == {
        "ok": False,
        "error": "RuntimeError: boom",
        "traceback": checks["cuda_tests"]["traceback"],
        "seconds": checks["cuda_tests"]["seconds"],
    }
    assert checks["first_losses"]["ok"]
