"""The FastAPI app: thin routes over ChatService, auth, readiness, admission, /metrics."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.types import Receive, Scope, Send

from engine.model_store import DEFAULT_MODEL
from guard.config import GuardConfig
from guard.probe import GuardAssets
from server import metrics
from server.config import ServerConfig
from server.engine_factory import Engines, build_engines
from server.engines.base import EngineError, EngineInputError
from server.errors import (
    APIError,
    install_error_handlers,
    invalid_request,
    load_failed,
    overloaded,
    unauthorized,
    unavailable,
)
from server.limits import BodySizeLimit
from server.preparation import ModelPreparationError, prepared_model
from server.protocol import ChatCompletion, ChatCompletionRequest, ModelCard, ModelList
from server.serving import ChatService
from server.shutdown import abandon_start_up
from server.threads import helper_executor
from server.verification import ClaimChecker

logger = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
# The status nginx logs for a client that closed the connection before the answer.
CLIENT_CLOSED = 499

EngineBuilder = Callable[[Path, ServerConfig, str], Engines]


class ServerState:
    """What the routes share: the service once loaded, and admission bookkeeping."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.service: ChatService | None = None
        self.engines: Engines | None = None
        self.load_error: str | None = None
        self.model_path: Path | None = None
        self.names = config.served_model_name or [_default_name(config.model)]
        self.in_flight = 0  # sequences of the admitted requests (n x guard chains each)
        self.draining = False
        self.created = int(time.time())

    @property
    def capacity(self) -> int:
        """Sequences admitted at once: the running slots plus the waiting queue."""
        return self.config.max_num_seqs + self.config.max_queue


def _default_name(model: str | None) -> str:
    return DEFAULT_MODEL if model is None else Path(model).name.removesuffix(".gguf")


async def _load(state: ServerState, builder: EngineBuilder) -> None:
    config = state.config
    asyncio.get_running_loop().set_default_executor(helper_executor())
    try:
        state.model_path = await prepared_model(config.model, config.cache_dir)
        state.engines = await asyncio.to_thread(builder, state.model_path, config, state.names[0])
        checker = ClaimChecker()
        await asyncio.to_thread(checker.warm_up)
    except Exception as exc:
        # The preparing child has logged its own traceback; this one would add nothing.
        logger.error("model load failed", exc_info=not isinstance(exc, ModelPreparationError))
        state.load_error = f"{type(exc).__name__}: {exc}"
        return
    state.service = ChatService(
        tokenizer=state.engines.tokenizer,
        plain_engine=state.engines.plain,
        guard_engine=state.engines.guard,
        served_model_names=state.names,
        max_model_len=state.engines.max_model_len,
        max_num_seqs=config.max_num_seqs,
        guard_default=guard_defaults(state.engines.guard_assets, config.guard_default == "on"),
        checker=checker,
        has_probe=state.engines.guard_assets is not None,
    )
    logger.info("ready: serving %s from %s", state.names, state.model_path)


def guard_defaults(assets: GuardAssets | None, enabled: bool) -> GuardConfig:
    """The server's guard settings: the model's calibrated probe setup, else the paper's."""
    return assets.defaults(enabled) if assets is not None else GuardConfig(enabled=enabled)


def create_app(config: ServerConfig, builder: EngineBuilder = build_engines) -> FastAPI:
    """Build the app; the model loads in the background and /ready turns 200 when it is up."""
    state = ServerState(config)
    metrics.READY.set_function(lambda: float(state.service is not None and not state.draining))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(state, builder))
        yield
        if not loading.done():
            abandon_start_up()
        await loading
        if state.engines is not None:
            await state.engines.plain.shutdown()
            if state.engines.guard is not state.engines.plain:
                await state.engines.guard.shutdown()

    app = FastAPI(title="guardserve", version="0.1.0", lifespan=lifespan)
    app.state.server = state
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)

    @app.middleware("http")
    async def authenticate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        key = config.api_key
        if key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return unauthorized().response()
        return await call_next(request)

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """guardserve_requests_total by mode and status; outermost, so it sees 401s and 413s too."""
        response = await call_next(request)
        if request.url.path == CHAT_PATH:
            mode = getattr(request.state, "mode", "unknown")
            metrics.REQUESTS.labels(mode, str(response.status_code)).inc()
        return response

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness: the process is up, and its model did not fail to load (503 if it did)."""
        if state.load_error is not None:
            return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: 200 once the model is loaded, 503 again while draining for shutdown."""
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if state.service is None:
            status = "failed" if state.load_error else "loading"
            return JSONResponse({"status": status, "error": state.load_error}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition (guardserve_* and, with vLLM, vllm:*)."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> ModelList:
        """The served model names."""
        cards = [
            ModelCard(
                id=name,
                created=state.created,
                root=str(state.model_path or config.model or DEFAULT_MODEL),
                max_model_len=state.engines.max_model_len if state.engines else None,
                dtype=state.engines.dtype if state.engines else None,
                guard=state.service.guard_default if state.service else None,
            )
            for name in state.names
        ]
        return ModelList(data=cards)

    @app.post(CHAT_PATH, response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        """OpenAI chat completions, plain or guarded, streaming or not."""
        service = state.service
        if state.draining:
            raise unavailable("The server is shutting down.")
        if state.load_error is not None:
            raise load_failed(state.load_error)
        if service is None:
            raise unavailable("The model is still loading.")
        # Templating and tokenising a long prompt takes a while: off the event loop.
        prepared = await asyncio.to_thread(service.prepare, body, request.headers.get("x-guard"))
        request.state.mode = prepared.mode
        sequences = prepared.sequences
        if state.in_flight + sequences > state.capacity:
            raise overloaded(retry_after_s=1)
        timeout = state.config.request_timeout
        state.in_flight += sequences
        if body.stream:
            # Counted from now, not from its first event, so a burst cannot slip past the check.
            keepalive = state.config.stream_keepalive_interval
            events = service.stream(prepared, timeout, keepalive_s=keepalive)
            return AdmittedStream(state, events, sequences)
        try:
            completion = await _unless_disconnected(request, service.complete(prepared, timeout))
        except EngineInputError as exc:
            raise invalid_request(str(exc)) from exc
        except EngineError as exc:
            raise APIError(500, str(exc), type="server_error", code="engine_error") from exc
        except TimeoutError as exc:
            message = f"The request did not finish within {timeout} s."
            raise APIError(504, message, type="timeout_error", code="timeout") from exc
        finally:
            state.in_flight -= sequences
        if completion is None:
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(completion.model_dump(exclude_none=True, by_alias=True))

    return app


async def _unless_disconnected(
    request: Request, work: Awaitable[ChatCompletion]
) -> ChatCompletion | None:
    """Await `work`, but cancel it and return None as soon as the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    return task.result() if not task.cancelled() else None


async def _disconnect(request: Request) -> None:
    """Return once the client has closed the connection (the body is read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class AdmittedStream(StreamingResponse):
    """An SSE response that holds its admission until the response ends, however it ends."""

    def __init__(self, state: ServerState, events: AsyncIterator[str], sequences: int) -> None:
        super().__init__(events, media_type="text/event-stream")
        self._state = state
        self._sequences = sequences

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._state.in_flight -= self._sequences
