#!/usr/bin/env bash
# The test suite (CPU only): sets up .venv if needed, checks lint, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
ruff check .
ruff format --check .
python -m pytest -q --durations=15 "$@"
