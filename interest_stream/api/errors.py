"""API errors and the handlers that turn every error into ``{"error", "detail"}`` JSON.

``error`` is a short machine-readable code (``unknown_user``, ``invalid_request``,
``model_not_loaded`` ...), ``detail`` a sentence for people. FastAPI's own
validation errors and Starlette's HTTP exceptions (404 route, 405) get the same
shape; a remote user store that does not answer is a 503 ``store_unavailable``; an
unexpected exception is logged and answered with a JSON 500.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from interest_stream.core.errors import InterestStreamError
from interest_stream.index.errors import DimensionMismatch, StoreUnavailable, UnknownId

__all__ = [
    "ApiError",
    "PublishError",
    "error_body",
    "install_error_handlers",
]

logger = logging.getLogger(__name__)


class ApiError(InterestStreamError):
    """An error answered to the client with ``status`` and the JSON error body.

    Attributes:
        status: HTTP status code.
        code: The ``error`` field (machine-readable).
        detail: The ``detail`` field (for people).
        headers: Extra response headers (``WWW-Authenticate``).
        extra: Extra fields of the JSON body.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        self.extra = extra or {}


class PublishError(InterestStreamError):
    """Kafka did not accept a record (tombstone) in time."""


def error_body(code: str, detail: Any, **extra: Any) -> dict[str, Any]:
    """The JSON error body."""
    return {"error": code, "detail": detail, **extra}


_CODES = {413: "payload_too_large", 404: "not_found", 405: "method_not_allowed"}


def _code_for(status: int) -> str:
    if status in _CODES:
        return _CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def _loc(parts: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in parts) or "request"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(
        error_body(exc.code, exc.detail, **exc.extra), status_code=exc.status, headers=exc.headers
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if exc.detail else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route for {request.method} {request.url.path}"
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        # FastAPI's answer to a body that is not decodable JSON: a bad parameter (422)
        return JSONResponse(
            error_body("invalid_request", "body: not a valid UTF-8 JSON document"),
            status_code=422,
        )
    return JSONResponse(
        error_body(_code_for(exc.status_code), detail),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        msg = str(err.get("msg", "invalid"))
        parts.append(f"{_loc(err.get('loc', ()))}: {msg}")
    return JSONResponse(
        error_body("invalid_request", "; ".join(parts) or "invalid request"), status_code=422
    )


async def _unknown_id(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UnknownId)
    return JSONResponse(error_body(f"unknown_{exc.what}", str(exc)), status_code=404)


async def _dimension(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("dimension mismatch on %s: %s", request.url.path, exc)
    return JSONResponse(error_body("dimension_mismatch", str(exc)), status_code=409)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("user store unavailable on %s: %s", request.url.path, exc)
    return JSONResponse(error_body("store_unavailable", str(exc)), status_code=503)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        error_body("internal_error", f"{type(exc).__name__}: the server failed; see its log"),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(UnknownId, _unknown_id)
    app.add_exception_handler(DimensionMismatch, _dimension)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(Exception, _unexpected)
