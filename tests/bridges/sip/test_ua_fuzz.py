"""Fuzzing the user agent's receive path: mutated and random datagrams never raise out of the UA, and every
reply it sends is a well-formed SIP response (RFC 3261 §21.4.1: 400 where a reply is possible)."""

from __future__ import annotations

import asyncio
import random

from bridges.sip.message import SipParseError, SipResponse, parse_message
from bridges.sip.settings import SipSettings
from bridges.sip.transport import Peer
from bridges.sip.ua import SipCall, UserAgent

SDP = (
    b"v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\n"
)


def request(method: str, body: bytes = b"", to_tag: str = "") -> bytes:
    head = (
        f"{method} sip:agent@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{method}1;rport\r\n"
        f"From: <sip:x@127.0.0.1:5999>;tag=abc\r\nTo: <sip:agent@127.0.0.1>{to_tag}\r\n"
        f"Call-ID: fuzz-1\r\nCSeq: 1 {method}\r\nContact: <sip:x@127.0.0.1:5999>\r\nMax-Forwards: 70\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


SEEDS = [
    request("INVITE", SDP),
    request("OPTIONS"),
    request("BYE", to_tag=";tag=zzz"),
    request("CANCEL"),
    request("ACK"),
    request("INFO", b"Signal=5\r\n", ";tag=zzz"),
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\nCSeq: 1 BYE\r\n\r\n",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        kind = rng.randrange(5)
        if kind == 0 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif kind == 1 and out:
            del out[rng.randrange(len(out)) :]
        elif kind == 2:
            at = rng.randrange(len(out) + 1)
            out[at:at] = rng.choice([b"\r\n", b":", b";", b" ", b"\x00", b"<", b"%", b"\r\n\r\n", b","])
        elif kind == 3:
            lines = bytes(out).split(b"\r\n")
            if len(lines) > 2:
                del lines[rng.randrange(1, len(lines))]
            out = bytearray(b"\r\n".join(lines))
        else:
            out = bytearray(rng.randbytes(rng.randint(0, 200)))
    return bytes(out)


class NoAnswerApp:
    def admit(self, call: SipCall) -> None:
        return None

    async def answered(self, call: SipCall) -> None:
        return None

    def abandoned(self, call: SipCall) -> None:
        return None


async def test_mutated_datagrams_never_raise_and_replies_parse() -> None:
    ua = UserAgent(
        SipSettings(port=0, rtp_port_min=40000, rtp_port_max=40100), NoAnswerApp(), host="127.0.0.1"
    )
    sent: list[bytes] = []
    ua.transports.send_nowait = lambda data, peer: sent.append(data)  # type: ignore[method-assign]
    rng = random.Random(20261127)
    peer = Peer("udp", "127.0.0.1", 5999)
    for n in range(3000):
        data = mutate(rng, rng.choice(SEEDS))
        try:
            message: object = parse_message(data)
        except SipParseError as exc:
            message = exc
        ua._received(message, peer)  # type: ignore[arg-type]  # raises: the test fails
        if n % 100 == 0:
            await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    for task in list(ua._tasks):
        task.cancel()
    for data in sent:
        reply = parse_message(data)
        assert isinstance(reply, SipResponse) and 100 <= reply.status_code <= 699
    assert any(parse_message(d).status_code == 400 for d in sent)  # type: ignore[union-attr]
    await ua.close()
