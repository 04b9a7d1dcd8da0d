#!/usr/bin/env bash
# Install (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One BLAS/OpenMP thread per test worker: two workers share the two cores.
export OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest -q -n 2 "$@"
