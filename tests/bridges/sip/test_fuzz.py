"""Hypothesis fuzz: every SIP/SDP/RTP/RFC 4733/Digest parser raises only its documented errors.

Peer input may only end in a :class:`~voice.errors.RemoteProtocolError` subclass (SipParseError,
SdpParseError, NoCommonCodec, RtpParseError, DigestError, DialogRequestError); anything else (IndexError,
ValueError, UnicodeError, struct.error...) fails the test. Inputs are random bytes and random mutations of
the byte vectors. ``VOICE_FUZZ_EXAMPLES`` raises the number of examples for a longer local run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridges.sip.dialog import Dialog, DialogRequestError
from bridges.sip.digest import DigestError, DigestServer, parse_challenge, parse_credentials, pick_challenge
from bridges.sip.message import (
    Params,
    SipParseError,
    SipRequest,
    SipResponse,
    SipStreamFramer,
    error_response,
    make_response,
    parse_cseq,
    parse_message,
    parse_name_addr,
    parse_name_addr_list,
    parse_uri,
    parse_via,
    split_list,
)
from bridges.sip.rtp import RtpPacket, RtpParseError, RtpReceiverStats, parse_rtcp
from bridges.sip.sdp import MediaConfig, NoCommonCodec, SdpParseError, build_answer, parse_sdp
from bridges.sip.telephone_event import TelephoneEvent, TelephoneEventReceiver
from bridges.sip.transaction import (
    InviteServerTransaction,
    NonInviteServerTransaction,
    server_transaction_key,
)
from tests.bridges.sip import VECTORS, vector

FUZZ_EXAMPLES = int(os.environ.get("VOICE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SIP_VECTORS = sorted(p.name for p in VECTORS.glob("*.txt") if not p.name.startswith("sdp_"))
SDP_VECTORS = sorted(p.name for p in VECTORS.glob("sdp_*.txt"))
RTP_VECTORS = sorted(p.name for p in VECTORS.glob("rtp_*.bin"))
RTCP_VECTORS = sorted(p.name for p in VECTORS.glob("rtcp_*.bin"))
SIP_TOKENS = [
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b'"',
    b"\\",
    b" ",
    b"\t",
    b"@",
    b"sip:",
    b"SIP/2.0",
    b"Via: ",
    b"v: ",
    b"Content-Length: ",
    b"l: 99999999",
    b"CSeq: ",
    b"tag=",
    b"branch=z9hG4bK",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"[",
    b"]",
    "ü".encode(),
]


@st.composite
def mutated(draw: st.DrawFn, names: list[str], tokens: list[bytes]) -> bytes:
    """A vector with a few random edits: flips, deletions, insertions of interesting tokens, truncation."""
    data = bytearray(vector(draw(st.sampled_from(names))))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "duplicate"]))
        if action == "flip":
            data[pos] = draw(st.integers(0, 255))
        elif action == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif action == "insert":
            data[pos:pos] = draw(st.sampled_from(tokens) | st.binary(max_size=8))
        elif action == "truncate":
            del data[pos:]
        else:
            end = pos + draw(st.integers(1, 40))
            data[pos:pos] = data[pos:end]
    return bytes(data)


def only(errors: tuple[type[Exception], ...], call: Callable[[], Any]) -> Any:
    """Run ``call``; return its result, or None if it raised one of ``errors``."""
    try:
        return call()
    except errors:
        return None


def exercise_message(message: SipRequest | SipResponse) -> None:
    """Every accessor and builder on a parsed message: SipParseError at most."""
    accessors: list[Callable[[], object]] = [
        lambda: message.vias,
        lambda: message.top_via,
        lambda: message.from_,
        lambda: message.to,
        lambda: message.call_id,
        lambda: message.cseq,
        lambda: message.contacts,
        lambda: message.record_route,
        lambda: message.route,
        lambda: message.max_forwards,
        lambda: message.content_type,
        lambda: message.content_length,
        message.to_bytes,
    ]
    if isinstance(message, SipRequest):
        accessors += [
            lambda: message.request_uri,
            lambda: make_response(message, 200, to_tag="t").to_bytes(),
            lambda: server_transaction_key(message),
        ]
    for accessor in accessors:
        only((SipParseError,), accessor)
    again = parse_message(message.to_bytes())
    assert again.to_bytes() == message.to_bytes()


def check_sip(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipParseError as error:
        reply = error_response(error)
        if reply is not None:
            assert parse_message(reply.to_bytes()).status_code in (400, 505, 513)  # type: ignore[union-attr]
        return
    exercise_message(message)


# SIP ----------------------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=600))
def test_sip_random_bytes(data: bytes) -> None:
    check_sip(data)


@FUZZ
@given(mutated(SIP_VECTORS, SIP_TOKENS))
def test_sip_mutated_vectors(data: bytes) -> None:
    check_sip(data)


@FUZZ
@given(st.lists(mutated(SIP_VECTORS, SIP_TOKENS), min_size=1, max_size=4), st.integers(1, 200))
def test_sip_stream_framer(messages: list[bytes], chunk: int) -> None:
    stream = b"".join(messages)
    framer = SipStreamFramer()
    for i in range(0, len(stream), chunk):
        framer.feed(stream[i : i + chunk])
        for _ in range(20):
            try:
                message = framer.next_message()
            except SipParseError:
                continue
            if message is None:
                break
            exercise_message(message)


TEXT = st.text(
    alphabet=st.sampled_from([*'sip:@;=<>,"\\ \t[]?&.-_/abcSIP2.0UDP0123456789tagbranch', "\u00fc", "\x00"]),
    max_size=80,
)


@FUZZ
@given(TEXT)
def test_header_parsers(text: str) -> None:
    for parse in (
        parse_uri,
        parse_name_addr,
        parse_name_addr_list,
        parse_via,
        parse_cseq,
        split_list,
        Params.parse,
    ):
        result = only((SipParseError,), lambda parse=parse: parse(text))  # type: ignore[misc]
        if result is not None and parse in (parse_uri, parse_name_addr, parse_via):
            str(result)


# SDP ----------------------------------------------------------------------------------------------------

SDP_TOKENS = [
    b"\r\n",
    b"\n",
    b"=",
    b" ",
    b"/",
    b":",
    b"m=audio ",
    b"a=rtpmap:",
    b"a=fmtp:",
    b"c=IN IP4 0.0.0.0",
    b"a=sendonly",
    b"a=ptime:",
    b"a=rtcp:",
    b"99999",
    b"\xff",
]
OUR_MEDIA = MediaConfig(address="198.51.100.7", port=40000)


def check_sdp(data: bytes) -> None:
    session = only((SdpParseError,), lambda: parse_sdp(data))
    if session is None:
        return
    assert parse_sdp(session.to_bytes()) == session
    for media in session.media:
        media.codecs, media.ptime, media.rtcp_port, session.direction_for(media)
    answer = only((SdpParseError, NoCommonCodec), lambda: build_answer(session, OUR_MEDIA))
    if answer is not None:
        parse_sdp(answer.session.to_bytes())


@FUZZ
@given(st.binary(max_size=400))
def test_sdp_random_bytes(data: bytes) -> None:
    check_sdp(b"v=0\r\n" + data if data[:1] == b"!" else data)


@FUZZ
@given(mutated(SDP_VECTORS, SDP_TOKENS))
def test_sdp_mutated_vectors(data: bytes) -> None:
    check_sdp(data)


# RTP, RTCP, RFC 4733 -------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300) | mutated(RTP_VECTORS, [b"\x00", b"\xff", b"\x80", b"\xa0", b"\x90"]))
def test_rtp_and_telephone_events(data: bytes) -> None:
    packet = only((RtpParseError,), lambda: RtpPacket.parse(data))
    if packet is None:
        return
    assert RtpPacket.parse(packet.serialize()) == packet
    RtpReceiverStats(packet.ssrc).update(packet, 0.0)
    receiver = TelephoneEventReceiver()
    only((RtpParseError,), lambda: receiver.receive(packet, 0.0))
    receiver.poll(1e6)
    only((RtpParseError,), lambda: TelephoneEvent.parse(packet.payload))


@FUZZ
@given(
    st.binary(max_size=300) | mutated(RTCP_VECTORS, [b"\x00", b"\xff", b"\x81", b"\xa0", b"\xc8", b"\xca"])
)
def test_rtcp(data: bytes) -> None:
    packets = only((RtpParseError,), lambda: parse_rtcp(data))
    if packets is not None:
        for packet in packets:
            only((RtpParseError,), lambda packet=packet: parse_rtcp(packet.serialize()))  # type: ignore[misc]


@FUZZ
@given(
    st.lists(
        st.builds(
            RtpPacket,
            payload_type=st.just(101),
            sequence_number=st.integers(0, 65535),
            timestamp=st.integers(0, 2**32 - 1) | st.sampled_from([0, 0xFFFF, 0x1FFFE, 0xFFFFFFFF]),
            ssrc=st.sampled_from([1, 2]),
            payload=st.binary(min_size=3, max_size=5),
        ),
        max_size=30,
    )
)
def test_telephone_event_receiver_sequences(packets: list[RtpPacket]) -> None:
    receiver = TelephoneEventReceiver()
    for i, packet in enumerate(packets):
        only((RtpParseError,), lambda packet=packet, i=i: receiver.receive(packet, 20.0 * i))  # type: ignore[misc]
        receiver.poll(20.0 * i)


# Digest -------------------------------------------------------------------------------------------------

DIGEST_TEXT = st.text(
    alphabet=st.sampled_from(
        list('Digest realm=nonce,"\\ qop=auth-int algorithm=MD5SHA-256 nc=00000001 uri')
    ),
    max_size=120,
)
SERVER = DigestServer("realm", b"0123456789abcdef0123456789abcdef")


@FUZZ
@given(DIGEST_TEXT | st.text(max_size=80))
def test_digest_parsers(text: str) -> None:
    only((DigestError,), lambda: parse_challenge(text))
    only((DigestError,), lambda: pick_challenge([text]))
    credentials = only((DigestError,), lambda: parse_credentials(text))
    if credentials is not None:
        assert SERVER.verify(credentials, method="INVITE", now_s=0.0, password="pw") in (
            "ok",
            "stale",
            "invalid",
        )


# Dialog and server transactions fed with fuzzed requests ---------------------------------------------------


@FUZZ
@given(mutated(["rfc3261_24_2_f13_bye.txt", "rfc3261_24_2_f4_invite.txt"], SIP_TOKENS))
def test_dialog_and_server_transactions(data: bytes) -> None:
    message = only((SipParseError,), lambda: parse_message(data))
    if not isinstance(message, SipRequest):
        return
    invite = parse_message(vector("rfc3261_24_2_f1_invite.txt"))
    ok = parse_message(vector("rfc3261_24_2_f9_200.txt"))
    assert isinstance(invite, SipRequest) and isinstance(ok, SipResponse)
    dialog = Dialog.from_uac(invite, ok)
    if only((SipParseError,), lambda: dialog.matches(message)):
        only((SipParseError, DialogRequestError), lambda: dialog.receive_request(message))
    only((SipParseError,), lambda: Dialog.from_uas(message, "tag"))

    def serve() -> None:
        if message.method == "INVITE":
            InviteServerTransaction(message, 0.0).advance(1e6)
        elif message.method != "ACK":
            NonInviteServerTransaction(message).advance(1e6)

    only((SipParseError,), serve)
