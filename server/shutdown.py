"""Stopping: drain on SIGTERM and exit 0, exit 1 when the model fails to load, or at once
when a stop comes during start-up."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from types import FrameType
from typing import NoReturn

import uvicorn
from fastapi import FastAPI

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal starts a drain bounded by the grace period.

    While draining, /ready answers 503 and new chat requests get 503; once no request is in
    flight (or the grace period is over) uvicorn shuts down and the process exits with status 0
    (a drained stop is a clean one). A second signal exits at once, by that signal. A model
    that fails to load stops the server too, with `exit_code` 1, unless the configuration
    says to stay up (`--no-exit-on-load-failure`).
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app_state = app.state.server
        self.exit_code = 0
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

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick (every 0.1 s), which also ends the server once its model failed."""
        state = self.app_state
        if state.load_error and state.config.exit_on_load_failure and not self.should_exit:
            logger.error("exiting: the model could not be loaded: %s", state.load_error)
            self.exit_code = 1
            self.should_exit = True
        return await super().on_tick(counter)

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


def abandon_start_up() -> NoReturn:
    """Exit now, with status 0, from a stop that came while the model was still loading.

    Loading runs in threads that cannot be interrupted (waiting for them made a stop take a
    minute), so child processes (a model preparer, vLLM's engine) are ended and the process
    exits without joining its threads. Nothing was served yet, and the model cache only ever
    gains whole folders: a half-prepared one is a temporary folder the next start removes.
    """
    logger.info("stopped during start-up: the model load is abandoned")
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + 2.0
    for child in children:
        child.join(max(deadline - time.monotonic(), 0.0))
        if child.is_alive():
            child.kill()
    logging.shutdown()
    os._exit(0)
