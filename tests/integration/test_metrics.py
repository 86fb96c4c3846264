"""GET /metrics: guardserve_* families move with the requests served, vLLM adds vllm:*."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from live_server import MODEL, REPO_ROOT, Server, parse_metrics, user

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}
CHART = REPO_ROOT / "helm" / "guardserve"
# Series names in PromQL: a name directly followed by its label matchers (every query here
# selects its series with matchers; functions are followed by "(", labels by "=").
SERIES = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")
# Series that Prometheus itself makes (the scrape's health), not the server.
PROMETHEUS_SERIES = {"up"}

# Metric name -> Prometheus type, as announced by the `# TYPE` lines of the exposition.
REQUIRED = {
    "guardserve_requests_total": "counter",
    "guardserve_request_latency_seconds": "histogram",
    "guardserve_time_to_first_token_seconds": "histogram",
    "guardserve_generated_tokens_total": "counter",
    "guardserve_prompt_tokens_total": "counter",
    "guardserve_requests_running": "gauge",
    "guardserve_requests_waiting": "gauge",
    "guardserve_batch_size": "histogram",
    "guardserve_engine_step_seconds": "histogram",
    "process_resident_memory_bytes": "gauge",
}


def total(samples: dict[str, float], name: str, *labels: str) -> float:
    """Sum of the samples of `name` whose labels include every `key="value"` given."""
    return sum(
        value
        for key, value in samples.items()
        if key.startswith(name + "{") and all(label in key for label in labels)
    )


def names(samples: dict[str, float]) -> set[str]:
    """Sample names without labels."""
    return {key.split("{", 1)[0] for key in samples}


def test_metrics_follow_plain_requests(server: Server) -> None:
    before = server.metrics()
    client = server.openai()
    completion = client.chat.completions.create(
        model=MODEL, messages=user("Name three fruits."), max_tokens=16, temperature=0
    )
    streamed = list(
        client.chat.completions.create(
            model=MODEL,
            messages=user("Name three fruits."),
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    after = parse_metrics(text)
    missing = [name for name, kind in REQUIRED.items() if f"# TYPE {name} {kind}\n" not in text]
    assert not missing, missing
    plain = 'mode="plain"'
    usage = [completion.usage, streamed[-1].usage]
    generated = sum(u.completion_tokens for u in usage)
    prompt = sum(u.prompt_tokens for u in usage)

    def grew(name: str, *labels: str) -> float:
        return total(after, name, *labels) - total(before, name, *labels)

    assert grew("guardserve_generated_tokens_total", plain) == generated
    assert grew("guardserve_prompt_tokens_total", plain) == prompt
    assert grew("guardserve_request_latency_seconds_count", plain, 'outcome="ok"') == 2
    assert grew("guardserve_requests_total", plain, 'status="200"') == 2
    assert grew("guardserve_request_latency_seconds_sum", plain) > 0
    assert grew("guardserve_time_to_first_token_seconds_count", plain) == 2
    ttft = grew("guardserve_time_to_first_token_seconds_sum", plain)
    latency = grew("guardserve_request_latency_seconds_sum", plain)
    assert 0 < ttft <= latency
    assert total(after, "guardserve_requests_running") == 0
    assert after["process_resident_memory_bytes{}"] > 50 * 2**20
    if server.engine == "torch":
        assert grew("guardserve_batch_size_count", 'engine="torch') > 0
        steps = grew("guardserve_engine_step_seconds_count", 'engine="torch')
        assert steps >= grew("guardserve_batch_size_count", 'engine="torch')
        assert 0 < grew("guardserve_engine_step_seconds_sum", 'engine="torch') < latency
    else:
        assert any(name.startswith("vllm:") for name in names(after))
        # Autoscalers read these for every engine, vLLM's plain traffic included.
        assert 'guardserve_requests_waiting{engine="vllm"}' in after
        assert 'guardserve_requests_running{engine="vllm"}' in after


def test_requests_counted_by_mode_and_status(torch_server: Server) -> None:
    before = torch_server.metrics()
    with torch_server.http() as client:
        bad_json = client.post("/v1/chat/completions", content=b"{", headers=JSON)
        bad_guard = client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": user("Hi"), "guard": {"lam": 7}},
        )
        guarded = client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": user("Hi"), "max_tokens": 4, "guard": {}},
            headers={"x-guard": "on"},
        )
    assert (bad_json.status_code, bad_guard.status_code, guarded.status_code) == (400, 400, 200)
    after = torch_server.metrics()

    def grew(*labels: str) -> float:
        name = "guardserve_requests_total"
        return total(after, name, *labels) - total(before, name, *labels)

    assert grew('mode="unknown"', 'status="400"') == 2
    assert grew('mode="guard"', 'status="200"') == 1


def test_client_that_leaves_a_non_streaming_request_frees_its_slot(server: Server) -> None:
    before = server.metrics()
    body = {
        "model": MODEL,
        "messages": user("Tell me a very long story."),
        "max_tokens": 450,
        "temperature": 0,
        "ignore_eos": True,
    }
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=1.5)
    left = time.monotonic()
    while total(server.metrics(), "guardserve_requests_running") > 0:
        assert time.monotonic() - left < 3, "the abandoned request is still running"
        time.sleep(0.1)
    deadline = time.monotonic() + 3
    while True:
        after = server.metrics()
        aborted = total(after, "guardserve_request_latency_seconds_count", 'outcome="aborted"')
        closed = total(after, "guardserve_requests_total", 'status="499"')
        if aborted > total(
            before, "guardserve_request_latency_seconds_count", 'outcome="aborted"'
        ) and closed > total(before, "guardserve_requests_total", 'status="499"'):
            break
        assert time.monotonic() < deadline, "the abort was not counted"
        time.sleep(0.1)


def test_metrics_follow_guarded_requests(torch_server: Server) -> None:
    before = torch_server.metrics()
    completion = torch_server.openai().chat.completions.create(
        model=MODEL,
        messages=user("Name three fruits."),
        max_tokens=16,
        temperature=0,
        extra_body={"guard": {"enabled": True}},
    )
    after = torch_server.metrics()
    guard = 'mode="guard"'
    generated = total(after, "guardserve_generated_tokens_total", guard) - total(
        before, "guardserve_generated_tokens_total", guard
    )
    assert generated == completion.usage.completion_tokens
    requests = total(after, "guardserve_request_latency_seconds_count", guard) - total(
        before, "guardserve_request_latency_seconds_count", guard
    )
    assert requests == 1


def test_metrics_stay_open_and_parse(torch_server: Server) -> None:
    response = httpx.get(f"{torch_server.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert parse_metrics(response.text)


def declared_series(exposition: str) -> set[str]:
    """The series each `# TYPE` line announces, so a labelled family counts before its first
    sample (e.g. claim-check verdicts, when no chain of this session was checked yet)."""
    suffixes = {"histogram": ("_bucket", "_sum", "_count")}
    declared = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            declared |= {name + suffix for suffix in suffixes.get(kind, ("",))}
    return declared


def monitored_series() -> set[str]:
    """Every series the Grafana dashboard and the PrometheusRule template query."""
    dashboard = json.loads((CHART / "dashboards" / "guardserve.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries.append((CHART / "templates" / "prometheusrule.yaml").read_text())
    return {name for query in queries for name in SERIES.findall(query)} - PROMETHEUS_SERIES


def test_dashboard_and_alerts_query_series_the_server_exports(server: Server) -> None:
    """After plain, streamed and guarded traffic, each queried series is in /metrics (as a
    sample or a declared family; histograms as _bucket/_sum/_count); vllm:* on the vLLM
    server only, the CUDA gauges on GPU servers only."""
    client = server.openai()
    question = user("Name three fruits.")
    client.chat.completions.create(model=MODEL, messages=question, max_tokens=8, temperature=0)
    list(
        client.chat.completions.create(
            model=MODEL, messages=question, max_tokens=8, temperature=0, stream=True
        )
    )
    # The calibrated default guard: several chains, whose answers the claim verifier checks.
    grounded = user(
        "Acme reported revenue of $12.4 billion in 2024. Jane Park is the CEO. "
        "Who is the CEO of Acme?"
    )
    client.chat.completions.create(
        model=MODEL,
        messages=grounded,
        max_tokens=32,
        temperature=0,
        extra_body={"guard": {"enabled": True}},
    )
    samples = server.metrics()
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    exported = names(samples) | declared_series(text)
    wanted = monitored_series()
    assert {"guardserve_ready", "guardserve_request_latency_seconds_bucket"} <= wanted
    assert any(n.startswith("vllm:") for n in wanted)
    if server.engine != "vllm":
        wanted = {n for n in wanted if not n.startswith("vllm:")}
    if not any('engine="torch-cuda' in key for key in samples):
        wanted = {n for n in wanted if not n.startswith("guardserve_cuda_")}
    assert sorted(wanted - exported) == []
