#!/usr/bin/env bash
# Install, lint, check the Helm chart, run every test (unit + integration on the embedded model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
PYTHON=.venv/bin/python bash .ci/helm-check
.venv/bin/python -m pytest -q "$@"
