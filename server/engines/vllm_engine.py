"""Plain requests on vLLM's AsyncLLM, embedded in the server process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from engine.outputs import SequenceOutput, TokenLogprob
from engine.sampling import SamplingParams
from server import metrics
from server.engines.base import EngineError, EngineInputError

if TYPE_CHECKING:
    from vllm.outputs import CompletionOutput
    from vllm.v1.engine.async_llm import AsyncLLM


class VllmEngine:
    """Continuous batching, tensor and data parallelism by vLLM; token-id prompts in, deltas out."""

    name = "vllm"

    def __init__(self, llm: AsyncLLM) -> None:
        self.llm = llm
        self._waiting = 0
        self._running = 0
        self._publish_load()

    @classmethod
    def start(
        cls,
        model_path: str,
        *,
        max_model_len: int,
        max_num_seqs: int,
        tensor_parallel_size: int,
        data_parallel_size: int,
        gpu_memory_utilization: float,
        kv_cache_memory_bytes: int | None,
        dtype: str,
        enforce_eager: bool,
        seed: int,
    ) -> VllmEngine:
        """Build the AsyncLLM (engine core in a child process)."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=model_path,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            tensor_parallel_size=tensor_parallel_size,
            data_parallel_size=data_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            dtype=dtype,
            enforce_eager=enforce_eager,
            seed=seed,
            disable_log_stats=False,
        )
        return cls(AsyncLLM.from_engine_args(args))

    def pending(self) -> tuple[int, int]:
        """Requests (running, waiting): submitted ones without output yet count as waiting."""
        return self._running, self._waiting

    def _publish_load(self) -> None:
        metrics.REQUESTS_RUNNING.labels(self.name).set(self._running)
        metrics.REQUESTS_WAITING.labels(self.name).set(self._waiting)

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[SequenceOutput[None]]:
        """Stream deltas; closing the iterator early aborts the request inside vLLM."""
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None
        if params.json_schema is not None:
            structured = StructuredOutputsParams(json=params.json_schema)
        sampling = VllmSamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p if params.top_p > 0 else 1.0,
            # OpenAI's top_p 0 (the top token alone), which vLLM refuses, is its top_k 1.
            top_k=1 if params.top_p <= 0 else max(params.top_k, 0),
            seed=params.seed,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            ignore_eos=params.ignore_eos,
            logprobs=params.logprobs,
            structured_outputs=structured,
            output_kind=RequestOutputKind.DELTA,
        )
        produced = 0
        finished = False
        started = False
        self._waiting += 1
        self._publish_load()
        try:
            stream = self.llm.generate(
                TokensPrompt(prompt_token_ids=prompt_ids), sampling, request_id
            )
            async for output in stream:
                if not started:
                    started = True
                    self._waiting -= 1
                    self._running += 1
                    self._publish_load()
                completion = output.outputs[0]
                produced += len(completion.token_ids)
                reason = completion.finish_reason
                finished = output.finished
                yield SequenceOutput(
                    completion.text,
                    produced,
                    ("length" if reason == "length" else "stop") if finished else None,
                    logprobs=_logprobs(completion, params.logprobs),
                )
        except VLLMClientError as exc:
            raise EngineInputError(str(exc)) from exc
        except Exception as exc:
            raise EngineError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if started:
                self._running -= 1
            else:
                self._waiting -= 1
            self._publish_load()
            if not finished:
                await self.llm.abort(request_id)

    async def shutdown(self) -> None:
        """Stop the engine core process."""
        self.llm.shutdown()


def _logprobs(completion: CompletionOutput, top: int | None) -> tuple[TokenLogprob, ...] | None:
    """The new tokens' logprobs in the engine's record; None when none were asked for.

    vLLM gives each position the sampled token plus the `top` most likely ones, keyed by id.
    """
    if top is None or completion.logprobs is None:
        return None
    entries = []
    for token_id, position in zip(completion.token_ids, completion.logprobs, strict=True):
        sampled = position[token_id]
        ranked = sorted(
            (entry for entry in position.values() if entry.rank is not None and entry.rank <= top),
            key=lambda entry: entry.rank or 0,
        )
        entries.append(
            TokenLogprob(
                sampled.decoded_token or "",
                sampled.logprob,
                tuple((entry.decoded_token or "", entry.logprob) for entry in ranked),
            )
        )
    return tuple(entries)
