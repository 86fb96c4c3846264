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

missing=$("$python" - <<'PY'
import importlib.util

needed = {"pydantic": "pydantic", "prometheus_client": "prometheus-client",
          "numpy": "numpy", "sklearn": "scikit-learn", "torch": "torch",
          "transformers": "transformers"}
print(" ".join(pip for mod, pip in needed.items() if importlib.util.find_spec(mod) is None))
PY
)
if [[ -n "$missing" ]]; then
  if [[ ! -d "$wheels" ]]; then
    echo "missing Python packages: $missing (no wheel folder at $wheels)" >&2
    exit 1
  fi
  echo "installing from $wheels: $missing"
  "$python" -m pip install --no-index --find-links "$wheels" $missing
fi

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout --kill-after=10 480 "$python" -m benchmarks.gpu_check "$@"
