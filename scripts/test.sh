#!/usr/bin/env bash
# Install (if needed), lint and type-check (any finding fails), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests scripts benchmarks
.venv/bin/mypy  # files and settings: [tool.mypy] in pyproject.toml
# One BLAS/OpenMP thread per test worker: two workers share the two cores.
export OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest -q -n 2 "$@"
