#!/usr/bin/env bash
# Install, then serve the embedded default model on 127.0.0.1:8000 (extra flags pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/guardserve serve "$@"
