"""A UDP impairment proxy for tests: a real datagram relay on 127.0.0.1 between a SIP caller (SIPp) and the
service, which loses, duplicates and reorders SIP and RTP datagrams, each with its own settings, and
counts what it saw (the retransmissions among them).

How the traffic is routed through it:

- **SIP.** The caller is pointed at :attr:`ImpairmentProxy.sip_port` (SIPp sends every request to its
  command-line target). Requests go on to the service from a second socket, and the service answers
  there: its Via carries ``rport`` (RFC 3581), so responses go back to the datagram's source. The
  caller's ``Contact`` is rewritten to that second socket, so requests the service sends inside the dialog
  (a BYE of its own, a re-INVITE) come through the proxy as well.
- **RTP.** Media go where the SDP says, so the proxy rewrites the SDP bodies it relays (the ``m=audio``
  port and ``c=`` address, and ``Content-Length``), like a media relay does: the service is told the
  caller's media are at the proxy's service-side RTP port, the caller that the service's media are at its
  caller-side RTP port. RTCP (port + 1) is relayed beside it without impairment. The service's symmetric
  RTP latches on to the proxy's service-side port, which is the address it was told.

Impairments are deterministic for a seed, whatever the timing: each datagram's fate comes from a random
generator seeded with the seed and the datagram's identity, not from the order datagrams happen to
interleave. A SIP message's identity is its direction, kind (``INVITE``, ``200 INVITE`` ...), CSeq number
and how many copies of it came before (the 1st transmission, the 1st retransmission ...); an RTP packet's
is its direction and its place in its stream (sequence number offset). Reordering holds a datagram back
until ``reorder_depth`` later datagrams in the same direction have been sent on (or ``hold_ms`` passed,
when the stream stops); duplicates are sent twice at once. ``drop_first`` names SIP kinds whose first
transmission is always lost, so that the peers' timers must retransmit them.

One caller at a time: replies go to the last address the caller sent from.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias, cast

__all__ = [
    "Direction",
    "Impairment",
    "ImpairmentProxy",
    "LinkStats",
    "rewrite_contact",
    "rewrite_sdp",
    "sip_kind",
]

Direction: TypeAlias = Literal["to_service", "to_caller"]
Address: TypeAlias = tuple[str, int]


@dataclass(frozen=True)
class Impairment:
    """What happens to the datagrams of one channel (SIP or RTP), in both directions."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    """Chance a datagram is held back behind later ones."""
    reorder_depth: int = 2
    """A held datagram goes out after this many later datagrams in its direction..."""
    hold_ms: float = 150.0
    """... or after this long, whichever comes first."""
    drop_first: frozenset[str] = frozenset()
    """SIP kinds (``INVITE``, ``200 INVITE``, ``BYE``...) whose first transmission is always lost."""


@dataclass
class LinkStats:
    """Counters of one channel in one direction."""

    received: int = 0
    """Datagrams that reached the proxy from a peer."""
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    forwarded: int = 0
    """Datagrams sent on, injected duplicates included."""
    unrouted: int = 0
    """Media datagrams that came before the SDP said where to send them."""


@dataclass
class _Held:
    data: bytes
    send: Callable[[bytes], None]
    remaining: int
    timer: asyncio.TimerHandle | None = None


# SIP message helpers (pure) ---------------------------------------------------------------------------

_CSEQ = re.compile(r"(?im)^(?:cseq)[ \t]*:[ \t]*(\d+)[ \t]+(\S+)")
_CALL_ID = re.compile(r"(?im)^(?:call-id|i)[ \t]*:[ \t]*(\S+)")
_CONTENT_LENGTH = re.compile(rb"(?im)^(content-length|l)[ \t]*:[ \t]*\d+")
_CONTACT = re.compile(rb"(?im)^((?:contact|m)[ \t]*:[^\r\n]*?sips?:(?:[^@>;\s]+@)?)([^:;>\s]+)(:\d+)?")
_M_AUDIO = re.compile(r"(?m)^m=audio (\d+)")
_C_LINE = re.compile(r"(?m)^c=IN IP4 (\S+)")


def sip_kind(data: bytes) -> tuple[str, str] | None:
    """``(kind, identity)`` of a SIP message: ``kind`` is the method of a request or ``"<status> <method>"``
    of a response; ``identity`` adds the Call-ID and CSeq number. None for anything else (keep-alives)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    first = head.split("\r\n", 1)[0]
    cseq = _CSEQ.search(head)
    if cseq is None or not first:
        return None
    call_id = _CALL_ID.search(head)
    if first.startswith("SIP/2.0 "):
        parts = first.split()
        if len(parts) < 2:
            return None
        kind = f"{parts[1]} {cseq.group(2)}"
    else:
        kind = first.split(" ", 1)[0]
    return kind, f"{call_id.group(1) if call_id else '-'}|{cseq.group(1)}|{kind}"


def rewrite_sdp(message: bytes, host: str, port: int) -> tuple[bytes, Address | None]:
    """Point the audio of a SIP message's SDP body at ``host:port``; returns the new message and the address
    the SDP had (None without SDP, or for a hold to ``0.0.0.0``, which is left as it is)."""
    head, sep, body = message.partition(b"\r\n\r\n")
    if not sep or b"m=audio" not in body:
        return message, None
    text = body.decode("latin-1")
    media, address = _M_AUDIO.search(text), _C_LINE.search(text)
    if media is None or address is None or address.group(1) == "0.0.0.0" or media.group(1) == "0":
        return message, None
    original = (address.group(1), int(media.group(1)))
    text = _M_AUDIO.sub(f"m=audio {port}", text, count=1)
    text = _C_LINE.sub(f"c=IN IP4 {host}", text)
    new_body = text.encode("latin-1")
    head = _CONTENT_LENGTH.sub(lambda m: m.group(1) + b": " + str(len(new_body)).encode(), head)
    return head + sep + new_body, original


def rewrite_contact(message: bytes, host: str, port: int) -> bytes:
    """Point a SIP message's ``Contact`` URI at ``host:port`` (user part and parameters kept)."""
    head, sep, body = message.partition(b"\r\n\r\n")
    head = _CONTACT.sub(lambda m: m.group(1) + f"{host}:{port}".encode(), head)
    return head + sep + body


# The proxy ----------------------------------------------------------------------------------------------


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable from a closed peer port
        pass

    def send(self, data: bytes, to: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, to)


class ImpairmentProxy:
    """The relay between one caller and the service at ``service`` (see the module docstring)."""

    def __init__(
        self,
        service: Address,
        *,
        sip: Impairment,
        rtp: Impairment,
        seed: int,
        host: str = "127.0.0.1",
    ) -> None:
        self.service = service
        self.sip = sip
        self.rtp = rtp
        self.seed = seed
        self.host = host
        self.stats: dict[tuple[str, Direction], LinkStats] = {
            (channel, direction): LinkStats()
            for channel in ("sip", "rtp", "rtcp")
            for direction in ("to_service", "to_caller")
        }
        self.sip_copies: Counter[tuple[Direction, str]] = Counter()
        """How many copies of each SIP message (by direction and identity) reached the proxy."""
        self.sip_log: list[tuple[Direction, str, str]] = []
        """``(direction, kind, fate)`` of every SIP datagram in arrival order (fate: sent, dropped...)."""
        self.rtp_forwarded: dict[Direction, list[bytes]] = {"to_service": [], "to_caller": []}
        """The RTP datagrams sent on, in order."""
        self.caller: Address | None = None
        self.caller_media: Address | None = None
        self.service_media: Address | None = None
        self._sockets: dict[str, _Socket] = {}
        self._held: dict[tuple[str, Direction], list[_Held]] = {}
        self._rtp_first: dict[tuple[Direction, int], int] = {}

    # -- set-up --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the SIP sockets (one toward the caller, one toward the service) and an RTP/RTCP pair on each
        side."""
        await self._bind("sip_caller", 0, self._sip_from_caller)
        await self._bind("sip_service", 0, self._sip_from_service)
        await self._bind_pair("caller", self._rtp_from_caller, self._rtcp_from_caller)
        await self._bind_pair("service", self._rtp_from_service, self._rtcp_from_service)

    async def _bind(self, name: str, port: int, handler: Callable[[bytes, Address], None]) -> int:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Socket(handler), local_addr=(self.host, port)
        )
        self._sockets[name] = protocol
        return int(transport.get_extra_info("sockname")[1])

    async def _bind_pair(
        self,
        side: str,
        rtp: Callable[[bytes, Address], None],
        rtcp: Callable[[bytes, Address], None],
    ) -> None:
        """An even RTP port and the odd RTCP port above it (RFC 3550 §11) for one side."""
        for _ in range(50):
            port = await self._bind(f"rtp_{side}", 0, rtp)
            if port % 2 == 0:
                try:
                    await self._bind(f"rtcp_{side}", port + 1, rtcp)
                    return
                except OSError:
                    pass
            self._close_socket(f"rtp_{side}")
        raise OSError("no free even/odd port pair on loopback")

    def _close_socket(self, name: str) -> None:
        protocol = self._sockets.pop(name, None)
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

    def port(self, name: str) -> int:
        protocol = self._sockets[name]
        assert protocol.transport is not None
        return int(protocol.transport.get_extra_info("sockname")[1])

    @property
    def sip_port(self) -> int:
        """Where the caller sends SIP."""
        return self.port("sip_caller")

    def close(self) -> None:
        for held in self._held.values():
            for item in held:
                if item.timer is not None:
                    item.timer.cancel()
        self._held.clear()
        for name in list(self._sockets):
            self._close_socket(name)

    # -- what happened ---------------------------------------------------------------------------------------

    def retransmissions(self, kind: str, direction: Direction | None = None) -> int:
        """Copies beyond the first of the SIP messages of ``kind`` that reached the proxy from the peers
        (the proxy's own duplicates are not counted)."""
        return sum(
            count - 1
            for (d, identity), count in self.sip_copies.items()
            if identity.endswith(f"|{kind}") and (direction is None or d == direction)
        )

    # -- SIP -------------------------------------------------------------------------------------------------

    def _sip_from_caller(self, data: bytes, source: Address) -> None:
        self.caller = source
        data, media = rewrite_sdp(data, self.host, self.port("rtp_service"))
        if media is not None:
            self.caller_media = media
        data = rewrite_contact(data, self.host, self.port("sip_service"))
        self._sip(data, "to_service", lambda d: self._sockets["sip_service"].send(d, self.service))

    def _sip_from_service(self, data: bytes, source: Address) -> None:
        data, media = rewrite_sdp(data, self.host, self.port("rtp_caller"))
        if media is not None:
            self.service_media = media
        caller = self.caller
        if caller is None:
            self.stats["sip", "to_caller"].unrouted += 1
            return
        self._sip(data, "to_caller", lambda d: self._sockets["sip_caller"].send(d, caller))

    def _sip(self, data: bytes, direction: Direction, send: Callable[[bytes], None]) -> None:
        stats = self.stats["sip", direction]
        stats.received += 1
        parsed = sip_kind(data)
        kind, identity = parsed if parsed is not None else ("other", "other")
        copy = self.sip_copies[direction, identity]
        self.sip_copies[direction, identity] += 1
        cseq = identity.split("|")[1] if parsed is not None else "-"
        forced = copy == 0 and kind in self.sip.drop_first
        fate = self._fate(self.sip, f"sip|{direction}|{kind}|{cseq}|{copy}", forced_drop=forced)
        self.sip_log.append((direction, kind, fate))
        self._apply("sip", direction, data, fate, send, self.sip)

    # -- RTP and RTCP ----------------------------------------------------------------------------------------

    def _rtp_from_caller(self, data: bytes, source: Address) -> None:
        self._rtp(data, "to_service", self.service_media, self._sockets["rtp_service"])

    def _rtp_from_service(self, data: bytes, source: Address) -> None:
        self._rtp(data, "to_caller", self.caller_media, self._sockets["rtp_caller"])

    def _rtp(self, data: bytes, direction: Direction, to: Address | None, out: _Socket) -> None:
        stats = self.stats["rtp", direction]
        stats.received += 1
        if to is None or len(data) < 12:
            stats.unrouted += 1
            return
        ssrc = int.from_bytes(data[8:12], "big")
        sequence = int.from_bytes(data[2:4], "big")
        first = self._rtp_first.setdefault((direction, ssrc), sequence)
        fate = self._fate(self.rtp, f"rtp|{direction}|{(sequence - first) & 0xFFFF}")

        def send(d: bytes) -> None:
            self.rtp_forwarded[direction].append(d)
            out.send(d, to)

        self._apply("rtp", direction, data, fate, send, self.rtp)

    def _rtcp_from_caller(self, data: bytes, source: Address) -> None:
        media = self.service_media
        self._rtcp(data, "to_service", None if media is None else (media[0], media[1] + 1), "rtcp_service")

    def _rtcp_from_service(self, data: bytes, source: Address) -> None:
        media = self.caller_media
        self._rtcp(data, "to_caller", None if media is None else (media[0], media[1] + 1), "rtcp_caller")

    def _rtcp(self, data: bytes, direction: Direction, to: Address | None, out: str) -> None:
        stats = self.stats["rtcp", direction]
        stats.received += 1
        if to is None:
            stats.unrouted += 1
            return
        stats.forwarded += 1
        self._sockets[out].send(data, to)

    # -- impairment ------------------------------------------------------------------------------------------

    def _fate(self, impairment: Impairment, identity: str, *, forced_drop: bool = False) -> str:
        draw = random.Random(f"{self.seed}|{identity}")
        lost, duplicated, held = (draw.random() for _ in range(3))
        if forced_drop or lost < impairment.loss:
            return "dropped"
        if held < impairment.reorder:
            return "held"
        if duplicated < impairment.duplicate:
            return "duplicated"
        return "sent"

    def _apply(
        self,
        channel: str,
        direction: Direction,
        data: bytes,
        fate: str,
        send: Callable[[bytes], None],
        impairment: Impairment,
    ) -> None:
        stats = self.stats[channel, direction]
        if fate == "dropped":
            stats.dropped += 1
            return
        if fate == "held":
            stats.reordered += 1
            held = _Held(data, send, impairment.reorder_depth)
            held.timer = asyncio.get_running_loop().call_later(
                impairment.hold_ms / 1000, self._release, channel, direction, held
            )
            self._held.setdefault((channel, direction), []).append(held)
            return
        copies = 2 if fate == "duplicated" else 1
        stats.duplicated += copies - 1
        for _ in range(copies):
            send(data)
            stats.forwarded += 1
        for item in list(self._held.get((channel, direction), [])):
            item.remaining -= 1
            if item.remaining <= 0:
                self._release(channel, direction, item)

    def _release(self, channel: str, direction: Direction, item: _Held) -> None:
        held = self._held.get((channel, direction), [])
        if item not in held:
            return
        held.remove(item)
        if item.timer is not None:
            item.timer.cancel()
        item.send(item.data)
        self.stats[channel, direction].forwarded += 1
