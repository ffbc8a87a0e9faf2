"""Wiring of the SIP user agent into the service: inbound SIP calls become calls of the session manager.

:func:`sip_lifespan` starts the :class:`~bridges.sip.ua.UserAgent` on ``settings.sip.port`` (0 or
``enabled = false``: no SIP; a port already in use is logged as ``sip.unavailable`` and the rest of the
service runs on) for the life of the service app. For each INVITE the UA asks
:class:`SipCalls` for admission before ringing (the manager's :meth:`~voice.manager.SessionManager.admit`:
``busy`` -> 486 Busy Here, ``draining`` -> 503 Service Unavailable, RFC 3261 §21.4.24, §21.5.4), and once
answered wraps the call in a :class:`~bridges.sip.leg.SipLeg` and starts it with the SIP agent's profile.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Final, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bridges.sip.leg import SipLeg, call_metadata
from bridges.sip.message import SipParseError
from bridges.sip.ua import SipCall, SipCallFailed, SipRefusal, UserAgent, parse_target
from voice.config import Settings
from voice.errors import ConfigError
from voice.httputil import error_response as _error
from voice.logs import get_logger
from voice.manager import Admission, CallRefused, SessionManager
from voice.profiles import AgentProfile

__all__ = ["SIP_CALLS_PATH", "SipCalls", "sip_lifespan", "sip_routes"]

SIP_CALLS_PATH: Final = "/api/sip/calls"
_RUNNING: dict[int, SipCalls] = {}

_log = get_logger(component="sip")


class ServiceLike(Protocol):
    settings: Settings
    manager: SessionManager

    def profile(self, name: str) -> AgentProfile: ...


class SipCalls:
    """The UA's application: admission, start and release of inbound SIP calls."""

    def __init__(self, service: ServiceLike) -> None:
        self.service = service
        self.ua: UserAgent | None = None

    def admit(self, call: SipCall) -> None:
        try:
            call.app_data["admission"] = self.service.manager.admit()
        except CallRefused as exc:
            raise SipRefusal(486 if exc.reason == "busy" else 503, exc.message) from None

    async def answered(self, call: SipCall) -> None:
        settings = self.service.settings
        admission: Admission = call.app_data["admission"]
        agent = settings.sip.agent or settings.agent
        try:
            profile = self.service.profile(agent)
            leg = SipLeg(
                call,
                metadata=call_metadata(
                    call.invite, settings.sip.metadata_headers, f"{call.peer.host}:{call.peer.port}"
                ),
            )
            leg.start()
            await self.service.manager.start(leg, profile, admission)
        except BaseException:
            admission.release()
            raise

    async def place(self, target: str, *, agent: str | None = None, from_user: str | None = None) -> str:
        """Call ``target`` out (through the trunk if configured) and run the call once answered; returns the
        call id. Raises :class:`CallRefused` (no slot) or :class:`SipCallFailed` (no answer, refused)."""
        if self.ua is None:
            raise SipCallFailed(503, "SIP is not running")
        settings = self.service.settings
        profile = self.service.profile(agent or settings.sip.agent or settings.agent)
        admission = self.service.manager.admit()
        try:
            call = await self.ua.invite(target, from_user=from_user)
            meta = {"direction": "outbound", "caller": from_user or "voice", "callee": target}
            meta["sip_call_id"] = call.sip_call_id
            leg = SipLeg(call, metadata=meta)
            leg.start()
            await self.service.manager.start(leg, profile, admission)
        except BaseException:
            admission.release()
            raise
        return call.call_id

    def abandoned(self, call: SipCall) -> None:
        admission: Any = call.app_data.get("admission")
        if isinstance(admission, Admission):
            admission.release()


@contextlib.asynccontextmanager
async def sip_lifespan(service: ServiceLike) -> AsyncIterator[UserAgent | None]:
    """Run the SIP user agent for the life of the app (None when SIP is off)."""
    settings = service.settings
    sip = settings.sip
    if not sip.enabled or sip.port == 0:
        yield None
        return
    app = SipCalls(service)
    ua = UserAgent(sip, app, host=sip.bind or settings.host)
    app.ua = ua
    try:
        await ua.start()
    except OSError as exc:  # the port is taken: the rest of the service still runs (browser, Twilio)
        _log.error("sip.unavailable", host=ua.host, port=sip.port, error=str(exc))
        await ua.close()
        yield None
        return
    _RUNNING[id(service)] = app
    _log.info("sip.started", host=ua.host, port=ua.port, transports=sip.transports)
    try:
        yield ua
    finally:
        _RUNNING.pop(id(service), None)
        if service.manager.live():  # end calls politely (BYE) while the transports are still up
            with contextlib.suppress(Exception):
                await service.manager.drain(0)
        await ua.close()


async def place_sip_call(request: Request) -> JSONResponse:
    """``POST /api/sip/calls`` (operator): ``{"to": "sip:...", "agent"?, "from"?}``; 201 once answered with
    ``{"call_id", "status": "answered", "to", "agent"}``; 502 with the SIP status when the call fails."""
    from voice.server import _operator, _service

    refused = _operator(request)
    if refused is not None:
        return refused
    service = _service(request)
    sip = _RUNNING.get(id(service))
    if sip is None:
        return _error(503, "sip_off", "SIP is not running (voice serve --sip-port)")
    try:
        body = json.loads(await request.body() or b"{}")
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        to, agent, from_user = body.get("to"), body.get("agent"), body.get("from")
        if not isinstance(to, str) or not all(isinstance(v, str | None) for v in (agent, from_user)):
            raise ValueError("'to' must be a sip: URI; 'agent' and 'from' strings")
        parse_target(to)
    except (ValueError, SipParseError) as exc:
        return _error(400, "invalid_request", str(exc))
    try:
        call_id = await sip.place(to, agent=agent, from_user=from_user)
    except ConfigError as exc:
        return _error(404, "unknown_agent", str(exc))
    except CallRefused as exc:
        return _error(503, exc.reason, exc.message)
    except SipCallFailed as exc:
        return JSONResponse(
            {"error": {"code": "call_failed", "message": str(exc), "sip_status": exc.status_code}},
            status_code=502,
        )
    return JSONResponse(
        {"call_id": call_id, "status": "answered", "to": to, "agent": agent or service.settings.agent},
        status_code=201,
    )


def sip_routes() -> list[Route]:
    """The SIP operator routes: ``POST /api/sip/calls`` (an outbound SIP call)."""
    return [Route(SIP_CALLS_PATH, place_sip_call, methods=["POST"])]
