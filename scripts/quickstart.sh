#!/usr/bin/env bash
# Install sslbench into .venv and run the main job: the quickstart recipe on the embedded
# benchmark (pretrain -> linear probe + k-NN -> leaderboard). Used verbatim by README.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1" -e .
.venv/bin/sslbench run recipes/quickstart.yaml "$@"
