"""asyncio transports for SIP (RFC 3261 §18): UDP datagrams and TCP streams, pumping bytes only.

Each received message is parsed by the pure cores (:func:`~bridges.sip.message.parse_message` for a
datagram, :class:`~bridges.sip.message.SipStreamFramer` on a stream) and handed to the user agent with the
:class:`Peer` it came from; a parse error is handed over too (the UA answers 400 when it can, else drops
and logs it). Sending takes bytes and a :class:`Peer`: UDP sends a datagram; TCP writes on the connection
the peer opened or opens one (§18.1.1, §18.2.2: responses go back on the connection the request came on).
A stream that loses its framing is closed (§18.3). Double-CRLF keep-alives are answered with one CRLF
(RFC 5626 §3.5.1).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias, cast

from bridges.sip.message import SipFramingError, SipMessage, SipParseError, SipStreamFramer, parse_message
from voice.logs import get_logger
from voice.readsize import small_reads

__all__ = ["MessageHandler", "Peer", "SipTransports", "TransportName"]

TransportName: TypeAlias = Literal["udp", "tcp"]

_log = get_logger(component="sip_transport")


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from / goes to."""

    transport: TransportName
    host: str
    port: int


MessageHandler: TypeAlias = Callable[[SipMessage | SipParseError, Peer], None]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransports) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        small_reads(transport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        peer = Peer("udp", str(addr[0]), int(addr[1]))
        if not data.strip(b"\r\n"):
            return  # keep-alive (RFC 5626 §4.4.1 uses STUN; a bare CRLF is also common)
        try:
            message: SipMessage | SipParseError = parse_message(data)
        except SipParseError as exc:
            message = exc
        self.owner.dispatch(message, peer)

    def error_received(self, exc: Exception) -> None:
        _log.info("sip.udp_error", error=repr(exc))


class _TcpConnection(asyncio.Protocol):
    def __init__(self, owner: SipTransports) -> None:
        self.owner = owner
        self.framer = SipStreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        small_reads(transport)
        self.transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer("tcp", str(host), int(port))
        self.owner._connections[(self.peer.host, self.peer.port)] = self

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.transport is not None
        before = self.framer.keepalives
        self.framer.feed(data)
        while True:
            try:
                message = self.framer.next_message()
            except SipFramingError as exc:
                self.owner.dispatch(exc, self.peer)
                _log.warning(
                    "sip.tcp_framing_lost", peer=f"{self.peer.host}:{self.peer.port}", error=str(exc)
                )
                self.transport.close()
                return
            except SipParseError as exc:
                self.owner.dispatch(exc, self.peer)
                continue
            if message is None:
                break
            self.owner.dispatch(message, self.peer)
        for _ in range(self.framer.keepalives - before):
            self.transport.write(b"\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.owner._connections.pop((self.peer.host, self.peer.port), None)


class SipTransports:
    """The UA's UDP socket and TCP listener on one address and port (see the module docstring)."""

    def __init__(self, handler: MessageHandler) -> None:
        self.handler = handler
        self._udp: _Udp | None = None
        self._tcp_server: asyncio.Server | None = None
        self._connections: dict[tuple[str, int], _TcpConnection] = {}
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int, transports: list[TransportName]) -> None:
        """Bind UDP and/or TCP on ``host:port``; port 0 picks a port free for both (retrying when the TCP
        side of the UDP port's number is taken)."""
        for attempt in range(20):
            try:
                await self._bind(host, port, transports)
                break
            except OSError:
                await self.close()
                if port != 0 or attempt == 19:
                    raise
        _log.info("sip.listening", host=self.host, port=self.port, transports=transports)

    async def _bind(self, host: str, port: int, transports: list[TransportName]) -> None:
        loop = asyncio.get_running_loop()
        self._udp, self._tcp_server = None, None
        if "udp" in transports:
            _transport, self._udp = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(host, port)
            )
            assert self._udp.transport is not None
            port = int(self._udp.transport.get_extra_info("sockname")[1])
        if "tcp" in transports:
            self._tcp_server = await loop.create_server(lambda: _TcpConnection(self), host, port)
            port = int(self._tcp_server.sockets[0].getsockname()[1])
        self.host, self.port = host, port

    def dispatch(self, message: SipMessage | SipParseError, peer: Peer) -> None:
        try:
            self.handler(message, peer)
        except Exception:  # one bad message never takes the transport down
            _log.exception("sip.handler_failed", peer=f"{peer.host}:{peer.port}")

    async def send(self, data: bytes, peer: Peer) -> None:
        """Send bytes to ``peer`` (TCP: on its connection, opening one if needed). Errors raise OSError."""
        if peer.transport == "udp":
            if self._udp is None or self._udp.transport is None:
                raise OSError("SIP over UDP is not enabled")
            self._udp.transport.sendto(data, (peer.host, peer.port))
            return
        connection = self._connections.get((peer.host, peer.port))
        if connection is None or connection.transport is None or connection.transport.is_closing():
            loop = asyncio.get_running_loop()
            _transport, connection = await loop.create_connection(
                lambda: _TcpConnection(self), peer.host, peer.port
            )
        assert connection.transport is not None
        connection.transport.write(data)

    def send_nowait(self, data: bytes, peer: Peer) -> None:
        """Send without waiting (UDP, or an open TCP connection); otherwise schedule the connect."""
        if peer.transport == "udp" or (peer.host, peer.port) in self._connections:
            try:
                if peer.transport == "udp":
                    if self._udp is None or self._udp.transport is None:
                        raise OSError("SIP over UDP is not enabled")
                    self._udp.transport.sendto(data, (peer.host, peer.port))
                else:
                    connection = self._connections[(peer.host, peer.port)]
                    assert connection.transport is not None
                    connection.transport.write(data)
            except OSError as exc:
                _log.warning("sip.send_failed", peer=f"{peer.host}:{peer.port}", error=str(exc))
            return
        task = asyncio.get_running_loop().create_task(self._send_logged(data, peer))
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)

    async def _send_logged(self, data: bytes, peer: Peer) -> None:
        try:
            await self.send(data, peer)
        except OSError as exc:
            _log.warning("sip.send_failed", peer=f"{peer.host}:{peer.port}", error=str(exc))

    async def close(self) -> None:
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        for connection in list(self._connections.values()):
            if connection.transport is not None:
                connection.transport.close()
        if self._tcp_server is not None:
            self._tcp_server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp_server.wait_closed(), 2.0)


_PENDING: set[asyncio.Task[None]] = set()
