#!/usr/bin/env bash
# Install sslbench with its test extra into .venv (CPU/CUDA torch from the local wheel cache when
# present) and run the test suite. Used verbatim by README and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[test]"
.venv/bin/python -m pytest -q "$@"
