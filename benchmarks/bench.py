"""The benchmarks of ``edvae bench`` (issue #8), as a script: the same as

    edvae bench --out benchmarks/results [--quick] [--threads N]

It writes bench.json, bench.md, scaling.png and README-snippet.md; see :mod:`edvae.bench` for
what is measured and how.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edvae.bench import run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--quick", action="store_true", help="a short version (under a minute)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the timed comparisons")
    args = parser.parse_args()
    report = run_bench(args.out, quick=args.quick, threads=args.threads)
    print(f"{report['seconds']:.0f} s; report: {args.out / 'bench.md'}")


if __name__ == "__main__":
    main()
