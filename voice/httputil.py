"""HTTP helpers every route module of the service shares: the error shape, the client address, and the
operator-API check (bearer token from settings; loopback-only when none is set, see :mod:`voice.auth`)."""

from __future__ import annotations

import json
from typing import Any, Final

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from voice.auth import AuthError, check_operator
from voice.config import Settings
from voice.logs import get_logger
from voice.query import QueryError

_log = get_logger(component="http")

MAX_API_BODY: Final = 16 * 1024
"""Largest JSON body the operator API reads."""


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """The service's error shape: ``{"error": {"code", "message", ...}}``."""
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def client_host(conn: HTTPConnection) -> str | None:
    """The peer's address as the ASGI server saw it (None when unknown)."""
    return conn.client.host if conn.client is not None else None


def operator_refusal(settings: Settings, request: Request) -> JSONResponse | None:
    """None if the request may use the operator API, else the refusal to return (logged)."""
    token = settings.api_token.get_secret_value() if settings.api_token else None
    try:
        check_operator(token, client_host(request), request.headers)
    except AuthError as exc:
        _log.warning(
            "operator_refused",
            path=request.url.path,
            client=client_host(request),
            code=exc.code,
            why=exc.message,
        )
        response = error_response(exc.status, exc.code, exc.message)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="voice"'
        return response
    return None


async def read_json_object(request: Request, max_bytes: int = MAX_API_BODY) -> dict[str, Any]:
    """The request's JSON object body (``{}`` when empty); :class:`QueryError` (answered with 400) when it
    is larger than ``max_bytes``, not JSON, or not an object. Reads at most ``max_bytes`` plus one chunk."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise QueryError(f"request body larger than {max_bytes} bytes")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise QueryError(f"request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise QueryError("request body must be a JSON object")
    return data
