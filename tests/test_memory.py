"""Peak-memory tests of the blockwise estimators, each in a fresh subprocess.

The peak increase is VmHWM (the high-water mark of resident memory, /proc/self/status) after
the call minus VmRSS before it, after a small warm-up so that thread pools and library buffers
are already counted; the high-water mark is first reset to the current RSS through
/proc/self/clear_refs where the kernel allows it (otherwise the result only errs on the high
side). ``ru_maxrss`` is not used: Linux carries it over from the parent across fork and exec,
so inside a big pytest process it would hide the child's own peak. A (B, B, D) float32 tensor of pairwise differences would need B*B*D*4 bytes: 1 GiB at
B = 4096, D = 16, and 32 GiB at B = 16384, D = 32.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")

_PROBE = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from torch.distributions import Independent, Normal
    from edvae.estimators import dataset_decomposition, log_aggregate_posterior

    mode, b, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def inputs(n, dim, grad):
        g = torch.Generator().manual_seed(0)
        mu = torch.randn(n, dim, generator=g)
        logvar = torch.full((n, dim), -1.0)
        z = mu + 0.6 * torch.randn(n, dim, generator=g)
        return [t.requires_grad_(grad) for t in (z, mu, logvar)]

    def run(n, dim):
        if mode == "dataset":
            prior = Independent(Normal(torch.zeros(dim), torch.ones(dim)), 1)
            _, mu, logvar = inputs(n, dim, False)
            return dataset_decomposition(mu, logvar, prior, num_queries=min(n, 10_000),
                                         generator=torch.Generator().manual_seed(1)).mi.item()
        grad = mode == "grad"
        z, mu, logvar = inputs(n, dim, grad)
        out = log_aggregate_posterior(z, mu, logvar, dataset_size=10 * n, method="mss")
        if grad:
            out.sum().backward()
            assert torch.isfinite(mu.grad).all() and torch.isfinite(logvar.grad).all()
        return out.sum().item()

    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    run(64, d)  # warm-up
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current RSS
    except OSError:
        pass
    before = status_kib("VmRSS")
    start = time.perf_counter()
    run(b, d)
    seconds = time.perf_counter() - start
    peak = status_kib("VmHWM")
    print(json.dumps({"peak_increase_mib": (peak - before) / 1024, "seconds": seconds,
                      "rss_before_mib": before / 1024}))
    """
)


def _probe(mode: str, batch: int, dim: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, str(batch), str(dim)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\n[{mode} B={batch} D={dim}] {measured}")
    return measured


def test_mss_forward_backward_b4096_d16_stays_small():
    measured = _probe("grad", 4096, 16)
    assert measured["peak_increase_mib"] < 400  # a (B, B, D) float32 tensor alone is 1024 MiB


@pytest.mark.slow  # 5-20 s on two shared cores
def test_mss_forward_backward_b16384_d32_under_2gib():
    measured = _probe("grad", 16384, 32)
    assert measured["peak_increase_mib"] < 2048  # (B, B) float64 alone would be 2048 MiB


@pytest.mark.slow  # 3-16 s on two shared cores
def test_dataset_decomposition_n50000_s10000_d16():
    measured = _probe("dataset", 50_000, 16)
    assert measured["peak_increase_mib"] < 1024
    assert measured["seconds"] < 60
