"""Starlette glue for the Twilio routes: signature checks on requests and sockets, TwiML answers (§E.1, §E.4).

The routes themselves belong to the service (``voice/server.py``); these helpers keep them to a few lines:

- :func:`verify_webhook` reads the form of ``POST /twilio/voice`` or ``/twilio/status`` (URL-encoded, as
  Twilio sends it; at most :data:`MAX_FORM_BYTES`, read before anything is trusted) and checks its
  ``X-Twilio-Signature`` against the public URL (``VOICE_PUBLIC_URL`` + route path + the raw query string);
- :func:`verify_websocket` checks the Media Streams upgrade against the ``wss://`` stream URL, before
  ``accept`` (refuse with ``websocket.close(1008)``, which answers the upgrade with HTTP 403);
- :func:`twiml_response` and :func:`forbidden` build the answers.

Without ``VOICE_PUBLIC_URL`` the URL the request arrived on is used, which is only right when no proxy sits in
front of the service (local development); behind a proxy set the public URL.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.websockets import WebSocket

from bridges.twilio.settings import STREAM_PATH, TwilioSettings
from bridges.twilio.signature import SignatureCheck, check_webhook, check_websocket, signed_url, stream_url
from voice.logs import get_logger

__all__ = ["MAX_FORM_BYTES", "forbidden", "read_form", "twiml_response", "verify_webhook", "verify_websocket"]

MAX_FORM_BYTES: Final = 64 * 1024
"""Largest webhook body read (Twilio's forms are a few hundred bytes)."""

_log = get_logger(component="twilio_web")


def _public_or_seen(settings: TwilioSettings, path: str, query: str, seen: str) -> str:
    if settings.public_url:
        return signed_url(settings.public_url, path, query)
    return seen


async def verify_webhook(
    request: Request, settings: TwilioSettings, *, path: str | None = None
) -> tuple[SignatureCheck, FormData]:
    """Check a Twilio webhook; returns the check and the form (read once). ``path`` defaults to the request's.

    A refused check is logged (reason, URL, algorithm; never the signature or the token).
    """
    form = await read_form(request)
    route = path or request.url.path
    url = _public_or_seen(settings, route, request.url.query, str(request.url))
    if form is None:
        check = SignatureCheck(False, "too_large", "", url)
        form = FormData()
    else:
        check = check_webhook(
            url,
            form,
            request.headers,
            auth_token=settings.secret_token(),
            shared_key=settings.shared_key(),
        )
    if not check.ok:
        client = request.client.host if request.client else None
        _log.warning(
            "twilio.webhook_refused",
            reason=check.reason,
            url=check.url,
            algorithm=check.algorithm,
            client=client,
            call_sid=str(form.get("CallSid", ""))[:64] or None,
        )
    return check, form


async def read_form(request: Request, max_bytes: int = MAX_FORM_BYTES) -> FormData | None:
    """The URL-encoded body as a multi-dict (repeated keys kept); ``None`` when over ``max_bytes``."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            return None
    pairs: list[tuple[str, str | UploadFile]] = list(
        parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    )
    return FormData(pairs)


def verify_websocket(
    websocket: WebSocket, settings: TwilioSettings, *, path: str = STREAM_PATH
) -> SignatureCheck:
    """Check the Media Streams upgrade request (no body params, §E.4); logs a refusal."""
    seen = str(websocket.url)
    if settings.public_url:
        query = websocket.url.query
        url = stream_url(settings.public_url, path) + (f"?{query}" if query else "")
    else:
        url = seen
    check = check_websocket(
        url, websocket.headers, auth_token=settings.secret_token(), shared_key=settings.shared_key()
    )
    if not check.ok:
        client = websocket.client.host if websocket.client else None
        _log.warning(
            "twilio.stream_refused",
            reason=check.reason,
            url=check.url,
            algorithm=check.algorithm,
            client=client,
        )
    return check


def twiml_response(xml: str, status_code: int = 200) -> Response:
    """An HTTP answer carrying TwiML (``application/xml``)."""
    return Response(xml, status_code=status_code, media_type="application/xml")


def forbidden(check: SignatureCheck) -> Response:
    """HTTP 403 for a request whose signature was refused (the reason, not the details, in the body)."""
    return PlainTextResponse(f"forbidden: {check.reason}\n", status_code=403)
