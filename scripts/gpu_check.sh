#!/usr/bin/env bash
# Check edvae on one CUDA GPU (under 8 minutes on an H200) and write "$OUT/gpu_check.json".
#
#   bash scripts/gpu_check.sh            # OUT defaults to ./gpu-check-out; PYTHON to python3
#
# On a bare CUDA machine with torch but without network: the wheels in .whl/ (zuko, pydantic,
# pydantic-core, annotated-types, typing-inspection, lightning-fabric; see docs/gpu.md) are
# installed into a --target folder first. Without a GPU it stops at once (exit 2); with
# EDVAE_GPU_CHECK_FORCE_CPU=1 every stage runs on the CPU with tiny sizes (the dry run).
# The checks themselves are in scripts/gpu_check.py. Exit 1 when any check failed.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-./gpu-check-out}
if [ "${EDVAE_GPU_CHECK_FORCE_CPU:-}" != 1 ] &&
  ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  echo "gpu_check: torch sees no CUDA GPU on this machine (torch.cuda.is_available() is False); run it on a GPU machine" >&2
  exit 2
fi
if [ "${EDVAE_GPU_CHECK_FORCE_CPU:-}" != 1 ] && compgen -G ".whl/*.whl" >/dev/null; then  # the dry run uses this environment
  SITE=${EDVAE_GPU_CHECK_SITE:-/tmp/edvae-gpu-check-site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl ||
    { echo "gpu_check: could not install the wheels of .whl/ into $SITE" >&2; exit 3; }
  export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
exec "$PY" scripts/gpu_check.py --out "$OUT" "$@"
