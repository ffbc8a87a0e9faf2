"""SIP message parser, serializer, framer and accessors (bridges/sip/message.py; RFC 3261 §7, §18.3, §20)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridges.sip.message import (
    DEFAULT_LIMITS,
    CSeq,
    Headers,
    NameAddr,
    OtherUri,
    Params,
    SipFramingError,
    SipLimits,
    SipParseError,
    SipRequest,
    SipResponse,
    SipStreamFramer,
    SipUri,
    Via,
    build_request,
    canonical_name,
    error_response,
    make_response,
    parse_cseq,
    parse_message,
    parse_name_addr,
    parse_name_addr_list,
    parse_uri,
    parse_via,
    reason_phrase,
    split_list,
)
from tests.bridges.sip import vector
from voice.errors import LocalProtocolError, RemoteProtocolError

CANONICAL = [
    "rfc3261_24_2_f1_invite.txt",
    "rfc3261_24_2_f4_invite.txt",
    "rfc3261_24_2_f6_180.txt",
    "rfc3261_24_2_f9_200.txt",
    "rfc3261_24_2_f12_ack.txt",
    "rfc3261_24_2_f13_bye.txt",
    "rfc3261_24_2_f14_200.txt",
    "rfc3665_2_1_f1_register.txt",
    "rfc3665_2_1_f2_401.txt",
]

BYE = vector("rfc3261_24_2_f13_bye.txt")


def replace_header(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new, 1)


# Byte vectors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CANONICAL)
def test_canonical_vectors_round_trip_byte_for_byte(name: str) -> None:
    data = vector(name)
    message = parse_message(data)
    assert message.to_bytes() == data
    assert bytes(message) == data
    # and again through the stream framer, split in awkward places
    framer = SipStreamFramer()
    for i in range(0, len(data), 7):
        framer.feed(data[i : i + 7])
    framed = framer.next_message()
    assert framed == message
    assert framer.next_message() is None


def test_f1_invite_accessors() -> None:
    invite = parse_message(vector("rfc3261_24_2_f1_invite.txt"))
    assert isinstance(invite, SipRequest)
    assert invite.method == "INVITE"
    assert invite.request_uri == SipUri("biloxi.com", user="bob")
    via = invite.top_via
    assert (via.transport, via.host, via.port, via.branch) == (
        "UDP",
        "pc33.atlanta.com",
        None,
        "z9hG4bKnashds8",
    )
    assert invite.from_.display_name == "Alice"
    assert invite.from_.tag == "1928301774"
    assert invite.to.tag is None
    assert str(invite.to.uri) == "sip:bob@biloxi.com"
    assert invite.call_id == "a84b4c76e66710"
    assert invite.cseq == CSeq(314159, "INVITE")
    assert invite.contact is not None and str(invite.contact.uri) == "sip:alice@pc33.atlanta.com"
    assert invite.max_forwards == 70
    assert invite.content_type == "application/sdp"
    assert invite.content_length == len(invite.body)
    assert invite.body.startswith(b"v=0\r\n")


def test_f4_invite_has_three_vias_in_order() -> None:
    invite = parse_message(vector("rfc3261_24_2_f4_invite.txt"))
    vias = invite.vias
    assert [v.host for v in vias] == ["server10.biloxi.com", "bigbox3.site3.atlanta.com", "pc33.atlanta.com"]
    assert vias[1].received == "192.0.2.2"
    assert invite.max_forwards == 68


def test_f9_200_response_fields() -> None:
    ok = parse_message(vector("rfc3261_24_2_f9_200.txt"))
    assert isinstance(ok, SipResponse)
    assert (ok.status_code, ok.reason, ok.is_final, ok.is_provisional) == (200, "OK", True, False)
    assert ok.to.tag == "a6c85cf"
    assert len(ok.vias) == 3


# Building responses (§8.2.6) ------------------------------------------------------------------------------


def test_make_response_copies_headers_as_section_8_2_6() -> None:
    invite = parse_message(vector("rfc3261_24_2_f4_invite.txt"))
    assert isinstance(invite, SipRequest)
    ringing = make_response(invite, 180, to_tag="a6c85cf", headers=[("Contact", "<sip:bob@192.0.2.4>")])
    assert ringing.headers.get_all("Via") == invite.headers.get_all("Via")
    assert ringing.headers.get("From") == invite.headers.get("From")
    assert ringing.to.tag == "a6c85cf"
    assert ringing.call_id == invite.call_id
    assert ringing.cseq == invite.cseq
    assert ringing.reason == "Ringing"
    again = parse_message(ringing.to_bytes())
    assert again == ringing


def test_make_response_100_has_no_tag_and_copies_timestamp() -> None:
    invite = parse_message(vector("rfc3261_24_2_f1_invite.txt"))
    assert isinstance(invite, SipRequest)
    invite = invite.with_headers(invite.headers.add("Timestamp", "54"))
    trying = make_response(invite, 100)
    assert trying.to.tag is None
    assert trying.headers.get("Timestamp") == "54"


def test_make_response_keeps_an_existing_to_tag_and_generates_one_when_missing() -> None:
    bye = parse_message(BYE)
    assert isinstance(bye, SipRequest)
    assert make_response(bye, 200).to.tag == "1928301774"
    invite = parse_message(vector("rfc3261_24_2_f1_invite.txt"))
    assert isinstance(invite, SipRequest)
    tag = make_response(invite, 486).to.tag
    assert tag and len(tag) >= 8


def test_make_response_copies_record_route_into_dialog_creating_responses() -> None:
    invite = parse_message(vector("rfc3261_24_2_f1_invite.txt"))
    assert isinstance(invite, SipRequest)
    routed = invite.with_headers(invite.headers.add("Record-Route", "<sip:p1.example.com;lr>"))
    assert make_response(routed, 200, to_tag="x").headers.get("Record-Route") == "<sip:p1.example.com;lr>"
    assert make_response(routed, 486, to_tag="x").headers.get("Record-Route") is None


def test_build_request_serializes_and_parses_back() -> None:
    request = build_request(
        "OPTIONS",
        "sip:carrier.example.com",
        via=Via("UDP", "192.0.2.10", 5060, Params((("branch", "z9hG4bKabc"), ("rport", None)))),
        from_=NameAddr(SipUri("example.com", user="agent"), "Agent", Params((("tag", "t1"),))),
        to=NameAddr(SipUri("carrier.example.com")),
        call_id="c1@192.0.2.10",
        cseq=1,
    )
    data = request.to_bytes()
    assert b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc;rport\r\n" in data
    assert b"Content-Length: 0\r\n\r\n" in data
    parsed = parse_message(data)
    assert parsed == request
    assert parsed.top_via.wants_rport and parsed.top_via.rport is None


def test_serialize_sets_content_length_to_the_body() -> None:
    message = SipResponse(200, "OK", Headers([("Content-Length", "99")]), b"abc")
    assert message.to_bytes().endswith(b"Content-Length: 3\r\n\r\nabc")


def test_header_injection_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        Headers([("Subject", "hi\r\nVia: evil")])
    with pytest.raises(LocalProtocolError):
        Headers().add("Bad Name", "x")
    with pytest.raises(LocalProtocolError):
        SipResponse(200, "OK\r\nX: y").to_bytes()
    with pytest.raises(LocalProtocolError):
        SipResponse(99, "Nope").to_bytes()


# Compact forms, folding, comma lists ---------------------------------------------------------------------


def test_compact_forms_folding_and_comma_joined_via() -> None:
    message = parse_message(vector("compact_folded_lf.txt"))
    assert isinstance(message, SipRequest)
    assert [v.transport for v in message.vias] == ["UDP", "TCP"]
    assert message.vias[0].port == 5060
    assert message.to.display_name == "Bob"
    assert message.from_.display_name == "Alice Liddell"
    assert message.from_.tag == "1928301774"
    assert message.call_id == "a84b4c76e66710@pc33.atlanta.com"
    assert message.contact is not None
    assert message.contact.params.get("expires") == "60"
    assert isinstance(message.contact.uri, SipUri) and message.contact.uri.transport == "tcp"
    assert message.headers.get_list("Supported") == ["100rel", "timer"]
    assert message.content_type == "application/sdp"
    assert message.body == b"abcd"
    # compact names are kept as written; the serialized form uses CRLF and unfolded values
    data = message.to_bytes()
    assert b"\r\nt: Bob <sip:bob@biloxi.com>\r\n" in data
    assert parse_message(data) == message


@pytest.mark.parametrize(
    ("short", "full"),
    [
        ("i", "Call-ID"),
        ("m", "Contact"),
        ("f", "From"),
        ("t", "To"),
        ("v", "Via"),
        ("l", "Content-Length"),
        ("c", "Content-Type"),
        ("k", "Supported"),
        ("s", "Subject"),
        ("e", "Content-Encoding"),
        ("o", "Event"),
        ("r", "Refer-To"),
        ("u", "Allow-Events"),
        ("b", "Referred-By"),
        ("x", "Session-Expires"),
    ],
)
def test_compact_names_resolve(short: str, full: str) -> None:
    assert canonical_name(short) == full
    assert canonical_name(short.upper()) == full
    headers = Headers([(short, "value")])
    assert headers.get(full) == "value"
    assert headers.get(full.upper()) == "value"


def test_canonical_name_of_unknown_and_lower_case_names() -> None:
    assert canonical_name("call-id") == "Call-ID"
    assert canonical_name("www-authenticate") == "WWW-Authenticate"
    assert canonical_name("X-Custom") == "X-Custom"


def test_headers_set_remove_prepend() -> None:
    headers = Headers([("Via", "a"), ("v", "b"), ("To", "t")])
    assert headers.get_all("via") == ["a", "b"]
    assert headers.set("Via", "c").items == (("Via", "c"), ("To", "t"))
    assert headers.remove("VIA").items == (("To", "t"),)
    assert headers.prepend("Via", "z").get("Via") == "z"
    assert "to" in headers and "Contact" not in headers
    assert headers == Headers(list(headers))
    assert hash(headers) == hash(Headers(list(headers)))


def test_split_list_respects_quotes_and_angle_brackets() -> None:
    value = '"Doe, John" <sip:j@x;a=b,c>;q=0.5, <sip:k@y>'
    assert split_list(value) == ['"Doe, John" <sip:j@x;a=b,c>;q=0.5', "<sip:k@y>"]
    with pytest.raises(SipParseError):
        split_list('"unterminated')


# URIs and addresses --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:alice@atlanta.com", SipUri("atlanta.com", user="alice")),
        ("sip:alice:secretword@atlanta.com;transport=tcp", None),
        ("sips:alice@atlanta.com?subject=project%20x&priority=urgent", None),
        ("sip:+1-212-555-1212:1234@gateway.com;user=phone", None),
        ("sips:1212@gateway.com", None),
        ("sip:alice@192.0.2.4", None),
        ("sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com", None),
        ("sip:alice;day=tuesday@atlanta.com", None),
        ("sip:[2001:db8::10]:5070;transport=udp", None),
        ("sip:bob@biloxi.com:5061", SipUri("biloxi.com", user="bob", port=5061)),
    ],
)
def test_rfc3261_19_1_3_uri_examples_round_trip(text: str, expected: SipUri | None) -> None:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    assert str(uri) == text
    if expected is not None:
        assert uri == expected


def test_uri_parts() -> None:
    uri = parse_uri("sip:alice:pw@atlanta.com:5070;transport=TCP;lr?subject=hi")
    assert isinstance(uri, SipUri)
    assert (uri.user, uri.password, uri.host, uri.port) == ("alice", "pw", "atlanta.com", 5070)
    assert uri.transport == "tcp" and uri.loose_route
    assert uri.headers == (("subject", "hi"),)
    assert uri.host_port == "atlanta.com:5070"
    ipv6 = parse_uri("sip:[2001:db8::1]:5060")
    assert isinstance(ipv6, SipUri) and ipv6.host == "[2001:db8::1]" and ipv6.port == 5060


def test_other_uri_schemes_are_kept() -> None:
    uri = parse_uri("tel:+1-201-555-0123")
    assert uri == OtherUri("tel", "+1-201-555-0123")
    assert str(uri) == "tel:+1-201-555-0123"
    address = parse_name_addr("<tel:+12015550123>;tag=abc")
    assert address.tag == "abc"
    with pytest.raises(SipParseError):
        address.sip_uri  # noqa: B018


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip:",
        "nocolon",
        "sip:user@",
        "sip:a@b:99999",
        "sip:a@b:x",
        "sip:a b@c",
        "1sip:x",
        "sip:@host;",
        "sip:h;=x",
    ],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


@pytest.mark.parametrize(
    ("text", "display", "uri", "tag"),
    [
        ("Alice <sip:alice@atlanta.com>;tag=1928301774", "Alice", "sip:alice@atlanta.com", "1928301774"),
        (
            '"A. G. Bell" <sip:agb@bell-telephone.com> ;tag=a48s',
            "A. G. Bell",
            "sip:agb@bell-telephone.com",
            "a48s",
        ),
        (
            "sip:+12125551212@server.phone2net.com;tag=887s",
            None,
            "sip:+12125551212@server.phone2net.com",
            "887s",
        ),
        ("<sip:bob@biloxi.com;transport=udp>", None, "sip:bob@biloxi.com;transport=udp", None),
        ('"\\"Q\\" \\\\ x" <sip:q@x>', '"Q" \\ x', "sip:q@x", None),
        (
            "Anonymous <sip:c8oqz84zk7z@privacy.org>;tag=hyh8",
            "Anonymous",
            "sip:c8oqz84zk7z@privacy.org",
            "hyh8",
        ),
    ],
)
def test_name_addr_forms(text: str, display: str | None, uri: str, tag: str | None) -> None:
    address = parse_name_addr(text)
    assert address.display_name == display
    assert str(address.uri) == uri
    assert address.tag == tag
    assert parse_name_addr(str(address)) == address


def test_addr_spec_parameters_belong_to_the_header() -> None:
    address = parse_name_addr("sip:bob@biloxi.com;tag=x;expires=5")
    assert address.uri == SipUri("biloxi.com", user="bob")
    assert address.params.get("expires") == "5"
    assert str(address.with_tag("y")) == "<sip:bob@biloxi.com>;tag=y;expires=5"


def test_name_addr_list_and_contact_star() -> None:
    routes = parse_name_addr_list("<sip:p1.example.com;lr>, <sip:p2.example.com;lr>")
    assert [str(r.uri) for r in routes] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    message = parse_message(
        replace_header(vector("rfc3665_2_1_f1_register.txt"), b"Contact: <sip:bob@192.0.2.4>", b"Contact: *")
    )
    assert message.contacts == [] and message.contact is None


@pytest.mark.parametrize(
    "text", ['"unterminated <sip:a@b>', '"x" sip:a@b', "Bob <sip:a@b", "<sip:a@b> junk", ""]
)
def test_bad_name_addrs(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_name_addr(text)


# Via and CSeq --------------------------------------------------------------------------------------------


def test_via_parameters() -> None:
    via = parse_via(
        "SIP / 2.0 / tcp  client.biloxi.example.com:5061 ;branch=z9hG4bK74bf9;received=192.0.2.1;rport=5062"
    )
    assert (via.protocol, via.transport, via.host, via.port) == (
        "SIP/2.0",
        "TCP",
        "client.biloxi.example.com",
        5061,
    )
    assert (via.branch, via.received, via.rport, via.wants_rport) == ("z9hG4bK74bf9", "192.0.2.1", 5062, True)
    assert via.sent_by == "client.biloxi.example.com:5061"
    assert parse_via(str(via)) == via
    assert str(via.with_params(via.params.remove("rport").set("received", "x"))).endswith(";received=x")


@pytest.mark.parametrize(
    "text", ["SIP/2.0/UDP", "SIP/2.0 host", "SIP/2.0/UDP host;branch=", "SIP/2.0/UDP h:70000"]
)
def test_bad_vias(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_via(text)


def test_cseq() -> None:
    assert parse_cseq("4711 INVITE") == CSeq(4711, "INVITE")
    assert str(CSeq(1, "BYE")) == "1 BYE"
    for bad in ("INVITE", "x INVITE", "1 2 3", "2147483648 INVITE", "٣ INVITE", "-1 BYE"):
        with pytest.raises(SipParseError):
            parse_cseq(bad)


# Malformed input: documented errors, and replies when possible -------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "detail"),
    [
        (b"Max-Forwards: 70", b"Max-Forwards: many", "Max-Forwards"),
        (b"CSeq: 231 BYE", b"CSeq: 231 INVITE", "does not match"),
        (b"Content-Length: 0", b"Content-Length: 10", "body shorter"),
        (b"Content-Length: 0", b"Content-Length: x", "Content-Length"),
        (b"BYE sip:alice@pc33.atlanta.com", b"BYE sip:alice@pc33.atlanta.com:99999", "port"),
        (b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nBad Header Line\r\n", "malformed header"),
    ],
)
def test_bad_requests_can_get_a_400(old: bytes, new: bytes, detail: str) -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(replace_header(BYE, old, new))
    error = caught.value
    assert isinstance(error, RemoteProtocolError)
    assert detail in error.detail
    assert error.can_reply and error.status_code == 400
    reply = error_response(error, to_tag="t")
    assert reply is not None
    assert reply.status_code == 400 and reply.reason.startswith("Bad Request (")
    assert reply.headers.get("Via") == "SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKnashds10"
    assert reply.call_id == "a84b4c76e66710"
    assert reply.cseq.number == 231
    assert reply.to.tag == "1928301774"  # the request's To already had a tag
    assert parse_message(reply.to_bytes()) == reply


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Call-ID: a84b4c76e66710\r\n", b""),
        (b"CSeq: 231 BYE", b"CSeq: BYE"),
        (b"Via: SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKnashds10", b"Via: nonsense"),
        (b"From: Bob <sip:bob@biloxi.com>;tag=a6c85cf", b"From: <broken"),
        (b"To: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n", b""),
    ],
)
def test_requests_without_parseable_reply_headers_are_dropped(old: bytes, new: bytes) -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(replace_header(BYE, old, new))
    assert not caught.value.can_reply
    assert error_response(caught.value) is None


def test_bad_responses_never_get_a_reply() -> None:
    data = replace_header(vector("rfc3261_24_2_f14_200.txt"), b"CSeq: 231 BYE", b"CSeq: x")
    with pytest.raises(SipParseError) as caught:
        parse_message(data)
    assert not caught.value.can_reply


def test_unsupported_version_gets_505() -> None:
    with pytest.raises(SipParseError) as caught:
        parse_message(replace_header(BYE, b"SIP/2.0\r\n", b"SIP/3.0\r\n"))
    assert caught.value.status_code == 505 and caught.value.can_reply
    reply = error_response(caught.value)
    assert reply is not None and reply.status_code == 505


def test_size_and_header_count_limits() -> None:
    limits = SipLimits(max_message_size=200, max_headers=5)
    with pytest.raises(SipParseError) as caught:
        parse_message(BYE, limits=limits)
    assert caught.value.status_code == 513
    big = replace_header(BYE, b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" + b"X-Pad: y\r\n" * 200)
    with pytest.raises(SipParseError) as caught:
        parse_message(big)
    assert caught.value.status_code == 513
    assert caught.value.can_reply
    assert parse_message(BYE, limits=DEFAULT_LIMITS).method == "BYE"  # type: ignore[union-attr]


def test_datagram_details() -> None:
    # Leading CRLFs are ignored (§7.5); bytes past Content-Length are discarded (§18.3).
    assert parse_message(b"\r\n\r\n" + BYE + b"garbage") == parse_message(BYE)
    # Without Content-Length a datagram's body is the rest of it.
    no_length = replace_header(BYE, b"Content-Length: 0\r\n", b"") + b"hello"
    assert parse_message(no_length).body == b"hello"
    for bad in (b"", b"\r\n", b"INVITE", b"SIP/2.0 200 OK\r\n", BYE.replace(b"\r\n\r\n", b"\r\n")):
        with pytest.raises(SipParseError):
            parse_message(bad)


def test_status_line_without_reason_phrase() -> None:
    data = replace_header(vector("rfc3261_24_2_f14_200.txt"), b"SIP/2.0 200 OK", b"SIP/2.0 200")
    response = parse_message(data)
    assert isinstance(response, SipResponse) and response.reason == ""


def test_reason_phrases() -> None:
    assert reason_phrase(488) == "Not Acceptable Here"
    assert reason_phrase(299) == "OK"
    assert reason_phrase(499) == "Client Error"


# Stream framing (§18.3) ----------------------------------------------------------------------------------


def test_framer_pipelining_partial_reads_and_keepalives() -> None:
    messages = [vector(name) for name in CANONICAL]
    stream = b"\r\n\r\n".join(messages)  # keep-alive pings between messages
    for step in (1, 3, 64, len(stream)):
        framer = SipStreamFramer()
        got = []
        for i in range(0, len(stream), step):
            framer.feed(stream[i : i + step])
            while (message := framer.next_message()) is not None:
                got.append(message.to_bytes())
        assert got == messages
        assert framer.keepalives == len(messages) - 1
        assert framer.buffered == 0


def test_framer_missing_content_length_reads_as_empty_body() -> None:
    framer = SipStreamFramer()
    framer.feed(replace_header(BYE, b"Content-Length: 0\r\n", b"") + BYE)
    first = framer.next_message()
    assert first is not None and first.body == b""
    assert framer.next_message() == parse_message(BYE)


def test_framer_waits_for_the_body() -> None:
    invite = vector("rfc3261_24_2_f1_invite.txt")
    framer = SipStreamFramer()
    framer.feed(invite[:-10])
    assert framer.next_message() is None
    framer.feed(invite[-10:])
    assert framer.next_message() == parse_message(invite)


def test_framer_bad_message_is_consumed_and_the_stream_goes_on() -> None:
    bad = replace_header(BYE, b"Max-Forwards: 70", b"Max-Forwards: x")
    framer = SipStreamFramer()
    framer.feed(bad + BYE)
    with pytest.raises(SipParseError) as caught:
        framer.next_message()
    assert caught.value.can_reply and not isinstance(caught.value, SipFramingError)
    assert framer.next_message() == parse_message(BYE)


def test_framer_bad_content_length_breaks_the_stream() -> None:
    framer = SipStreamFramer()
    framer.feed(replace_header(BYE, b"Content-Length: 0", b"Content-Length: -1") + BYE)
    with pytest.raises(SipFramingError) as caught:
        framer.next_message()
    assert caught.value.can_reply
    with pytest.raises(SipFramingError):
        framer.next_message()
    framer.feed(BYE)
    with pytest.raises(SipFramingError):
        framer.next_message()


def test_framer_refuses_oversized_messages() -> None:
    framer = SipStreamFramer(SipLimits(max_message_size=1000))
    framer.feed(replace_header(BYE, b"Content-Length: 0", b"Content-Length: 5000"))
    with pytest.raises(SipFramingError) as caught:
        framer.next_message()
    assert caught.value.status_code == 513
    endless = SipStreamFramer(SipLimits(max_message_size=1000))
    endless.feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 200)
    with pytest.raises(SipFramingError):
        endless.next_message()


def test_framer_single_crlf_pong_is_skipped() -> None:
    framer = SipStreamFramer()
    framer.feed(b"\r\n")
    assert framer.next_message() is None
    framer.feed(BYE)
    assert framer.next_message() == parse_message(BYE)
    assert framer.keepalives == 0


# Property-based round trips -------------------------------------------------------------------------------

TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
HOST = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,3}", fullmatch=True)
PORT = st.none() | st.integers(1, 65535)
PARAMS = st.lists(st.tuples(TOKEN, st.none() | TOKEN), max_size=3, unique_by=lambda p: p[0].lower()).map(
    lambda items: Params(tuple(items))
)
USER = st.from_regex(r"[a-zA-Z0-9+._-]{1,12}", fullmatch=True)
SIP_URIS = st.builds(
    SipUri,
    host=HOST,
    user=st.none() | USER,
    port=PORT,
    scheme=st.sampled_from(["sip", "sips"]),
    params=PARAMS,
)
DISPLAY = st.none() | st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=20
).map(lambda s: " ".join(s.split()) or None)


@given(SIP_URIS)
def test_uri_round_trip(uri: SipUri) -> None:
    assert parse_uri(str(uri)) == uri


@given(st.builds(NameAddr, uri=SIP_URIS, display_name=DISPLAY, params=PARAMS))
def test_name_addr_round_trip(address: NameAddr) -> None:
    parsed = parse_name_addr(str(address))
    assert parsed == address


@given(
    st.builds(
        Via, transport=st.sampled_from(["UDP", "TCP", "TLS", "WS"]), host=HOST, port=PORT, params=PARAMS
    )
)
def test_via_round_trip(via: Via) -> None:
    if "branch" in via.params and not via.branch:
        return
    assert parse_via(str(via)) == via


@settings(max_examples=200)
@given(
    method=st.sampled_from(["INVITE", "BYE", "OPTIONS", "REGISTER", "INFO", "X-CUSTOM"]),
    extra=st.lists(
        st.tuples(
            st.from_regex(r"X-[A-Za-z0-9]{1,10}", fullmatch=True),
            st.text(
                alphabet=st.characters(
                    min_codepoint=33, max_codepoint=0x10FFFF, exclude_categories=["Cs", "Cc"]
                ),
                max_size=30,
            ),
        ),
        max_size=5,
    ),
    body=st.binary(max_size=200),
    cseq=st.integers(0, 2**31 - 1),
)
def test_request_round_trip(method: str, extra: list[tuple[str, str]], body: bytes, cseq: int) -> None:
    request = build_request(
        method,
        "sip:bob@biloxi.com",
        via=Via("UDP", "pc33.atlanta.com", None, Params((("branch", "z9hG4bK1"),))),
        from_=NameAddr(SipUri("atlanta.com", user="alice"), "Alice", Params((("tag", "1"),))),
        to=NameAddr(SipUri("biloxi.com", user="bob")),
        call_id="abc",
        cseq=cseq,
        headers=[(name, value.strip()) for name, value in extra],
        body=body,
    )
    data = request.to_bytes()
    parsed = parse_message(data)
    assert parsed.to_bytes() == data
    assert parsed.body == body
    assert parsed.cseq == CSeq(cseq, method)
    framer = SipStreamFramer()
    framer.feed(data + data)
    assert framer.next_message() == parsed
    assert framer.next_message() == parsed
