"""Prometheus metrics of the server and its engines, named guardserve_* (vLLM adds vllm:*)."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from guard.report import GuardReport

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)

REQUESTS = Counter(
    "guardserve_requests_total",
    "Chat-completion requests answered, by mode (unknown when refused before it was resolved) "
    "and HTTP status code (499: the client closed the connection first).",
    ["mode", "status"],
)
REQUEST_LATENCY = Histogram(
    "guardserve_request_latency_seconds",
    "End-to-end latency of chat-completion requests; outcome: ok, error, aborted, timeout.",
    ["mode", "outcome"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "guardserve_time_to_first_token_seconds",
    "Time from arrival to the first content sent to the client.",
    ["mode"],
    buckets=TTFT_BUCKETS,
)
GENERATED_TOKENS = Counter(
    "guardserve_generated_tokens_total", "Completion tokens returned to clients.", ["mode"]
)
PROMPT_TOKENS = Counter("guardserve_prompt_tokens_total", "Prompt tokens processed.", ["mode"])
READY = Gauge(
    "guardserve_ready",
    "1 while the server serves (what GET /ready says); 0 while its model loads, after a failed "
    "load, and while it drains for shutdown.",
)
REQUESTS_RUNNING = Gauge(
    "guardserve_requests_running", "Requests being generated right now.", ["engine"]
)
REQUESTS_WAITING = Gauge(
    "guardserve_requests_waiting", "Requests admitted but waiting for a slot.", ["engine"]
)
BATCH_SIZE = Histogram(
    "guardserve_batch_size",
    "Sequences advanced together by one forward of the torch runner.",
    ["engine"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
STEP_SECONDS = Histogram(
    "guardserve_engine_step_seconds",
    "Wall time of one step of the torch runner (prompt chunks and one batched forward).",
    ["engine"],
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5),
)
PROMPT_TOKENS_PREFILLED = Counter(
    "guardserve_prompt_tokens_prefilled_total",
    "Prompt tokens the torch runner put into its cache by a forward.",
    ["engine"],
)
PROMPT_TOKENS_REUSED = Counter(
    "guardserve_prompt_tokens_reused_total",
    "Prompt tokens the torch runner copied instead of a forward: from a running sequence with "
    "the same prompt (source running: a request's chains and n choices) or from the prefix "
    "cache (source cache: a kept prompt the new one starts with).",
    ["engine", "source"],
)
PREFIX_CACHE_BYTES = Gauge(
    "guardserve_prefix_cache_bytes",
    "Bytes of prompts the torch runner keeps for reuse (--prefix-cache-bytes bounds it).",
    ["engine"],
)


class CudaMemoryCollector(Collector):
    """Allocated and reserved bytes per CUDA device, read at scrape time.

    Resident memory of the process comes from prometheus-client's own process collector
    (`process_resident_memory_bytes`).
    """

    def collect(self) -> list[GaugeMetricFamily]:
        """One gauge family each for allocated and reserved bytes, labelled by device."""
        import torch

        if not torch.cuda.is_available():
            return []
        allocated = GaugeMetricFamily(
            "guardserve_cuda_allocated_bytes",
            "Bytes held by tensors on the device.",
            labels=["device"],
        )
        reserved = GaugeMetricFamily(
            "guardserve_cuda_reserved_bytes",
            "Bytes reserved by the caching allocator.",
            labels=["device"],
        )
        for index in range(torch.cuda.device_count()):
            allocated.add_metric([str(index)], torch.cuda.memory_allocated(index))
            reserved.add_metric([str(index)], torch.cuda.memory_reserved(index))
        return [allocated, reserved]


REGISTRY.register(CudaMemoryCollector())

GUARD_REFINEMENTS = Histogram(
    "guardserve_guard_refinements_per_request",
    "Local refinements (Eq. 13) performed for one guarded choice.",
    buckets=(0, 1, 2, 3, 5, 8, 13, 21),
)
GUARD_SEGMENTS = Counter(
    "guardserve_guard_segments_total", "Guarded segments by final status.", ["status"]
)
GUARD_OUTCOMES = Counter(
    "guardserve_guard_outcomes_total",
    "Guarded choices by outcome and abstention reason (reason 'none' when answered).",
    ["outcome", "reason"],
)
GUARD_STAGE_SECONDS = Histogram(
    "guardserve_guard_stage_seconds",
    "Time one guarded choice spent per stage (token, segment, refinement, global).",
    ["stage"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 4, 8, 16, 32, 64),
)
GUARD_ANSWER_CHECKS = Counter(
    "guardserve_guard_answer_checks_total",
    "Finished chains whose answer the claim verifier checked, by verdict.",
    ["verdict"],
)
GUARD_BUFFER_BYTES = Gauge(
    "guardserve_guard_buffer_bytes",
    "Bytes of hidden states held by running guarded sequences (open segments and chains).",
    ["engine"],
)


def observe_guard_report(report: GuardReport) -> None:
    """Record one finished guarded choice."""
    GUARD_REFINEMENTS.observe(sum(s.refinements for s in report.segments))
    for segment in report.segments:
        GUARD_SEGMENTS.labels(segment.status).inc()
    GUARD_OUTCOMES.labels(report.outcome, report.reason or "none").inc()
    for supported in report.chain_supported:
        if supported is not None:
            GUARD_ANSWER_CHECKS.labels("supported" if supported else "unsupported").inc()
    for stage, seconds in report.timings.model_dump().items():
        GUARD_STAGE_SECONDS.labels(stage.removesuffix("_s")).observe(seconds)
