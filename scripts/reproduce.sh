#!/usr/bin/env bash
# Install (if needed) and run the paper's study on its built-in synthetic data.
# Extra arguments go to `edvae reproduce` (e.g. --quick, --seeds 3, --study ablation).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/edvae reproduce --out results/paper "$@"
