"""The Realtime upstream connection: one WebSocket to OpenAI, Azure OpenAI or the local engine.

A thin asyncio adapter (DESIGN.md "Adapters"): it sends client events as compact JSON text frames and yields
server events parsed by :func:`voice.realtime.events.parse_server_event`. A frame it cannot read is logged
and yielded as :class:`~voice.realtime.events.MalformedServerEvent` or
:class:`~voice.realtime.events.UnknownServerEvent`; it never ends the stream (protocols.md §A.6).

Failures, as :mod:`voice.errors` types:

- HTTP 401/403 on the handshake -> :class:`UpstreamAuthError` with the server's error message when the body
  has one (Azure and OpenAI answer ``{"error": {"message": ...}}``);
- any other HTTP status -> :class:`UpstreamConnectError` with ``status``;
- refused, DNS failure, timeout, not a WebSocket server -> :class:`UpstreamConnectError` (``status=None``);
- the connection closes while in use -> :meth:`RealtimeConnection.recv` and :meth:`~RealtimeConnection.send`
  raise :class:`UpstreamClosedError` with the close code (1006 when the peer vanished without a close
  frame) and reason; ``async for`` simply ends, and :attr:`RealtimeConnection.closed_error` says why.

OpenAI checks the key and the model **after** the WebSocket upgrade: a bad key gets a 101, then an ``error``
event (``invalid_api_key``) and a close with code 3000 in the same millisecond; a bad model or the beta
header gets close code 4000 (live capture of ``wss://api.openai.com/v1/realtime``, see
:meth:`RealtimeConnection.wait_for_session`, which turns those into :class:`UpstreamAuthError` /
:class:`UpstreamConnectError`).

The API key travels only in a header and is never logged; logs show the URL without its query string.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import structlog
from openai.types.realtime import RealtimeErrorEvent, SessionCreatedEvent
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State
from websockets.speedups import apply_mask

from voice.config import Settings
from voice.errors import (
    ConfigError,
    UpstreamAuthError,
    UpstreamClosedError,
    UpstreamConnectError,
)
from voice.jsontext import plain
from voice.logs import get_logger
from voice.readsize import small_reads
from voice.realtime.events import MalformedServerEvent, ServerEvent, UnknownServerEvent, parse_server_event

OPENAI_REALTIME_URL: Final = "wss://api.openai.com/v1/realtime"
"""protocols.md §A.1; GA sends no ``OpenAI-Beta`` header (a beta header is fatal: close 4000)."""

DEFAULT_MAX_SIZE: Final = 16 * 1024 * 1024
"""Largest server message accepted (``conversation.item.retrieved`` carries a whole item's audio)."""

DEFAULT_OPEN_TIMEOUT: Final = 10.0

AUTH_CLOSE_CODE: Final = 3000
"""OpenAI closes with 3000 after an authentication ``error`` (live capture, see the module docstring)."""

AUTH_ERROR_CODES: Final = frozenset({"invalid_api_key", "invalid_authentication", "missing_api_key"})

SEND_NOWAIT_LIMIT: Final = 256 * 1024
"""Above this many bytes waiting in the socket's write buffer, :meth:`RealtimeConnection.send_nowait` declines
(the caller falls back to :meth:`RealtimeConnection.send`, which waits for the buffer to drain)."""

_APPEND_HEAD: Final = '{"type":"input_audio_buffer.append","event_id":"'

_MALFORMED_LOG_FIRST = 20
_MALFORMED_LOG_EVERY = 1000


def safe_url(url: str) -> str:
    """``url`` without query, fragment or credentials, for logs (a custom URL might carry a key)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error_message(body: bytes | None) -> str:
    """The ``error.message`` of a JSON error body, else the start of the body as text."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
    return text.strip()[:300]


def encode_event(event: Mapping[str, Any]) -> str:
    """A client event as compact JSON text.

    ``input_audio_buffer.append`` (one per 20 ms of caller audio, the bulk of what a call sends) is
    formatted directly when its id and base64 audio need no escaping; everything else goes through
    :func:`json.dumps`. Both give the same JSON value.
    """
    if event.get("type") == "input_audio_buffer.append" and len(event) == 3:
        event_id, audio = event.get("event_id"), event.get("audio")
        if isinstance(event_id, str) and isinstance(audio, str) and plain(event_id) and plain(audio):
            return f'{_APPEND_HEAD}{event_id}","audio":"{audio}"}}'
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


class MaskPool:
    """Masking keys for client frames (RFC 6455 §5.3: unpredictable, from a strong source of entropy), drawn
    from one ``os.urandom`` call per 1024 frames instead of one per frame."""

    def __init__(self, keys_per_refill: int = 1024) -> None:
        self._size = 4 * keys_per_refill
        self._pool = b""
        self._at = 0

    def take(self) -> bytes:
        if self._at >= len(self._pool):
            self._pool = os.urandom(self._size)
            self._at = 0
        key = self._pool[self._at : self._at + 4]
        self._at += 4
        return key


def masked_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """One final client frame (RFC 6455 §5.2: ``opcode`` 1 text, 2 binary, 10 pong...) carrying ``payload``
    masked with the 4-byte ``mask``."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    return head + mask + apply_mask(payload, mask)


def _closed_error(exc: ConnectionClosed) -> UpstreamClosedError:
    # The peer's close frame; else the one we sent when we failed the connection (1009 for a message over
    # max_size); else 1006: the connection dropped without any close frame.
    frame = exc.rcvd or exc.sent
    code = frame.code if frame is not None else 1006
    reason = frame.reason if frame is not None else ""
    text = f"upstream closed the connection (code {code}{': ' + reason if reason else ''})"
    return UpstreamClosedError(text, code=code, reason=reason)


class RealtimeConnection:
    """One open Realtime WebSocket. Create it with :meth:`open`; use it as an async context manager.

    ``async for event in conn`` yields :data:`~voice.realtime.events.ServerEvent` values until the
    connection closes. :meth:`send` and :meth:`recv` may be used from different tasks (one sender, one
    receiver), as ``websockets`` allows.
    """

    def __init__(self, ws: ClientConnection, *, url: str, logger: structlog.stdlib.BoundLogger) -> None:
        self._ws = ws
        self.url = url
        """The URL without its query string (safe to log)."""
        self.log = logger
        self.closed_error: UpstreamClosedError | None = None
        """Why the connection ended, once it has (``None`` while it is open or after our own close)."""
        self.unknown_events = 0
        self.malformed_events = 0
        self._unknown_types: set[str] = set()
        self._binary_logged = False
        self._masks = MaskPool()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_size: int | None = DEFAULT_MAX_SIZE,
        open_timeout: float = DEFAULT_OPEN_TIMEOUT,
        logger: structlog.stdlib.BoundLogger | None = None,
        **bind: Any,
    ) -> RealtimeConnection:
        """Connect (the WebSocket handshake only). ``bind`` adds context to the logger (``call_id=...``)."""
        shown = safe_url(url)
        log = (logger or get_logger()).bind(upstream=shown, **bind)
        try:
            host = urlsplit(url).hostname
        except ValueError as exc:
            raise ConfigError(f"invalid upstream URL {shown!r}: {exc}") from None
        try:
            ws = await connect(
                url,
                additional_headers=dict(headers or {}),
                max_size=max_size,
                open_timeout=open_timeout,
                proxy=None if is_loopback(host) else True,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = exc.response.body
            message = _error_message(bytes(body) if body is not None else None)
            detail = f": {message}" if message else ""
            log.warning("realtime.handshake_refused", status=status, detail=message)
            if status in (401, 403):
                raise UpstreamAuthError(
                    f"upstream {shown} refused our credentials (HTTP {status}){detail}", status=status
                ) from None
            raise UpstreamConnectError(
                f"upstream {shown} refused the WebSocket handshake (HTTP {status}){detail}", status=status
            ) from None
        except InvalidURI as exc:
            raise ConfigError(f"invalid upstream URL {shown!r}: {exc}") from None
        except TimeoutError:
            log.warning("realtime.connect_timeout", timeout_s=open_timeout)
            raise UpstreamConnectError(f"timed out after {open_timeout} s connecting to {shown}") from None
        except socket.gaierror as exc:
            log.warning("realtime.connect_failed", error=str(exc))
            raise UpstreamConnectError(f"cannot resolve the host of {shown}: {exc}") from None
        except (OSError, InvalidHandshake) as exc:
            log.warning("realtime.connect_failed", error=str(exc))
            raise UpstreamConnectError(f"cannot connect to {shown}: {exc}") from None
        small_reads(ws.transport)
        log.info("realtime.connected")
        return cls(ws, url=shown, logger=log)

    # ---------------------------------------------------------------------------------------------

    async def send(self, event: Mapping[str, Any]) -> None:
        """Send one client event as a compact JSON text frame; :class:`UpstreamClosedError` if closed."""
        data = encode_event(event)
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            self.closed_error = self.closed_error or _closed_error(exc)
            raise self.closed_error from None

    def send_nowait(self, event: Mapping[str, Any]) -> bool:
        """Send one client event now, without a task switch, when that cannot block: the connection is
        open and less than :data:`SEND_NOWAIT_LIMIT` bytes wait in its write buffer. ``True`` when the frame
        was written to the socket; ``False`` means nothing was sent (use :meth:`send`, which waits for the
        buffer to drain, or raises :class:`UpstreamClosedError`).

        The per-frame path of a call: the awaitable :meth:`send` costs a write lock, a context manager and
        a flow-control check for every 20 ms of audio. Safe alongside :meth:`send` in the same event loop
        (a frame is written whole before either returns; this client never fragments messages).
        """
        ws = self._ws
        if ws.protocol.state is not State.OPEN or ws.transport.get_write_buffer_size() > SEND_NOWAIT_LIMIT:
            return False
        data = encode_event(event).encode()
        if ws.protocol.extensions:  # e.g. permessage-deflate: the protocol object must encode the frame
            ws.protocol.send_text(data)
            ws.send_data()
        else:  # the frame as websockets would write it, with a pooled masking key
            ws.transport.write(masked_frame(1, data, self._masks.take()))
        return True

    async def recv(self) -> ServerEvent:
        """The next server event. Raises :class:`UpstreamClosedError` once the connection has closed."""
        try:
            raw = await self._ws.recv()
        except ConnectionClosed as exc:
            if self.closed_error is None:
                self.closed_error = _closed_error(exc)
                self.log.info("realtime.closed", code=self.closed_error.code, reason=self.closed_error.reason)
            raise self.closed_error from None
        if isinstance(raw, bytes) and not self._binary_logged:
            self._binary_logged = True
            self.log.warning("realtime.binary_frame", size=len(raw))
        event = parse_server_event(raw)
        if isinstance(event, UnknownServerEvent):
            self.unknown_events += 1
            if event.type not in self._unknown_types:
                self._unknown_types.add(event.type)
                self.log.info("realtime.unknown_event", type=event.type, event_id=event.event_id)
        elif isinstance(event, MalformedServerEvent):
            self.malformed_events += 1
            n = self.malformed_events
            if n <= _MALFORMED_LOG_FIRST or n % _MALFORMED_LOG_EVERY == 0:
                self.log.warning("realtime.malformed_event", reason=event.reason, raw=event.raw, count=n)
        return event

    def __aiter__(self) -> AsyncIterator[ServerEvent]:
        return self

    async def __anext__(self) -> ServerEvent:
        try:
            return await self.recv()
        except UpstreamClosedError:
            raise StopAsyncIteration from None

    async def wait_for_session(self, limit_s: float = DEFAULT_OPEN_TIMEOUT) -> SessionCreatedEvent:
        """Read up to ``session.created`` (always the first event, §A.6) and return it.

        Turns OpenAI's post-upgrade refusals into the handshake errors: an ``error`` then a close with code
        3000 (or an auth error code) -> :class:`UpstreamAuthError`; any other close before
        ``session.created`` -> :class:`UpstreamConnectError` (e.g. 4000 ``invalid_model``). Events other than
        ``session.created`` and ``error`` that arrive first are logged and dropped.
        """
        last_error: RealtimeErrorEvent | None = None
        try:
            async with asyncio.timeout(limit_s):
                while True:
                    try:
                        event = await self.recv()
                    except UpstreamClosedError as closed:
                        raise self._refusal(closed, last_error) from None
                    if isinstance(event, SessionCreatedEvent):
                        return event
                    if isinstance(event, RealtimeErrorEvent):
                        last_error = event
                        self.log.warning(
                            "realtime.error_before_session",
                            code=event.error.code,
                            message=event.error.message,
                        )
                    else:
                        self.log.info("realtime.event_before_session", type=getattr(event, "type", None))
        except TimeoutError:
            raise UpstreamConnectError(f"no session.created from {self.url} within {limit_s} s") from None

    def _refusal(self, closed: UpstreamClosedError, error: RealtimeErrorEvent | None) -> UpstreamConnectError:
        message = error.error.message if error is not None else closed.reason
        code = error.error.code if error is not None else None
        text = f"upstream {self.url} ended the session before it started (close {closed.code}): {message}"
        if closed.code == AUTH_CLOSE_CODE or code in AUTH_ERROR_CODES:
            return UpstreamAuthError(text)
        return UpstreamConnectError(text)

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    @property
    def close_reason(self) -> str | None:
        return self._ws.close_reason

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the WebSocket (a close handshake, bounded by ``websockets``' close timeout). Idempotent."""
        await self._ws.close(code, reason)

    async def __aenter__(self) -> RealtimeConnection:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


# --------------------------------------------------------------------------------------------------


def _with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query unless already present."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {k for k, _ in query}
    query += [(k, v) for k, v in params.items() if k not in present]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def upstream_target(settings: Settings, model: str) -> tuple[str, dict[str, str]]:
    """The Realtime WebSocket URL and headers for ``model``, first match wins:

    1. ``settings.upstream_url``: any Realtime-compatible URL (``model=`` is added unless the URL already
       has ``model``, ``call_id`` or ``intent``). ``Authorization: Bearer`` is sent when an OpenAI key is
       configured; a key is never sent over plain ``ws://`` except to a loopback host (:class:`ConfigError`).
    2. ``settings.azure_endpoint``: Azure OpenAI GA,
       ``wss://{resource}.openai.azure.com/openai/v1/realtime?model={deployment}`` with an ``api-key`` header
       (``azure_deployment``, default the model name). The GA URL has ``/openai/v1`` and no ``api-version``;
       the preview shape ``/openai/realtime?api-version=…&deployment=…`` speaks the beta protocol, deprecated
       from 2026-04-30. Sources: learn.microsoft.com/azure/foundry/openai/how-to/realtime-audio-websockets
       ("GA version: wss://my-eastus2-openai-resource.openai.azure.com/openai/v1/realtime?model=
       gpt-realtime-deployment-name") and …/how-to/realtime-audio-preview-api-migration-guide ("Use GA
       endpoint URL format … should contain /openai/v1 and shouldn't contain any API version").

    3. ``settings.openai_api_key``: ``wss://api.openai.com/v1/realtime?model=…`` with
       ``Authorization: Bearer`` and no ``OpenAI-Beta`` header (protocols.md §A.1).
    4. Otherwise the local engine served by this process: ``ws://{host}:{port}/v1/realtime?model=…``
       (``0.0.0.0``/``::`` become loopback), no credentials.
    """
    if not model:
        raise ConfigError("no Realtime model configured")
    openai_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    if settings.upstream_url:
        parts = urlsplit(settings.upstream_url)
        if parts.scheme not in ("ws", "wss"):
            raise ConfigError(
                f"upstream_url must be a ws:// or wss:// URL, not {safe_url(settings.upstream_url)!r}"
            )
        query_keys = {k for k, _ in parse_qsl(parts.query)}
        url = settings.upstream_url
        if not query_keys & {"model", "call_id", "intent"}:
            url = _with_query(url, model=model)
        headers: dict[str, str] = {}
        if openai_key:
            if parts.scheme == "ws" and not is_loopback(parts.hostname):
                raise ConfigError(
                    "refusing to send the OpenAI API key over unencrypted ws:// to "
                    f"{parts.hostname}; use wss:// or unset OPENAI_API_KEY"
                )
            headers["Authorization"] = f"Bearer {openai_key}"
        return url, headers
    if settings.azure_endpoint:
        if settings.azure_api_key is None:
            raise ConfigError("azure_endpoint is set but no Azure key: set AZURE_OPENAI_API_KEY")
        parts = urlsplit(settings.azure_endpoint)
        if not parts.hostname:
            raise ConfigError(
                f"azure_endpoint must be like https://NAME.openai.azure.com, not {settings.azure_endpoint!r}"
            )
        scheme = "ws" if parts.scheme in ("http", "ws") else "wss"
        deployment = settings.azure_deployment or model
        url = f"{scheme}://{parts.netloc}/openai/v1/realtime?model={quote(deployment, safe='')}"
        return url, {"api-key": settings.azure_api_key.get_secret_value()}
    if openai_key:
        return f"{OPENAI_REALTIME_URL}?model={quote(model, safe='')}", {
            "Authorization": f"Bearer {openai_key}"
        }
    host = settings.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"ws://{host}:{settings.port}/v1/realtime?model={quote(model, safe='')}", {}
