"""Graceful shutdown: on SIGTERM stop admitting (503), drain in-flight requests, then exit 0."""

from __future__ import annotations

import asyncio
import logging
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal starts a drain bounded by the grace period.

    While draining, /ready answers 503 and new chat requests get 503; once no request is in
    flight (or the grace period is over) uvicorn shuts down and the process exits with status 0
    (a drained stop is a clean one). A second signal exits at once, by that signal.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app_state = app.state.server
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    def for_app(cls, app: FastAPI, log_level: str) -> DrainingServer:
        """Bind to the app's configured host and port."""
        settings = app.state.server.config
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=log_level,
            timeout_graceful_shutdown=5,
        )
        return cls(config, app)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain. Any later one: let uvicorn exit now."""
        if self._drain is not None or self.app_state.draining:
            super().handle_exit(sig, frame)
            return
        self.app_state.draining = True
        logger.info("draining %d in-flight requests", self.app_state.in_flight)
        self._drain = asyncio.get_event_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        deadline = time.monotonic() + self.app_state.config.shutdown_grace_period
        while self.app_state.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.app_state.in_flight:
            logger.warning("grace period over with %d requests in flight", self.app_state.in_flight)
        # Not through handle_exit: uvicorn would re-raise the signal after shutdown (exit 143).
        self.should_exit = True
