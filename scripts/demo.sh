#!/usr/bin/env bash
# Set up a virtual environment (once) and run the activity classifier demo on real data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python scripts/demo.py "$@"
