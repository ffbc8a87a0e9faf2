"""uvicorn's sans-I/O WebSocket protocol, tuned for media streams (the service's and the engine's sockets).

A media stream carries a small message every 20 ms per call in each direction, so what uvicorn spends per
message is what limits how many calls one process carries. :class:`StreamingWSProtocol` keeps uvicorn's
protocol (handshake, ASGI, keepalive, closing) and changes three things on the per-message path:

- **Flow control with slack.** uvicorn stops reading the socket after every message it queues for the
  application and starts again once the application has taken it: two ``epoll_ctl`` system calls per
  message. Here reading pauses only when :data:`QUEUE_HIGH_WATER` messages wait for the application (it has
  fallen behind by a few hundred ms of audio), and resumes, as before, once it has emptied the queue.
- **A direct parser for the common frame.** Once the connection is open, a final, masked text or binary
  frame (RFC 6455 §5.2) of up to 64 KiB with no extension bits is parsed here, in a few lines, rather than
  by the generic generator-based parser of ``websockets``. Anything else (a control frame, a fragment, a
  larger frame, a negotiated extension) hands the bytes from that frame on to the generic parser, which
  stays in charge until it is back at a frame boundary with nothing buffered; nothing is parsed twice or
  lost, and every error is still the generic parser's (close 1002, 1007, 1009).
- **A direct channel** (:class:`DirectChannel`, in the ASGI scope under :data:`DIRECT_EXTENSION`). An
  application may register a handler that takes text messages synchronously as they arrive, with no queue
  and no task switch in between; it returns ``False`` for a message it wants through the ASGI ``receive``
  after all. Messages go to the handler only while the ASGI queue is empty, so they are never taken out of
  order. It may also write several text messages as frames in one ``transport.write`` without an
  ``await``, when the socket is open and not applying back-pressure (otherwise it says so, and the
  application uses ASGI ``send``, which waits).
"""

from __future__ import annotations

from asyncio import BaseTransport
from collections.abc import Callable
from typing import Any, Final

from mypy_extensions import mypyc_attr
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

from voice.readsize import small_reads

try:
    from websockets.speedups import apply_mask  # the C version
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

__all__ = [
    "DIRECT_EXTENSION",
    "QUEUE_HIGH_WATER",
    "DirectChannel",
    "StreamingWSProtocol",
    "TextHandler",
    "direct_channel",
    "text_frame",
]

QUEUE_HIGH_WATER: Final = 32
"""Messages waiting for the application before the socket stops being read (640 ms of 20 ms frames)."""

DIRECT_EXTENSION: Final = "voice.direct"
"""The ASGI scope extension under which a connection's :class:`DirectChannel` is offered."""

TextHandler = Callable[[str], bool]
"""Takes one text message; ``True`` when it handled it, ``False`` to have it queued for ASGI ``receive``."""

_TEXT_FIN: Final = 0x81
_BINARY_FIN: Final = 0x82
_MASKED: Final = 0x80
_LEN_16: Final = 126
_SHORT_HEADER: Final = 6  # 2 header bytes + 4 mask bytes
_MEDIUM_HEADER: Final = 8  # 2 + 2 length bytes + 4 mask bytes


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame (a server's, RFC 6455 §5.2) carrying ``payload`` (UTF-8)."""
    n = len(payload)
    if n < _LEN_16:
        return bytes((_TEXT_FIN, n)) + payload
    if n < 1 << 16:
        return bytes((_TEXT_FIN, _LEN_16)) + n.to_bytes(2, "big") + payload
    return bytes((_TEXT_FIN, 127)) + n.to_bytes(8, "big") + payload


class DirectChannel:
    """A connection's per-message fast path, offered to the application in its ASGI scope."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: StreamingWSProtocol) -> None:
        self._protocol = protocol

    def on_text(self, handler: TextHandler | None) -> None:
        """Hand text messages to ``handler`` from now on (``None``: back to ASGI ``receive`` only).

        The handler runs inside the protocol's ``data_received``: it must be quick and must not raise (an
        exception is logged and the message counts as handled). Disconnects and binary messages always go
        through ``receive``.
        """
        self._protocol.text_handler = handler

    @property
    def ready(self) -> bool:
        """:meth:`send_texts` would write now (the socket is open and not applying back-pressure)."""
        return self._protocol.open_for_direct_send()

    def send_texts(self, *texts: str) -> bool:
        """Write ``texts`` as text frames in one write, now; ``False`` (nothing written) when the socket is
        closing or closed, or its write buffer is over the high-water mark: use ASGI ``send`` then."""
        protocol = self._protocol
        if not protocol.open_for_direct_send():
            return False
        protocol.transport.write(b"".join([text_frame(text.encode()) for text in texts]))
        return True


def direct_channel(scope: Any) -> DirectChannel | None:
    """The :class:`DirectChannel` of an ASGI WebSocket scope, when the server offers one."""
    extensions = scope.get("extensions") if isinstance(scope, dict) else None
    channel = extensions.get(DIRECT_EXTENSION) if isinstance(extensions, dict) else None
    return channel if isinstance(channel, DirectChannel) else None


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled (voice.native), and still open to subclasses
class StreamingWSProtocol(WebSocketsSansIOProtocol):
    """``WebSocketsSansIOProtocol`` with slack in flow control, a direct frame parser and a direct channel
    (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.text_handler: TextHandler | None = None
        self._direct_parsing = False
        self._pending = bytearray()

    def connection_made(self, transport: BaseTransport) -> None:
        small_reads(transport)
        super().connection_made(transport)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)
        if isinstance(scope, dict):  # the upgrade goes to the application (not refused by websockets)
            scope["extensions"][DIRECT_EXTENSION] = DirectChannel(self)

    # -- receiving --------------------------------------------------------------------------------

    def _generic_parser_idle(self) -> bool:
        """The connection is open with the generic parser at a frame boundary, nothing buffered."""
        conn = self.conn
        return (
            self.handshake_complete
            and not self.close_sent
            and conn.state is State.OPEN
            and not conn.extensions
            and conn.current_size is None
            and conn.parser_exc is None
            and not conn.reader.buffer
        )

    def data_received(self, data: bytes) -> None:
        if not self._direct_parsing:
            if not self._generic_parser_idle():
                super().data_received(data)
                return
            self._direct_parsing = True
        buf = self._pending
        buf += data
        while True:
            size = len(buf)
            if size < 2:
                return
            first = buf[0]
            second = buf[1]
            if (first != _TEXT_FIN and first != _BINARY_FIN) or second < _MASKED:
                break  # not the common frame: the generic parser takes over from here
            length = second & 0x7F
            if length < _LEN_16:
                start = _SHORT_HEADER
            elif length == _LEN_16:
                if size < _MEDIUM_HEADER:
                    return
                length = (buf[2] << 8) | buf[3]
                start = _MEDIUM_HEADER
            else:
                break
            end = start + length
            if size < end:  # (the header too may be incomplete)
                return
            payload = apply_mask(bytes(buf[start:end]), bytes(buf[start - 4 : start]))
            del buf[:end]
            self.curr_msg_data_type = "text" if first == _TEXT_FIN else "bytes"
            self.frames = [payload]
            self.send_receive_event_to_app()
            if self.close_sent or self.disconnected:
                buf.clear()
                return
        rest = bytes(buf)
        buf.clear()
        self._direct_parsing = False
        super().data_received(rest)

    def send_receive_event_to_app(self) -> None:
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            # The app is past `websocket.close`: discard the message (as uvicorn does), so reads stay
            # active until the peer's close reply arrives.
            return
        queue = self.queue
        if self.curr_msg_data_type == "text":
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self.logger.warning("invalid UTF-8 in a text frame; closing with 1007")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
            handler = self.text_handler
            if handler is not None and queue.empty() and self._handled(handler, text):
                return
            queue.put_nowait({"type": "websocket.receive", "text": text})
        else:
            queue.put_nowait({"type": "websocket.receive", "bytes": data})
        if not self.read_paused and queue.qsize() >= QUEUE_HIGH_WATER:
            self.read_paused = True
            self.transport.pause_reading()

    def _handled(self, handler: TextHandler, text: str) -> bool:
        try:
            return handler(text)
        except Exception:
            self.logger.exception("direct text handler failed; the message is dropped")
            return True

    # -- sending ----------------------------------------------------------------------------------

    def open_for_direct_send(self) -> bool:
        """Frames written now would go out in order on an open connection without overfilling it."""
        return (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.initial_response is None
            and self.writable.is_set()
            and self.conn.state is State.OPEN
            and not self.transport.is_closing()
        )
