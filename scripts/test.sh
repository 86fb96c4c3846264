#!/usr/bin/env bash
# Install, lint, and run the whole test suite (unit + integration on the embedded model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
