"""SDP parse/serialize and offer/answer (bridges/sip/sdp.py; RFC 4566, RFC 3264, protocols.md §F.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges.sip.sdp import (
    Attribute,
    Codec,
    Connection,
    MediaConfig,
    MediaDescription,
    NoCommonCodec,
    Origin,
    SdpParseError,
    SessionDescription,
    accept_answer,
    build_answer,
    build_offer,
    parse_sdp,
)
from tests.bridges.sip import vector
from voice.errors import LocalProtocolError, RemoteProtocolError

OURS = MediaConfig(address="198.51.100.7", port=40000, session_id="42", session_version=1)

VECTORS = [
    "sdp_offer_g711_te.txt",
    "sdp_answer_pcmu_te.txt",
    "sdp_offer_hold_c0.txt",
    "sdp_offer_opus_video.txt",
    "sdp_offer_video_audio_sendonly.txt",
]


@pytest.mark.parametrize("name", VECTORS)
def test_vectors_round_trip_byte_for_byte(name: str) -> None:
    data = vector(name)
    session = parse_sdp(data)
    assert session.to_bytes() == data
    assert parse_sdp(data.decode()) == session


def test_offer_fields() -> None:
    offer = parse_sdp(vector("sdp_offer_g711_te.txt"))
    assert offer.origin == Origin("alice", "2890844526", 2890844526, "IN", "IP4", "pc33.atlanta.com")
    assert offer.connection == Connection("192.0.2.101")
    (audio,) = offer.media
    assert (audio.media, audio.port, audio.proto, audio.formats) == (
        "audio",
        49172,
        "RTP/AVP",
        ("0", "8", "101"),
    )
    assert audio.codecs == (
        Codec(0, "PCMU", 8000),
        Codec(8, "PCMA", 8000),
        Codec(101, "telephone-event", 8000, None, "0-16"),
    )
    assert audio.ptime == 20
    assert audio.rtcp_port == 49173
    assert offer.direction_for(audio) == "sendrecv"
    assert audio.attribute("sendrecv") == ""
    assert audio.attribute("nothing") is None


def test_static_payload_types_without_rtpmap() -> None:
    text = (
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 8 0 18 99\r\n"
    )
    (audio,) = parse_sdp(text).media
    # 99 has no rtpmap and is dynamic: not a codec we can know
    assert [(c.payload_type, c.name) for c in audio.codecs] == [(8, "PCMA"), (0, "PCMU"), (18, "G729")]


def test_session_level_direction_and_rtcp_attribute() -> None:
    text = (
        "v=0\no=- 1 1 IN IP4 h\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\na=recvonly\n"
        "m=audio 5000 RTP/AVP 0\na=rtcp:5005 IN IP4 192.0.2.1\n"
    )
    session = parse_sdp(text)
    assert session.direction_for(session.media[0]) == "recvonly"
    assert session.media[0].rtcp_port == 5005


@pytest.mark.parametrize(
    "text",
    [
        "",
        "v=1\r\n",
        "o=- 1 1 IN IP4 h\r\n",
        "v=0\r\ns=-\r\n",  # no o=
        "v=0\r\no=- 1 x IN IP4 h\r\n",
        "v=0\r\no=- 1 1 IN IP4\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IP4\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio x RTP/AVP 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 70000 RTP/AVP 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 5000/x RTP/AVP 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nnot a line\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\na=\r\n",
    ],
)
def test_malformed_descriptions(text: str) -> None:
    with pytest.raises(SdpParseError) as caught:
        parse_sdp(text)
    assert isinstance(caught.value, RemoteProtocolError)
    assert caught.value.status_code == 400


def test_unknown_line_types_are_ignored() -> None:
    session = parse_sdp("v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nx=unknown\r\nt=0 0\r\n")
    assert session.session_name == "-" and session.media == ()


# Offers -------------------------------------------------------------------------------------------------


def test_build_offer_matches_protocols_f3() -> None:
    offer = build_offer(OURS)
    assert str(offer) == (
        "v=0\r\n"
        "o=- 42 1 IN IP4 198.51.100.7\r\n"
        "s=-\r\n"
        "c=IN IP4 198.51.100.7\r\n"
        "t=0 0\r\n"
        "m=audio 40000 RTP/AVP 0 8 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )
    assert parse_sdp(offer.to_bytes()) == offer


def test_offer_ipv6_and_hold() -> None:
    offer = build_offer(MediaConfig(address="2001:db8::7", port=4000, codecs=("PCMA",), direction="sendonly"))
    assert offer.connection == Connection("2001:db8::7", "IN", "IP6")
    assert offer.origin.addrtype == "IP6"
    assert offer.direction_for(offer.media[0]) == "sendonly"
    assert offer.media[0].formats == ("8", "101")


def test_media_config_rejects_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        MediaConfig(address="h", port=1, codecs=("opus",))
    with pytest.raises(LocalProtocolError):
        MediaConfig(address="h", port=1, telephone_event_pt=8)
    with pytest.raises(LocalProtocolError):
        MediaConfig(address="h", port=70000)


# Answers (RFC 3264 §6) ----------------------------------------------------------------------------------


def test_answer_to_a_g711_offer() -> None:
    answer = build_answer(parse_sdp(vector("sdp_offer_g711_te.txt")), OURS)
    (audio,) = answer.session.media
    assert audio.formats == ("0", "101")
    assert audio.port == 40000
    assert audio.attribute_values("fmtp") == ["101 0-16"]
    assert answer.session.direction_for(audio) == "sendrecv"
    media = answer.media
    assert media.codec == Codec(0, "PCMU", 8000)
    assert media.audio_codec == "pcmu"
    assert media.telephone_event is not None and media.telephone_event.payload_type == 101
    assert (media.remote_address, media.remote_port, media.remote_rtcp_port) == ("192.0.2.101", 49172, 49173)
    assert (media.ptime, media.direction, media.sends, media.receives) == (20, "sendrecv", True, True)
    # the answer is a valid description that parses back
    assert parse_sdp(answer.session.to_bytes()) == answer.session


def test_answer_follows_the_offerers_codec_order() -> None:
    answer = build_answer(parse_sdp(vector("sdp_offer_hold_c0.txt")), OURS)
    assert answer.media.codec.name == "PCMA"
    assert answer.media.audio_codec == "pcma"


def test_hold_with_null_connection_is_answered_recvonly() -> None:
    answer = build_answer(parse_sdp(vector("sdp_offer_hold_c0.txt")), OURS)
    assert answer.media.direction == "recvonly"
    assert not answer.media.sends
    assert answer.session.direction_for(answer.session.media[0]) == "recvonly"


@pytest.mark.parametrize(
    ("offered", "ours", "answered"),
    [
        ("sendrecv", "sendrecv", "sendrecv"),
        ("sendonly", "sendrecv", "recvonly"),
        ("recvonly", "sendrecv", "sendonly"),
        ("inactive", "sendrecv", "inactive"),
        ("sendrecv", "sendonly", "sendonly"),
        ("sendonly", "sendonly", "inactive"),
        ("recvonly", "recvonly", "inactive"),
    ],
)
def test_direction_negotiation(offered: str, ours: str, answered: str) -> None:
    text = (
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        f"m=audio 5000 RTP/AVP 0\r\na={offered}\r\n"
    )
    config = MediaConfig(address="198.51.100.7", port=40000, direction=ours)  # type: ignore[arg-type]
    answer = build_answer(parse_sdp(text), config)
    assert answer.media.direction == answered
    assert answer.session.direction_for(answer.session.media[0]) == answered


def test_video_is_rejected_and_audio_accepted_in_place() -> None:
    offer = parse_sdp(vector("sdp_offer_video_audio_sendonly.txt"))
    answer = build_answer(offer, OURS)
    video, audio = answer.session.media
    assert (video.media, video.port, video.formats) == ("video", 0, ("96",))
    assert audio.port == 40000
    assert audio.formats == ("8", "96")  # PCMA (first we support in the offer) + their telephone-event PT
    assert answer.media.media_index == 1
    assert answer.media.ptime == 30
    assert answer.media.direction == "recvonly"  # they only send
    assert answer.media.remote_address == "203.0.113.5"


def test_no_common_codec() -> None:
    with pytest.raises(NoCommonCodec) as caught:
        build_answer(parse_sdp(vector("sdp_offer_opus_video.txt")), OURS)
    assert caught.value.status_code == 488
    assert isinstance(caught.value, RemoteProtocolError)
    only_pcmu = MediaConfig(address="h", port=1, codecs=("PCMU",))
    offer = parse_sdp(
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 5 RTP/AVP 8\r\n"
    )
    with pytest.raises(NoCommonCodec):
        build_answer(offer, only_pcmu)
    with pytest.raises(NoCommonCodec):
        build_answer(SessionDescription(), OURS)


def test_offer_without_connection_address() -> None:
    offer = parse_sdp("v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n")
    with pytest.raises(SdpParseError):
        build_answer(offer, OURS)


def test_telephone_event_only_at_the_codec_rate() -> None:
    text = (
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n"
        "m=audio 5000 RTP/AVP 0 100 101\r\na=rtpmap:100 telephone-event/48000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
    )
    answer = build_answer(parse_sdp(text), OURS)
    assert answer.media.telephone_event is not None
    assert answer.media.telephone_event.payload_type == 101
    no_events = MediaConfig(address="h", port=1, telephone_event=False)
    assert build_answer(parse_sdp(text), no_events).media.telephone_event is None


# Accepting an answer to our offer (RFC 3264 §7) ----------------------------------------------------------


def test_accept_answer() -> None:
    offer = build_offer(OURS)
    answer = parse_sdp(vector("sdp_answer_pcmu_te.txt"))
    media = accept_answer(offer, answer)
    assert media.codec.name == "PCMU" and media.codec.payload_type == 0
    assert media.telephone_event is not None and media.telephone_event.payload_type == 101
    assert (media.remote_address, media.remote_port, media.direction) == ("192.0.2.4", 3456, "sendrecv")


def test_accept_answer_errors() -> None:
    offer = build_offer(OURS)
    with pytest.raises(SdpParseError):
        accept_answer(offer, SessionDescription())
    rejected = SessionDescription(media=(MediaDescription("audio", 0, "RTP/AVP", ("0",)),))
    with pytest.raises(NoCommonCodec):
        accept_answer(offer, rejected)
    other_codec = SessionDescription(
        connection=Connection("192.0.2.9"),
        media=(MediaDescription("audio", 5000, "RTP/AVP", ("18",)),),
    )
    with pytest.raises(NoCommonCodec):
        accept_answer(offer, other_codec)


def test_answer_and_accept_agree() -> None:
    """Our offer answered by our own answerer gives both sides the same codec."""
    caller = MediaConfig(address="192.0.2.1", port=5000, codecs=("PCMA", "PCMU"))
    callee = MediaConfig(address="192.0.2.2", port=6000, codecs=("PCMU", "PCMA"))
    offer = build_offer(caller)
    answer = build_answer(offer, callee)
    negotiated = accept_answer(offer, parse_sdp(answer.session.to_bytes()))
    assert negotiated.codec == answer.media.codec
    assert (negotiated.remote_address, negotiated.remote_port) == ("192.0.2.2", 6000)
    assert (answer.media.remote_address, answer.media.remote_port) == ("192.0.2.1", 5000)


# Property-based round trip -------------------------------------------------------------------------------

WORD = st.from_regex(r"[A-Za-z0-9.\-]{1,10}", fullmatch=True)


@given(
    origin=st.builds(Origin, username=WORD, session_id=st.from_regex(r"[0-9]{1,12}", fullmatch=True)),
    attrs=st.lists(st.builds(Attribute, name=WORD, value=st.none() | WORD), max_size=4),
    media=st.lists(
        st.builds(
            MediaDescription,
            media=st.sampled_from(["audio", "video"]),
            port=st.integers(0, 65535),
            proto=st.sampled_from(["RTP/AVP", "RTP/SAVP"]),
            formats=st.lists(st.integers(0, 127).map(str), min_size=1, max_size=4).map(tuple),
            connection=st.none() | st.builds(Connection, address=WORD),
            attributes=st.lists(st.builds(Attribute, name=WORD, value=st.none() | WORD), max_size=3).map(
                tuple
            ),
        ),
        max_size=3,
    ),
)
def test_description_round_trip(
    origin: Origin, attrs: list[Attribute], media: list[MediaDescription]
) -> None:
    session = SessionDescription(origin=origin, attributes=tuple(attrs), media=tuple(media))
    assert parse_sdp(session.to_bytes()) == session
