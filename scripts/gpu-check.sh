#!/usr/bin/env bash
# GPU check of the torch engine on an offline CUDA machine that already has torch and
# transformers: plain vs guarded at 1/8/32 streams, two runners behind the dispatcher where
# two GPUs exist, CUDA memory figures; stops after 8 minutes at the latest.
#
#   scripts/gpu-check.sh [--model HF_FOLDER] [more benchmarks.gpu_check flags]
#
# Nothing comes from the network. Python packages the check needs beyond torch and
# transformers (pydantic, prometheus_client, numpy, scikit-learn) are installed, only when
# missing, from a folder of wheels: $GUARDSERVE_WHEELS (default: scripts/wheels).
# Without --model the embedded default model must already be prepared in the cache
# (~/.cache/guardserve or $GUARDSERVE_CACHE); copy its folder over and pass --model otherwise.
# PYTHON picks the interpreter (default: python3). --cpu-smoke runs the same path on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
wheels=${GUARDSERVE_WHEELS:-scripts/wheels}

# shellcheck source=scripts/offline-deps.sh
source scripts/offline-deps.sh
ensure_modules "$python" "$wheels" pydantic=pydantic prometheus_client=prometheus-client \
  numpy=numpy sklearn=scikit-learn torch=torch transformers=transformers

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout --kill-after=10 480 "$python" -m benchmarks.gpu_check "$@"
