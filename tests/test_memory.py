"""Peak-memory tests of the blockwise estimators, each in a fresh subprocess
(:func:`edvae.bench.peak_memory`).

The peak increase is VmHWM (the high-water mark of resident memory, /proc/self/status) after
the call minus VmRSS before it, after a small warm-up so that thread pools and library buffers
are already counted; the high-water mark is first reset to the current RSS through
/proc/self/clear_refs where the kernel allows it (otherwise the result only errs on the high
side). ``ru_maxrss`` is not used: Linux carries it over from the parent across fork and exec,
so inside a big pytest process it would hide the child's own peak. A (B, B, D) float32 tensor
of pairwise differences would need B*B*D*4 bytes: 1 GiB at B = 4096, D = 16, and 32 GiB at
B = 16384, D = 32.
"""

from __future__ import annotations

import sys

import pytest

from edvae.bench import peak_memory

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")


def _probe(mode: str, batch: int, dim: int) -> dict:
    """One call in a fresh process (the helper ``edvae bench`` uses for its scaling study)."""
    measured = peak_memory(mode, batch, dim)
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
