"""Verifier quality on HaluEval QA dev items: does it flag hallucinated answers, not right ones?

Each sampled item gives two cases verified against its `knowledge`: `right_answer` (label 0,
must come out not hallucinated) and `hallucinated_answer` (label 1). Positive class is
"hallucinated". Only dev lines (1-8000) are ever used here.

    python -m benchmarks.verifier_quality --n 500 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_score, recall_score
from tqdm import tqdm

from groundedqa.halueval import load_halueval
from verify.verifier import Verifier, VerifierConfig


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="dev items to sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--errors", type=Path, default=Path("runs/verifier_quality/errors.jsonl"))
    parser.add_argument("--no-embeddings", action="store_true", help="rules only")
    parser.add_argument("--entity-threshold", type=float, default=VerifierConfig().entity_threshold)
    parser.add_argument(
        "--relation-threshold", type=float, default=VerifierConfig().relation_threshold
    )
    parser.add_argument(
        "--relation-min-words", type=int, default=VerifierConfig().relation_min_words
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = VerifierConfig(
        use_embeddings=not args.no_embeddings,
        entity_threshold=args.entity_threshold,
        relation_threshold=args.relation_threshold,
        relation_min_words=args.relation_min_words,
    )
    verifier = Verifier(config)
    items = load_halueval("dev")
    sample = random.Random(args.seed).sample(items, min(args.n, len(items)))
    labels: list[int] = []
    predictions: list[int] = []
    args.errors.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with args.errors.open("w", encoding="utf-8") as errors:
        for item in tqdm(sample, desc="verifying", unit="item"):
            for label, answer in ((0, item.right_answer), (1, item.hallucinated_answer)):
                verification = verifier.verify(answer, item.knowledge)
                predicted = int(verification.hallucinated)
                labels.append(label)
                predictions.append(predicted)
                if predicted != label:
                    record = {
                        "error": "false_positive" if predicted else "false_negative",
                        "line": item.line,
                        "answer": answer,
                        "question": item.question,
                        "knowledge": item.knowledge,
                        "verdicts": [
                            {
                                "text": v.claim.text,
                                "kind": v.claim.kind,
                                "supported": v.supported,
                                "method": v.method,
                                "score": round(v.score, 3),
                            }
                            for v in verification.verdicts
                        ],
                    }
                    errors.write(json.dumps(record, ensure_ascii=False) + "\n")
    elapsed = time.perf_counter() - started
    tn, fp, fn, tp = confusion_matrix(labels, predictions, labels=[0, 1]).ravel()
    print(f"items={len(sample)} cases={len(labels)} seed={args.seed} config={config}")
    print(f"tp={tp} fp={fp} tn={tn} fn={fn}")
    print(f"precision={precision_score(labels, predictions, zero_division=0):.3f}")
    print(f"recall={recall_score(labels, predictions, zero_division=0):.3f}")
    print(f"balanced_accuracy={balanced_accuracy_score(labels, predictions):.3f}")
    print(f"seconds={elapsed:.1f} ({1000 * elapsed / len(labels):.1f} ms/case)")
    print(f"errors written to {args.errors}")


if __name__ == "__main__":
    main()
