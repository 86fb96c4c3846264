"""Prepares the served model into the cache in a child process that a stop can end at once."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from multiprocessing.connection import Connection
from pathlib import Path

from engine.model_store import resolve_model

logger = logging.getLogger(__name__)


class ModelPreparationError(RuntimeError):
    """The child process preparing the model failed (its message: the child's error) or died."""


async def prepared_model(model: str | None, cache_dir: str | None) -> Path:
    """The model's folder, prepared into the cache (dequantised, merged) by a child process.

    A child process can be ended at once by a stop during start-up, and its minute of
    preparation leaves the event loop's thread alone, so /ready and /health answer promptly.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    level = logging.getLogger().getEffectiveLevel()
    child = context.Process(
        target=_prepare_in_child,
        args=(sender, level, model, cache_dir),
        name="guardserve-prepare",
    )
    child.start()
    sender.close()
    try:
        path, error = await asyncio.to_thread(receiver.recv)
    except EOFError:
        path, error = None, None
    finally:
        receiver.close()
        await asyncio.to_thread(child.join)
    if path is None:
        raise ModelPreparationError(
            error or f"the preparing process died (exit code {child.exitcode})"
        )
    return path


def _prepare_in_child(sender: Connection, level: int, model: str | None, cache: str | None) -> None:
    """The preparing child: resolve the model, send back (path, None) or (None, its error)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sender.send((resolve_model(model, cache), None))
    except Exception as exc:
        logger.exception("model preparation failed")
        sender.send((None, f"{type(exc).__name__}: {exc}"))
