"""Twilio's REST API for calls: create outbound calls, update live ones (protocols.md §E.5).

:class:`TwilioRest` wraps the official ``twilio`` client (``twilio.rest.Client``): ``create_call`` posts to
``/2010-04-01/Accounts/{AccountSid}/Calls.json`` with inline TwiML that connects the callee to our stream,
status callbacks, optional asynchronous answering-machine detection and a ring timeout;
``update_call`` / ``transfer`` / ``hangup_call`` post to ``…/Calls/{CallSid}.json`` (new TwiML ends the
running ``<Connect><Stream>``, §E.5; ``Status=completed`` hangs up).

Every refusal becomes :class:`~bridges.twilio.errors.TwilioRestError` with Twilio's HTTP status, error code
and message (e.g. 400 / 21211 "The 'To' number … is not a valid phone number"); a network failure becomes one
with ``status=None``. Nothing from the ``twilio`` or ``requests`` packages escapes.

The ``twilio`` client is synchronous (``requests``); the ``async`` methods run it in a worker thread so the
event loop never blocks. ``api_base`` points the client somewhere other than ``https://api.twilio.com``
(tests use a local HTTP server, an operator may use an egress proxy): :class:`_RebasedHttpClient` rewrites the
scheme and host of every request URL and keeps the path and query.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from twilio.base.exceptions import (  # type: ignore[import-untyped, unused-ignore]
    TwilioException,
    TwilioRestException,
    TwilioServiceException,
)
from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped, unused-ignore]
from twilio.rest import Client  # type: ignore[import-untyped, unused-ignore]

from bridges.twilio.errors import TwilioRestError, TwimlError
from bridges.twilio.settings import STATUS_EVENTS, TwilioSettings
from bridges.twilio.twiml import MAX_REST_TWIML, TransferTarget, dial
from voice.logs import get_logger

__all__ = ["CallInfo", "OutboundCallRequest", "TwilioRest"]

_T = TypeVar("_T")

_HTTP_LOGGER: Final = logging.getLogger("bridges.twilio.http")
# The twilio client logs every request and response header at INFO; keep that out of the service log.
_HTTP_LOGGER.setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class OutboundCallRequest:
    """The form fields of an outbound call (§E.5): ``To``, ``From``, ``Twiml``, ``StatusCallback``, …

    ``machine_detection`` (``Enable`` / ``DetectMessageEnd``) turns on answering-machine detection; it runs
    asynchronously (``AsyncAmd=true``) and reports ``AnsweredBy`` to ``amd_callback`` (default: the status
    callback), so the stream starts at once. ``ring_timeout_s`` is Twilio's ``Timeout``.
    """

    to: str
    from_: str
    twiml: str
    status_callback: str | None = None
    status_events: Sequence[str] = field(default=STATUS_EVENTS)
    machine_detection: Literal["Enable", "DetectMessageEnd"] | None = None
    machine_detection_timeout_s: int | None = None
    amd_callback: str | None = None
    ring_timeout_s: int | None = None
    time_limit_s: int | None = None


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What Twilio answered about a call resource."""

    sid: str
    status: str
    to: str | None = None
    from_: str | None = None
    direction: str | None = None
    account_sid: str | None = None

    @classmethod
    def from_instance(cls, instance: Any) -> CallInfo:
        def text(name: str) -> str | None:
            value = getattr(instance, name, None)
            return None if value is None else str(value)

        return cls(
            sid=text("sid") or "",
            status=text("status") or "",
            to=text("to"),
            from_=text("_from") or text("from_"),
            direction=text("direction"),
            account_sid=text("account_sid"),
        )


class _RebasedHttpClient(TwilioHttpClient):  # type: ignore[misc, unused-ignore]
    """The ``twilio`` HTTP client with every request sent to ``api_base`` instead of ``*.twilio.com``."""

    def __init__(self, api_base: str, *, timeout: float | None = None) -> None:
        super().__init__(timeout=timeout, logger=_HTTP_LOGGER)
        parts = urlsplit(api_base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"api_base must be an absolute http(s) URL, got {api_base!r}")
        self._scheme = parts.scheme
        self._netloc = parts.netloc
        self._prefix = parts.path.rstrip("/")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(url)
        rebased = urlunsplit(
            (self._scheme, self._netloc, self._prefix + parts.path, parts.query, parts.fragment)
        )
        return super().request(method, rebased, *args, **kwargs)


def _error(exc: Exception) -> TwilioRestError:
    """Map anything the ``twilio`` client raises to :class:`TwilioRestError` (Twilio's own words kept)."""
    if isinstance(exc, TwilioRestException):
        message = str(exc.msg or "")
        # The client prefixes Twilio's message with "Unable to create record: " and the like; keep Twilio's.
        prefix, sep, rest = message.partition(": ")
        if sep and prefix.startswith("Unable to "):
            message = rest
        code = exc.code if isinstance(exc.code, int) and exc.code != exc.status else None
        return TwilioRestError(
            message or f"HTTP {exc.status}", status=exc.status, code=code, method=exc.method, uri=exc.uri
        )
    if isinstance(exc, TwilioServiceException):
        message = str(exc.detail or exc.title)
        return TwilioRestError(message, status=exc.status, code=exc.code, method=exc.method, uri=exc.uri)
    if isinstance(exc, requests.RequestException):
        return TwilioRestError(f"{type(exc).__name__}: {exc}")
    return TwilioRestError(f"{type(exc).__name__}: {exc}")


class TwilioRest:
    """Calls through Twilio's REST API (see the module docstring).

    ``api_base`` overrides ``https://api.twilio.com`` (scheme, host and an optional path prefix);
    ``timeout_s`` bounds each HTTP request.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_base: str | None = None,
        timeout_s: float = 15.0,
    ) -> None:
        self.account_sid = account_sid
        http_client = (
            _RebasedHttpClient(api_base, timeout=timeout_s)
            if api_base
            else TwilioHttpClient(timeout=timeout_s, logger=_HTTP_LOGGER)
        )
        self.client: Any = Client(account_sid, auth_token, http_client=http_client)
        self._log = get_logger(component="twilio_rest")

    @classmethod
    def from_settings(cls, settings: TwilioSettings) -> TwilioRest:
        """A client from ``TWILIO_ACCOUNT_SID``/``TWILIO_AUTH_TOKEN`` (:class:`ConfigError` when unset)."""
        account_sid, token = settings.require_credentials()
        return cls(account_sid, token, api_base=settings.api_base, timeout_s=settings.rest_timeout_s)

    # Synchronous calls (the CLI uses them directly) --------------------------------------------------------

    def create_call_sync(self, request: OutboundCallRequest) -> CallInfo:
        """Place an outbound call; :class:`TwilioRestError` when Twilio refuses it."""
        _check_twiml(request.twiml)
        kwargs: dict[str, Any] = {"to": request.to, "from_": request.from_, "twiml": request.twiml}
        if request.status_callback:
            kwargs["status_callback"] = request.status_callback
            kwargs["status_callback_method"] = "POST"
            kwargs["status_callback_event"] = list(request.status_events)
        if request.machine_detection:
            kwargs["machine_detection"] = request.machine_detection
            kwargs["async_amd"] = "true"
            amd_callback = request.amd_callback or request.status_callback
            if amd_callback:
                kwargs["async_amd_status_callback"] = amd_callback
                kwargs["async_amd_status_callback_method"] = "POST"
            if request.machine_detection_timeout_s is not None:
                kwargs["machine_detection_timeout"] = request.machine_detection_timeout_s
        if request.ring_timeout_s is not None:
            kwargs["timeout"] = request.ring_timeout_s
        if request.time_limit_s is not None:
            kwargs["time_limit"] = request.time_limit_s
        info = self._call(lambda: self.client.calls.create(**kwargs), "create_call", to=request.to)
        self._log.info("twilio.call_created", call_sid=info.sid, status=info.status, to=request.to)
        return info

    def update_call_sync(
        self,
        call_sid: str,
        *,
        twiml: str | None = None,
        status: Literal["completed", "canceled"] | None = None,
    ) -> CallInfo:
        """Redirect a live call to new TwiML, or end it (``status``)."""
        kwargs: dict[str, Any] = {}
        if twiml is not None:
            _check_twiml(twiml)
            kwargs["twiml"] = twiml
        if status is not None:
            kwargs["status"] = status
        if not kwargs:
            raise ValueError("update_call needs twiml or status")
        return self._call(
            lambda: self.client.calls(call_sid).update(**kwargs), "update_call", call_sid=call_sid
        )

    def _call(self, fn: Callable[[], Any], what: str, **context: Any) -> CallInfo:
        try:
            instance = fn()
        except (TwilioException, requests.RequestException, OSError) as exc:
            error = _error(exc)
            self._log.warning(
                f"twilio.{what}_failed",
                status=error.status,
                code=error.code,
                twilio_message=error.twilio_message,
                **context,
            )
            raise error from None
        return CallInfo.from_instance(instance)

    # Asynchronous calls (the service) ---------------------------------------------------------------------

    async def create_call(self, request: OutboundCallRequest) -> CallInfo:
        return await self._thread(lambda: self.create_call_sync(request))

    async def update_call(
        self,
        call_sid: str,
        *,
        twiml: str | None = None,
        status: Literal["completed", "canceled"] | None = None,
    ) -> CallInfo:
        return await self._thread(lambda: self.update_call_sync(call_sid, twiml=twiml, status=status))

    async def transfer(
        self, call_sid: str, target: str | TransferTarget, *, caller_id: str | None = None
    ) -> CallInfo:
        """Replace the live call's TwiML with ``<Dial>`` to ``target`` (ends the stream, §E.5)."""
        twiml = dial(target, caller_id=caller_id)
        return await self.update_call(call_sid, twiml=twiml)

    async def hangup_call(self, call_sid: str) -> CallInfo:
        """``Status=completed``: end a live call."""
        return await self.update_call(call_sid, status="completed")

    async def _thread(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.to_thread(fn)


def _check_twiml(twiml: str) -> None:
    if len(twiml) > MAX_REST_TWIML:
        raise TwimlError(f"TwiML of {len(twiml)} characters is over the REST limit of {MAX_REST_TWIML}")
