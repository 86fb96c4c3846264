"""OpenAI-style errors: one exception type, its constructors, and the FastAPI handlers."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.protocol import ErrorBody, ErrorResponse

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error that becomes an OpenAI error object with the given HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(message=message, type=type, param=param, code=code)
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        """The JSON response carrying this error."""
        return error_response(self.status, self.body, self.headers)


class _AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped, so any string a client sent (lone surrogates too) renders."""

    def render(self, content: Any) -> bytes:
        """Serialise `content` as ASCII-only JSON."""
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(
    status: int, body: ErrorBody, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON response with OpenAI's error envelope."""
    content = ErrorResponse(error=body).model_dump()
    return _AsciiJSONResponse(status_code=status, content=content, headers=headers)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400: the request is malformed or out of range."""
    return APIError(HTTPStatus.BAD_REQUEST, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    """404: the requested model is not served here."""
    return APIError(
        HTTPStatus.NOT_FOUND,
        f"The model '{model}' does not exist.",
        param="model",
        code="model_not_found",
    )


def unauthorized() -> APIError:
    """401: missing or wrong API key."""
    return APIError(
        HTTPStatus.UNAUTHORIZED,
        "Incorrect or missing API key.",
        type="authentication_error",
        code="invalid_api_key",
    )


def overloaded(retry_after_s: int) -> APIError:
    """429: the waiting queue is full."""
    return APIError(
        HTTPStatus.TOO_MANY_REQUESTS,
        "The server is overloaded; retry later.",
        type="rate_limit_error",
        code="queue_full",
        headers={"Retry-After": str(retry_after_s)},
    )


def unavailable(message: str) -> APIError:
    """503: not ready yet, or shutting down."""
    return APIError(
        HTTPStatus.SERVICE_UNAVAILABLE, message, type="server_error", code="unavailable"
    )


def load_failed(error: str) -> APIError:
    """503: the model could not be loaded, and will not be by this process."""
    return APIError(
        HTTPStatus.SERVICE_UNAVAILABLE,
        f"The model failed to load: {error}",
        type="server_error",
        code="model_load_failed",
    )


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "dict"})


def _location_param(loc: tuple[int | str, ...]) -> str | None:
    """The dotted field path of a validation error, without `body` and pydantic's union tags."""
    parts = [
        str(p)
        for p in loc
        if p != "body" and not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))
    ]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    """Make every failure path answer with OpenAI's error object."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Of a union's failed branches, the deepest error says most (a bad text part's field
        # rather than "not a string").
        errors = sorted(exc.errors(), key=lambda e: len(e.get("loc", ())), reverse=True)
        first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
        param = _location_param(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            message = "The request body is not valid JSON."
            param = None
        else:
            message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return invalid_request(message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(exc.status_code, ErrorBody(message=str(exc.detail), type=kind))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return error_response(
            HTTPStatus.INTERNAL_SERVER_ERROR,
            ErrorBody(message="Internal server error.", type="server_error"),
        )
