"""Questions over long documents: four guard chains against one, guard against plain, and a
document asked about twice with and without the prefix cache.

A document is consecutive HaluEval development passages (from `--first-line`) joined until it
holds about `--doc-tokens` prompt tokens; its questions are those of its passages. Run it on an
otherwise idle machine: it compares wall times.

    python -m benchmarks.long_documents --parts chains concurrent repeat
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import openai
from transformers import AutoTokenizer

from benchmarks.launcher import serve
from engine.model_store import DEFAULT_MODEL, resolve_model
from groundedqa.halueval import HaluEvalItem, load_halueval
from groundedqa.prompts import grounded_messages


@dataclass(frozen=True)
class Document:
    """A long context and two questions about passages in it."""

    context: str
    questions: tuple[str, str]
    prompt_tokens: int


@dataclass(frozen=True)
class Timing:
    """One request: its part, setting, document, wall and first-token seconds, and status."""

    part: str
    setting: str
    document: int
    wall_s: float
    ttft_s: float | None
    status: str
    completion_tokens: int


def documents(first_line: int, count: int, doc_tokens: int) -> list[Document]:
    """`count` documents of about `doc_tokens` prompt tokens from consecutive passages."""
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(DEFAULT_MODEL)))
    items = [i for i in load_halueval("dev") if i.line >= first_line]
    docs: list[Document] = []
    group: list[HaluEvalItem] = []
    for item in items:
        group.append(item)
        context = "\n\n".join(i.knowledge for i in group)
        messages = grounded_messages(context, group[0].question)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        tokens = len(tokenizer(text, add_special_tokens=False).input_ids)
        if tokens >= doc_tokens and len(group) >= 2:
            middle = group[len(group) // 2]
            docs.append(Document(context, (middle.question, group[0].question), tokens))
            group = []
            if len(docs) == count:
                break
    return docs


def client(url: str) -> openai.AsyncOpenAI:
    """The official async client for a server, without retries, with a long timeout."""
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=900)


async def ask(
    url: str,
    doc: Document,
    question: int,
    max_tokens: int,
    guard: dict[str, object] | None,
) -> tuple[float, float | None, str, int]:
    """Stream one question; wall and first-token seconds, status, completion tokens."""
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    try:
        async with client(url) as api:
            stream = await api.chat.completions.create(
                model=DEFAULT_MODEL,
                messages=grounded_messages(doc.context, doc.questions[question]),  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=None if guard is None else {"guard": guard},
            )
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - start
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
        status = "ok"
    except openai.APIStatusError as exc:
        status = str(exc.status_code)
    except openai.APIError as exc:
        status = type(exc).__name__
    return time.perf_counter() - start, first, status, tokens


def chains_part(url: str, docs: list[Document], max_tokens: int) -> list[Timing]:
    """Each document once with one guard chain and once with four, one request at a time."""
    rows = []
    for index, doc in enumerate(docs):
        order = [1, 4] if index % 2 == 0 else [4, 1]
        for chains in order:
            guard = {"enabled": True, "chains": chains}
            wall, ttft, status, tokens = asyncio.run(ask(url, doc, 0, max_tokens, guard))
            rows.append(Timing("chains", f"{chains} chains", index, wall, ttft, status, tokens))
    return rows


def concurrent_part(
    url: str, docs: list[Document], max_tokens: int, concurrency: int
) -> list[Timing]:
    """All documents' first questions, `concurrency` at a time: plain, then the default guard."""
    rows = []
    for setting, guard in (("plain", None), ("guard default", {"enabled": True})):

        async def run(guard: dict[str, object] | None = guard) -> list[tuple]:
            limit = asyncio.Semaphore(concurrency)

            async def one(doc: Document) -> tuple:
                async with limit:
                    return await ask(url, doc, 0, max_tokens, guard)

            return await asyncio.gather(*(one(doc) for doc in docs))

        for index, result in enumerate(asyncio.run(run())):
            rows.append(Timing("concurrent", setting, index, *result))
    return rows


def repeat_part(url: str, docs: list[Document], max_tokens: int, setting: str) -> list[Timing]:
    """Each document's two questions one after the other (plain), one request at a time."""
    rows = []
    for index, doc in enumerate(docs):
        for question in (0, 1):
            result = asyncio.run(ask(url, doc, question, max_tokens, None))
            rows.append(Timing("repeat", f"{setting}, question {question + 1}", index, *result))
    return rows


def summary(rows: list[Timing]) -> list[str]:
    """Per part and setting: requests, statuses, wall p50 / p95, first-token p50."""
    lines = []
    for part, setting in dict.fromkeys((r.part, r.setting) for r in rows):
        cell = [r for r in rows if (r.part, r.setting) == (part, setting)]
        walls = sorted(r.wall_s for r in cell)
        ttfts = [r.ttft_s for r in cell if r.ttft_s is not None]
        statuses = {s: sum(r.status == s for r in cell) for s in {r.status for r in cell}}
        p95 = walls[min(len(walls) - 1, round(0.95 * (len(walls) - 1)))]
        ttft = f"{statistics.median(ttfts):.2f}" if ttfts else "-"
        lines.append(
            f"{part:10s} {setting:28s} n={len(cell):3d} {statuses} wall p50 "
            f"{statistics.median(walls):.2f} s p95 {p95:.2f} s, first token p50 {ttft} s, "
            f"tokens {statistics.mean(r.completion_tokens for r in cell):.1f}"
        )
    return lines


def main() -> None:
    """Start the servers each part needs, one at a time, and print and save the timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["chains", "concurrent", "repeat"])
    parser.add_argument("--first-line", type=int, default=6001)
    parser.add_argument("--documents", type=int, default=40)
    parser.add_argument("--chain-documents", type=int, default=6)
    parser.add_argument("--doc-tokens", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--plain-engine", default="auto", choices=["auto", "torch", "vllm"])
    parser.add_argument("--out", default="runs/bench/long_documents.json")
    args = parser.parse_args()
    docs = documents(args.first_line, args.documents, args.doc_tokens)
    sizes = [d.prompt_tokens for d in docs]
    print(f"{len(docs)} documents, prompt tokens {min(sizes)}-{max(sizes)}")
    log = Path(args.out).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    base = ["--max-model-len", "4096", "--max-num-seqs", "16", "--request-timeout", "600"]
    rows: list[Timing] = []
    cold = [*base, "--plain-engine", args.plain_engine, "--prefix-cache-bytes", "0"]
    if {"chains", "concurrent"} & set(args.parts):
        with serve(cold, log) as server:
            if "chains" in args.parts:
                rows += chains_part(server.url, docs[: args.chain_documents], 32)
            if "concurrent" in args.parts:
                rows += concurrent_part(server.url, docs, 96, args.concurrency)
    if "repeat" in args.parts:
        for setting, cache in (("no prefix cache", "0"), ("prefix cache", str(1 << 30))):
            flags = [*base, "--plain-engine", "torch", "--prefix-cache-bytes", cache]
            with serve(flags, log) as server:
                rows += repeat_part(server.url, docs[: args.chain_documents], 16, setting)
    Path(args.out).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    for line in summary(rows):
        print(line)


if __name__ == "__main__":
    main()
