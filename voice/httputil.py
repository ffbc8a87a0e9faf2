"""HTTP helpers every route module of the service shares: the error shape, the client address, and the
operator-API check (bearer token from settings; loopback-only when none is set, see :mod:`voice.auth`)."""

from __future__ import annotations

from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from voice.auth import AuthError, check_operator
from voice.config import Settings
from voice.logs import get_logger

_log = get_logger(component="http")


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
