"""HTTP routes of the WebRTC bridge, mounted in the service app (:func:`voice.server.create_app`).

=====================================  ====================================================================
``GET /webrtc/config?agent=&token=``   the ICE servers the page should use (``{"ice_servers", ...}``)
``POST /webrtc/offer?agent=&token=``   body ``{"sdp", "type": "offer"}`` -> ``{"sdp", "type": "answer",
                                       "call_id"}``
=====================================  ====================================================================

Both check the caller exactly like ``/ws/browser`` (:func:`voice.auth.check_browser`: a signed caller token,
the ``Origin`` allowlist, open mode for loopback pages in development) and answer CORS preflights for allowed
origins (the embeddable widget posts from other sites). Answers to refused requests are JSON
``{"error": {"code", "message"}}``: 400 for a bad or unsupported offer (with the reason), 401/403 for
authentication and origin refusals, 404 for an unknown agent or when WebRTC is off, 503 (``busy`` or
``draining``, with ``Retry-After``) when no call slot is free.

A call slot is reserved (:meth:`voice.manager.SessionManager.admit`) before answering. The call itself starts
when the peer connection connects: no upstream session is opened (and paid for) for a peer that never
connects. A peer that fails or does not connect within ``webrtc.connect_timeout_s`` is closed and its call is
recorded as ended (reason ``connect_timeout``, ``ice_failed``, ``disconnected``) with a transcript note.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Protocol, cast

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridges.webrtc.leg import WebRTCLeg
from bridges.webrtc.settings import WebRTCSettings
from bridges.webrtc.signaling import OfferError, WebRTCGateway, parse_offer
from voice.auth import AuthError, BrowserGrant, check_browser, origin_allowed, spend
from voice.call.transcript import TranscriptEvent
from voice.config import Settings
from voice.errors import ConfigError
from voice.httputil import error_response
from voice.logs import get_logger
from voice.manager import Admission, CallRefused, SessionManager
from voice.profiles import AgentProfile
from voice.store import CallStore

__all__ = ["CONFIG_PATH", "OFFER_PATH", "gateway", "routes", "webrtc_settings"]

OFFER_PATH: Final = "/webrtc/offer"
CONFIG_PATH: Final = "/webrtc/config"
RETRY_AFTER_S: Final = 5

_log = get_logger(component="webrtc_routes")


class _Service(Protocol):
    """What these routes use of :class:`voice.server.Service` (not imported: the server imports us)."""

    settings: Settings
    store: CallStore
    manager: SessionManager
    token_secret: str

    def profile(self, name: str) -> AgentProfile: ...


def _service(request: Request) -> _Service:
    return cast(_Service, request.app.state.service)


def webrtc_settings(settings: Settings) -> WebRTCSettings:
    """``settings.webrtc``, or the defaults when the service settings have no such field."""
    value = getattr(settings, "webrtc", None)
    return value if isinstance(value, WebRTCSettings) else WebRTCSettings()


def gateway(app: Starlette, settings: WebRTCSettings) -> WebRTCGateway:
    """The app's :class:`WebRTCGateway` (created on first use, kept in ``app.state.webrtc_gateway``)."""
    existing = getattr(app.state, "webrtc_gateway", None)
    if isinstance(existing, WebRTCGateway):
        return existing
    created = WebRTCGateway(settings)
    app.state.webrtc_gateway = created
    return created


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    response = error_response(status, code, message)
    response.headers.update(headers or {})
    return response


def _cors(request: Request) -> dict[str, str]:
    """CORS headers for an allowed cross-origin page (none for same-origin or refused origins)."""
    origin = request.headers.get("origin")
    if not origin:
        return {}
    settings = _service(request).settings
    if not origin_allowed(origin, host_header=request.headers.get("host"), allowed=settings.allowed_origins):
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def _preflight(request: Request, methods: str) -> Response:
    headers = _cors(request)
    if not headers:
        return _error(403, "origin_refused", f"origin {request.headers.get('origin')!r} is not allowed")
    headers.update(
        {
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": "content-type",
            "Access-Control-Max-Age": "600",
        }
    )
    return Response(status_code=204, headers=headers)


def _authorize(request: Request, agent: str) -> BrowserGrant:
    service = _service(request)
    settings = service.settings
    return check_browser(
        secret=service.token_secret,
        token=request.query_params.get("token") or None,
        client_host=request.client.host if request.client is not None else None,
        headers=request.headers,
        allowed_origins=settings.allowed_origins,
        open_on_loopback=settings.browser_open_on_loopback,
        agent=agent,
        now=time.time(),
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, reading at most ``limit + 1`` bytes (enough to tell it is too large)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            break
    return bytes(body)


async def webrtc_config(request: Request) -> Response:
    """``GET /webrtc/config``: the ICE servers and policy a page uses for its peer connection."""
    if request.method == "OPTIONS":
        return _preflight(request, "GET, OPTIONS")
    service = _service(request)
    settings = webrtc_settings(service.settings)
    cors = _cors(request)
    if not settings.enabled:
        return _error(404, "webrtc_disabled", "WebRTC calls are not enabled on this service", cors)
    agent = request.query_params.get("agent") or service.settings.agent
    try:
        _authorize(request, agent)
    except AuthError as exc:
        return _error(exc.status, exc.code, exc.message, cors)
    body = {
        "ice_servers": settings.page_ice_servers(),
        "ice_transport_policy": settings.ice_transport_policy,
    }
    return JSONResponse(body, headers={**cors, "Cache-Control": "no-store"})


async def webrtc_offer(request: Request) -> Response:
    """``POST /webrtc/offer``: authorize, check the offer, reserve a slot, answer (see the module docs)."""
    if request.method == "OPTIONS":
        return _preflight(request, "POST, OPTIONS")
    service = _service(request)
    settings = webrtc_settings(service.settings)
    cors = _cors(request)
    client = f"{request.client.host}:{request.client.port}" if request.client is not None else None
    if not settings.enabled:
        return _error(404, "webrtc_disabled", "WebRTC calls are not enabled on this service", cors)
    agent = request.query_params.get("agent") or service.settings.agent
    try:
        grant = _authorize(request, agent)
    except AuthError as exc:
        _log.warning("webrtc_refused", client=client, code=exc.code, why=exc.message)
        return _error(exc.status, exc.code, exc.message, cors)
    try:
        profile = service.profile(agent)
    except ConfigError as exc:
        return _error(404, "unknown_agent", str(exc), cors)
    try:
        offer, summary = parse_offer(
            await _read_body(request, settings.max_offer_bytes), max_bytes=settings.max_offer_bytes
        )
    except OfferError as exc:
        _log.warning("webrtc_bad_offer", client=client, code=exc.code, why=exc.reason)
        return _error(400, exc.code, exc.reason, cors)
    try:
        admission = service.manager.admit()
    except CallRefused as exc:
        headers = {**cors, "Retry-After": str(RETRY_AFTER_S)}
        return _error(503, exc.reason, exc.message, headers)
    try:
        spend(grant, service.store, time.time())  # a caller token starts one call (voice.auth)
    except AuthError as exc:
        admission.release()
        _log.warning("webrtc_refused", client=client, code=exc.code, why=exc.message)
        return _error(exc.status, exc.code, exc.message, cors)
    metadata: dict[str, Any] = {
        "caller": client,
        "auth": grant.mode,
        "offer_codecs": list(summary.audio_codecs),
    }
    for name in ("user-agent", "origin", "x-forwarded-for"):
        value = request.headers.get(name)
        if value:
            metadata[name.replace("-", "_")] = value[:256]
    session = _Session(service, profile, admission, datetime.now(UTC))
    try:
        leg, answer = await gateway(request.app, settings).answer(
            offer, agent=profile.name, run_call=session.run, on_failed=session.failed, metadata=metadata
        )
    except OfferError as exc:
        admission.release()
        _log.warning("webrtc_offer_refused", client=client, code=exc.code, why=exc.reason)
        return _error(400, exc.code, exc.reason, cors)
    except Exception:
        admission.release()
        _log.exception("webrtc_answer_failed", client=client)
        return _error(500, "internal", "the offer could not be answered", cors)
    leg.log.info("webrtc_call_offered", agent=profile.name, client=client, auth=grant.mode)
    return JSONResponse(
        {"type": answer.type, "sdp": answer.sdp, "call_id": leg.call_id},
        headers={**cors, "Cache-Control": "no-store"},
    )


class _Session:
    """The service side of one offer: run the call once connected, or record why it never connected."""

    def __init__(
        self, service: _Service, profile: AgentProfile, admission: Admission, offered: datetime
    ) -> None:
        self.service = service
        self.profile = profile
        self.admission = admission
        self.offered = offered

    async def run(self, leg: WebRTCLeg) -> str:
        """The peer connected: run the call in the session manager (the runner saves the record)."""
        with self.admission:
            try:
                return await self.service.manager.run(leg, self.profile, self.admission)
            except CallRefused as exc:
                await leg.send_error(exc.reason, exc.message)
                self._record(leg, "shutdown" if exc.reason == "draining" else exc.reason, exc.message)
                return exc.reason

    async def failed(self, leg: WebRTCLeg, reason: str) -> None:
        """The peer never connected: release the slot and save an ended call record."""
        self.admission.release()
        self._record(leg, reason, f"the caller's peer connection did not connect ({reason})")

    def _record(self, leg: WebRTCLeg, reason: str, note: str) -> None:
        store = self.service.store
        duration = max(0, int((datetime.now(UTC) - self.offered).total_seconds() * 1000))
        try:
            store.create_call(
                leg.call_id,
                leg=leg.kind,
                caller=leg.metadata.get("caller"),
                agent=self.profile.name,
                model=self.profile.model,
                started_at=self.offered,
                status="ringing",
                metadata=leg.metadata,
            )
            store.add_transcript_event(
                TranscriptEvent(leg.call_id, 0, duration, "system", note, {"reason": reason})
            )
            store.end_call(leg.call_id, reason, duration_ms=duration)
        except Exception as exc:
            leg.log.error("webrtc.record_failed", error=repr(exc))
        else:
            leg.log.info("webrtc.call_not_connected", reason=reason, duration_ms=duration)


def routes() -> list[Route]:
    """The bridge's routes for the service app."""
    return [
        Route(OFFER_PATH, webrtc_offer, methods=["POST", "OPTIONS"]),
        Route(CONFIG_PATH, webrtc_config, methods=["GET", "OPTIONS"]),
    ]
