#!/usr/bin/env bash
# Set up a virtual environment (once) with the test extra and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
exec .venv/bin/python -m pytest "$@"
