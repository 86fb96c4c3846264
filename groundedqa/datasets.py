"""Evaluation items: HaluEval QA development lines, or any JSONL of {question, context, answer}.

Only HaluEval's development lines (1-8000) can be evaluated here; lines 8001-10000 are reserved
for the release evaluation. A JSONL file in HaluEval's own format (`knowledge`,
`right_answer`) is refused too, so that the reserved lines cannot come in through a path.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from groundedqa.halueval import DEV_LINES, load_halueval

HALUEVAL = "halueval"


class EvalItem(BaseModel):
    """One grounded question; `line` is its 1-based line in the source file."""

    id: str
    line: int
    question: str
    context: str
    answer: str


class _JsonlRecord(BaseModel):
    """One line of a user JSONL dataset."""

    model_config = ConfigDict(extra="ignore")

    question: str
    context: str
    answer: str
    id: str | int | None = None


def _check_window(offset: int, limit: int | None, total: int, what: str) -> None:
    if offset < 0 or (limit is not None and limit < 1):
        raise ValueError(f"offset must be >= 0 and limit >= 1 (got {offset}, {limit})")
    if offset >= total or (limit is not None and offset + limit > total):
        last = total if limit is None else offset + limit
        raise ValueError(
            f"items {offset + 1}-{last} were asked for, but {what} has items 1-{total} only"
        )


def load_halueval_dev(offset: int = 0, limit: int | None = None) -> list[EvalItem]:
    """HaluEval QA development items `offset+1 .. offset+limit`; refuses past line 8000."""
    _check_window(offset, limit, len(DEV_LINES), "HaluEval's development split (lines 1-8000)")
    wanted = None if limit is None else offset + limit
    return [
        EvalItem(
            id=f"{HALUEVAL}-{item.line}",
            line=item.line,
            question=item.question,
            context=item.knowledge,
            answer=item.right_answer,
        )
        for item in load_halueval("dev", limit=wanted)[offset:]
    ]


def load_jsonl(path: Path, offset: int = 0, limit: int | None = None) -> list[EvalItem]:
    """Items of a JSONL file of {question, context, answer[, id]}, from line `offset+1`."""
    lines = [(n, raw) for n, raw in enumerate(path.read_text("utf-8").splitlines(), 1) if raw]
    _check_window(offset, limit, len(lines), str(path))
    items: list[EvalItem] = []
    for number, raw in lines[offset : None if limit is None else offset + limit]:
        data = json.loads(raw)
        if "knowledge" in data and "right_answer" in data:
            raise ValueError(
                f"{path} is in HaluEval's format: use --dataset {HALUEVAL}, which keeps to the "
                "development lines 1-8000 (8001-10000 are reserved for release evaluation)"
            )
        record = _JsonlRecord.model_validate(data)
        item_id = str(record.id) if record.id is not None else f"line-{number}"
        fields = record.model_dump(exclude={"id"})
        items.append(EvalItem(id=item_id, line=number, **fields))
    duplicates = len(items) - len({item.id for item in items})
    if duplicates:
        raise ValueError(f"{path}: {duplicates} items repeat an id; ids must be unique")
    return items


def load_items(dataset: str, offset: int = 0, limit: int | None = None) -> list[EvalItem]:
    """`halueval` (development lines) or the path of a JSONL file."""
    if dataset == HALUEVAL:
        return load_halueval_dev(offset, limit)
    return load_jsonl(Path(dataset), offset, limit)
