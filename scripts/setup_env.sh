#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install mmar with its dev extras.
# Sourced by quickstart.sh and test.sh so both work on a fresh machine.
set -euo pipefail
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[dev]"
