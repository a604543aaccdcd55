#!/usr/bin/env bash
# Install sslbench with its test extra into .venv (CPU/CUDA torch from the local wheel cache when
# present) and run the test suite. Used verbatim by README and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
# Headless Chromium for the leaderboard's browser test (it skips, saying why, when absent).
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        chromium chromium-driver) >/dev/null 2>&1 || echo "note: chromium not installed"
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[test]"
.venv/bin/pip install -q --no-deps -e examples/plugin_method  # the example method plugin
.venv/bin/python -m pytest -q "$@"
