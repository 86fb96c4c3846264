"""The eval harness end to end against a fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from evals.harness import Completion, score_response
from evals.report import read_records, read_summary
from groundedqa.datasets import EvalItem, load_halueval_dev, load_jsonl
from groundedqa.prompts import SYSTEM_PROMPT
from guardserve.cli import main
from guardserve.commands.eval import add_eval_parser
from verify.verifier import Verifier

DELAY_S = 0.05
REFUSAL = "I cannot answer that reliably."
ITEMS = [
    {
        "id": "ceo",
        "question": "Who is the CEO of Acme?",
        "context": "Jane Park is the CEO of Acme. Acme is based in Toronto.",
        "answer": "Jane Park",
    },
    {
        "id": "bridge",
        "question": "When did the Hale Bridge open?",
        "context": "The Hale Bridge opened in 1932. It is 503 metres long.",
        "answer": "1932",
    },
    {
        "id": "river",
        "question": "Which city does the Lenna River flow through?",
        "context": "The Lenna River flows through Oslo.",
        "answer": "Oslo",
    },
]
# Canned answers per question: (plain and verify answer, guarded answer; None = refused).
ANSWERS: dict[str, tuple[str, str | None]] = {
    "Who is the CEO of Acme?": ("Jane Park is the CEO.", "Jane Park is the CEO."),
    "When did the Hale Bridge open?": ("It opened in 1936.", "It opened in 1932."),
    "Which city does the Lenna River flow through?": ("Oslo.", None),
}
# Confidences per question: (a plain answer's own `confidence` field, the guard's F_global).
CONFIDENCES: dict[str, tuple[float, float]] = {
    "Who is the CEO of Acme?": (0.8, 0.9),
    "When did the Hale Bridge open?": (0.7, 0.6),
    "Which city does the Lenna River flow through?": (0.2, 0.3),
}


def fake_app(received: list[dict[str, Any]]) -> FastAPI:
    """A stand-in OpenAI-compatible server with canned answers and guardserve's `guard` field."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": "fake-model", "object": "model", "created": 0, "owned_by": "test"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        received.append(body)
        question = body["messages"][-1]["content"].rsplit("Question: ", 1)[-1]
        if question not in ANSWERS:
            error = {"message": "unknown question", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=400)
        await asyncio.sleep(DELAY_S)
        guard = body.get("guard") or {}
        plain_answer, guarded_answer = ANSWERS[question]
        plain_confidence, f_global = CONFIDENCES[question]
        content, report = plain_answer, None
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if guard.get("mode") == "verify":
            # A report that calls every claim supported: the harness must verify by itself.
            report = {"mode": "verify", "outcome": "answered", "claims": [{"supported": True}]}
        elif guard.get("enabled"):
            outcome = "answered" if guarded_answer is not None else "refused"
            content = guarded_answer or REFUSAL
            scores = {"f_fact": f_global, "f_logic": f_global, "f_global": f_global}
            check = {**scores, "iterations": 0, "tau_low": 0.55, "tau_high": 0.75}
            report = {"mode": "guard", "outcome": outcome, "segments": [], "global": check}
        else:
            choice["confidence"] = plain_confidence
        n_tokens = len(content.split())
        choice["message"] = {"role": "assistant", "content": content}
        return {
            "id": f"chatcmpl-{len(received)}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [choice],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": n_tokens,
                "total_tokens": 10 + n_tokens,
            },
            "guard": [report] if report else None,
        }

    return app


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The fake server in a thread; yields its /v1 base URL and the request bodies it got."""
    received: list[dict[str, Any]] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake_app(received), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}/v1", received
    server.should_exit = True
    thread.join(timeout=5)
    sock.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three items as a JSONL dataset."""
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(
    fake_server: tuple[str, list[dict[str, Any]]],
    dataset: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """A plain run, then guard and verify runs with the plain one as reference (via the CLI)."""
    base_url, _ = fake_server
    root = tmp_path_factory.mktemp("runs")
    common = ["eval", "--base-url", base_url, "--dataset", str(dataset), "--concurrency", "2"]
    common += ["--max-tokens", "32", "--seed", "7"]
    dirs = {mode: root / mode for mode in ("plain", "guard", "verify")}
    assert main([*common, "--mode", "plain", "--out", str(dirs["plain"])]) == 0
    for mode in ("guard", "verify"):
        reference = ["--reference", str(dirs["plain"]), "--no-progress"]
        assert main([*common, "--mode", mode, "--out", str(dirs[mode]), *reference]) == 0
    return dirs


def read_run(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    lines = (run_dir / "responses.jsonl").read_text(encoding="utf-8").splitlines()
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return [json.loads(line) for line in lines], summary


def test_requests_carry_prompt_settings_and_mode(
    runs: dict[str, Path], fake_server: tuple[str, list[dict[str, Any]]]
) -> None:
    _, received = fake_server
    assert len(received) == 9
    for body in received:
        assert body["model"] == "fake-model"  # first entry of GET /v1/models
        assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.0, 32, 7)
        assert body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert body["messages"][1]["content"].startswith("Context: ")
    guards = sorted(json.dumps(body.get("guard"), sort_keys=True) for body in received)
    assert guards == sorted(["null"] * 3 + ['{"enabled": true}'] * 3 + ['{"mode": "verify"}'] * 3)


def test_plain_run_records_and_summary(runs: dict[str, Path]) -> None:
    records, summary = read_run(runs["plain"])
    by_id = {r["id"]: r for r in records}
    assert [r["id"] for r in records] == ["ceo", "bridge", "river"]
    assert [r["line"] for r in records] == [1, 2, 3]
    assert by_id["bridge"]["hallucinated"] is True
    assert any(c["text"] == "1936" and not c["supported"] for c in by_id["bridge"]["claims"])
    for key in ("ceo", "river"):
        record = by_id[key]
        assert record["hallucinated"] is False
        assert record["n_claims"] == record["n_supported"] == len(record["claims"]) >= 1
    assert all(r["outcome"] == "answered" and r["guard"] is None for r in records)
    assert all(r["latency_s"] >= DELAY_S for r in records)
    assert [r["completion_tokens"] for r in records] == [5, 4, 1]
    assert [r["em"] for r in records] == [0.0, 0.0, 1.0]
    # F1: "jane park is ceo" vs "jane park" = 2/3; "it opened in 1936" vs "1932" = 0; 1.
    assert [r["f1"] for r in records] == pytest.approx([2 / 3, 0.0, 1.0])
    assert [r["gold_in_answer"] for r in records] == [True, False, True]
    assert [r["confidence"] for r in records] == [0.8, 0.7, 0.2]  # the choice's own field

    assert summary["n"] == 3 and summary["n_errors"] == 0 and summary["n_abstained"] == 0
    assert "faithfulness" not in summary and "q_score" not in summary
    assert summary["judged_by"]["verifier_faith"].startswith("verifier")
    assert summary["judged_by"]["gold_in_answer_answered"].startswith("gold")
    assert summary["verifier_faith"] == pytest.approx(2 / 3)
    assert summary["informativeness"] == 1.0
    assert summary["info_reference"] is None and "itself" in summary["info_note"]
    assert summary["verifier_q_score"] == pytest.approx(2 / 3)
    assert summary["gold_in_answer_answered"] == pytest.approx(2 / 3)
    assert summary["gold_in_answer_overall"] == pytest.approx(2 / 3)
    assert summary["coverage"] == 1.0
    assert summary["abstention_precision"] is None  # no reference run
    # Ranked 0.8 (right), 0.7 (wrong), 0.2 (right): risks 0, 1/2, 1/3 at coverage 1/3, 2/3, 1.
    assert summary["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3) / 3)
    assert summary["risk_coverage_n"] == 3
    assert (summary["first_line"], summary["last_line"]) == (1, 3)
    assert summary["em"] == pytest.approx(1 / 3)
    assert summary["f1"] == pytest.approx(5 / 9)
    assert summary["verifier_hallucination_rate"] == pytest.approx(1 / 3)
    assert summary["abstention_rate"] == 0.0
    assert summary["latency_p50_s"] >= DELAY_S
    assert summary["latency_p95_s"] >= summary["latency_p50_s"]
    assert summary["completion_tokens"] == 10
    assert summary["tokens_per_s"] == pytest.approx(10 / summary["wall_s"])
    assert (summary["mode"], summary["model"], summary["seed"]) == ("plain", "fake-model", 7)
    assert summary["dataset"].endswith("qa.jsonl") and summary["timestamp"]
    assert "api_key" not in summary


def test_guard_run_counts_refusal_as_faithful_abstention(runs: dict[str, Path]) -> None:
    records, summary = read_run(runs["guard"])
    by_id = {r["id"]: r for r in records}
    refused = by_id["river"]
    assert refused["outcome"] == "refused" and refused["abstained"] is True
    assert refused["response"] == REFUSAL and refused["guard"]["outcome"] == "refused"
    assert refused["n_claims"] == 0 and refused["hallucinated"] is False
    assert refused["gold_in_answer"] is False and refused["confidence"] == 0.3  # F_global
    assert by_id["bridge"]["hallucinated"] is False
    assert by_id["bridge"]["f1"] == pytest.approx(0.4)  # "it opened in 1932" vs "1932"

    assert summary["verifier_faith"] == 1.0
    assert summary["n_abstained"] == 1 and summary["n_truncated"] == 0
    assert summary["abstention_rate"] == pytest.approx(1 / 3)
    assert summary["coverage"] == pytest.approx(2 / 3)
    assert summary["verifier_hallucination_rate"] == 0.0  # over the two answered items
    assert summary["gold_in_answer_answered"] == 1.0
    assert summary["gold_in_answer_overall"] == pytest.approx(2 / 3)
    # The guard refused the river item, which the plain run answered right: precision 0.
    assert summary["abstention_precision"] == 0.0
    assert summary["abstention_precision_matched"] == 1
    # F_global ranks 0.9 (right), 0.6 (right), 0.3 (refused, so wrong when kept).
    assert summary["aurc"] == pytest.approx((0 + 0 + 1 / 3) / 3)
    # The refusal has fewer claims than the plain answer; the other two have as many.
    assert summary["informativeness"] == pytest.approx(2 / 3)
    assert summary["info_matched"] == 3
    assert summary["info_reference"] == str(runs["plain"])
    assert summary["verifier_q_score"] == pytest.approx(2 / 3)
    assert summary["f1"] == pytest.approx((2 / 3 + 0.4 + 0.0) / 3)


def test_verify_run_scores_answers_itself(runs: dict[str, Path]) -> None:
    records, summary = read_run(runs["verify"])
    assert all(r["guard"]["mode"] == "verify" for r in records)
    assert [r["hallucinated"] for r in records] == [False, True, False]
    assert summary["verifier_faith"] == pytest.approx(2 / 3)
    assert summary["informativeness"] == 1.0  # same answers as the reference
    assert summary["gold_in_answer_answered"] == pytest.approx(2 / 3)
    assert (summary["abstention_precision"], summary["abstention_precision_matched"]) == (None, 0)
    assert (summary["aurc"], summary["risk_coverage_n"]) == (None, 0)  # no confidence at all
    assert summary["mode"] == "verify"


def test_failed_requests_are_counted_not_scored(
    fake_server: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    data = tmp_path / "bad.jsonl"
    rows = [{"question": f"bad {i}", "context": "c", "answer": "a"} for i in range(3)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base_url, _ = fake_server
    out = tmp_path / "run"
    args = ["eval", "--base-url", base_url, "--model", "m", "--dataset", str(data)]
    args += ["--offset", "1", "--limit", "1"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    records, summary = read_run(out)
    assert records[0]["outcome"] == "error" and "unknown question" in records[0]["error"]
    assert (summary["n"], summary["n_errors"], summary["verifier_faith"]) == (1, 1, None)
    assert (summary["coverage"], summary["gold_in_answer_overall"]) == (None, None)
    assert (summary["first_line"], summary["last_line"]) == (2, 2)  # the lines asked for
    with pytest.raises(SystemExit):  # never overwrites a run
        main([*args, "--out", str(out), "--no-progress"])


def test_plot_writes_png(runs: dict[str, Path], tmp_path: Path) -> None:
    png = tmp_path / "plot.png"
    assert main(["eval", "plot", *(str(d) for d in runs.values()), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    risk_png = tmp_path / "plot_risk_coverage.png"
    assert risk_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_names_judges_and_lines(
    runs: dict[str, Path], dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "table", str(runs["plain"]), str(runs["guard"])]) == 0
    header, rule, plain, guard = capsys.readouterr().out.splitlines()
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert "Faith. (verifier)" in columns and "AURC (gold)" in columns
    assert set(rule.replace("|", "").split()) == {"---"}
    cells = dict(zip(columns, (cell.strip() for cell in guard.strip("|").split("|")), strict=True))
    assert cells["run"] == "guard (guard)" and cells["lines"] == f"{dataset} 1-3"
    assert (cells["coverage"], cells["abst. precision (gold)"]) == ("66.7", "0.0")
    assert (cells["AURC (gold)"], cells["Faith. (verifier)"]) == ("0.111", "100.0")
    assert plain.count("|") == guard.count("|")


def test_truncated_answers_count_as_answered_and_refusal_text_abstains() -> None:
    item = EvalItem(**{**ITEMS[1], "line": 2})
    verifier = Verifier()
    truncated = Completion(
        content="It opened in 1932. Unsure from here",
        latency_s=0.1,
        guard={"mode": "guard", "outcome": "truncated"},
    )
    record = score_response(item, truncated, verifier)
    assert record.outcome == "truncated" and record.abstained is False
    assert record.gold_in_answer is True and record.n_claims >= 1
    # A run without a guard report abstains only in words: the refusal text, as configured.
    worded = Completion(content="No idea, sorry.", latency_s=0.1)
    record = score_response(item, worded, verifier, refusal_message="No idea, sorry")
    assert record.abstained is True and record.n_claims == 0 and record.gold_in_answer is False
    assert score_response(item, worded, verifier).abstained is False


def test_runs_written_before_gold_judging_still_load(runs: dict[str, Path], tmp_path: Path) -> None:
    records, summary = read_run(runs["guard"])
    old = tmp_path / "old"
    old.mkdir()
    renamed = {"verifier_faith": "faithfulness", "verifier_q_score": "q_score"}
    renamed["verifier_hallucination_rate"] = "hallucination_rate"
    added = ("gold_in_answer_answered", "coverage", "aurc", "first_line", "judged_by")
    summary = {renamed.get(k, k): v for k, v in summary.items() if k not in added}
    (old / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    dropped = ("gold_in_answer", "confidence")
    # Old records stored `abstained` for truncated answers too; it is judged again on load.
    lines = [
        {**{k: v for k, v in r.items() if k not in dropped}, "abstained": True} for r in records
    ]
    (old / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    loaded = read_summary(old)
    assert loaded.verifier_faith == 1.0 and loaded.verifier_q_score == pytest.approx(2 / 3)
    assert loaded.coverage is None and loaded.first_line is None
    assert [(r.abstained, r.gold_in_answer) for r in read_records(old)] == [
        (False, True),
        (False, True),
        (True, False),
    ]


def test_eval_parser_registers_run_and_plot() -> None:
    parser = argparse.ArgumentParser(prog="guardserve")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    run = parser.parse_args(["eval", "--mode", "guard", "--limit", "5", "--out", "r"])
    assert (run.mode, run.limit, run.out, run.eval_command) == ("guard", 5, Path("r"), None)
    plot = parser.parse_args(["eval", "plot", "a", "b", "--out", "p.png"])
    assert (plot.runs, plot.plot_out) == ([Path("a"), Path("b")], Path("p.png"))
    assert plot.handler is not run.handler


def test_jsonl_loader_windows_ids_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"question": f"q{i}", "context": "c", "answer": "a"} for i in range(4)]
    rows[2]["id"] = "custom"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = load_jsonl(path, offset=1, limit=2)
    assert [(i.id, i.line, i.question) for i in items] == [("line-2", 2, "q1"), ("custom", 3, "q2")]
    with pytest.raises(ValueError, match="1-4"):
        load_jsonl(path, offset=3, limit=2)

    halueval_format = tmp_path / "h.jsonl"
    record = {"knowledge": "k", "question": "q", "right_answer": "a", "hallucinated_answer": "b"}
    halueval_format.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match="--dataset halueval"):
        load_jsonl(halueval_format)

    duplicated = tmp_path / "dup.jsonl"
    duplicated.write_text(json.dumps(rows[2]) + "\n" + json.dumps(rows[2]) + "\n")
    with pytest.raises(ValueError, match="unique"):
        load_jsonl(duplicated)


@pytest.mark.parametrize(("offset", "limit"), [(8000, 1), (7990, 20), (9000, None), (-1, 5)])
def test_halueval_refuses_lines_past_development(offset: int, limit: int | None) -> None:
    with pytest.raises(ValueError):
        load_halueval_dev(offset, limit)


def test_default_refusal_is_the_servers() -> None:
    from evals.harness import DEFAULT_REFUSAL
    from guard.config import GuardConfig

    assert GuardConfig().refusal_message == DEFAULT_REFUSAL
