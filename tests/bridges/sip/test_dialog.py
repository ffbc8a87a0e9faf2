"""Dialog state (bridges/sip/dialog.py; RFC 3261 §12, §13.2.2.4)."""

from __future__ import annotations

import pytest

from bridges.sip.dialog import Dialog, DialogId, DialogRequestError
from bridges.sip.message import (
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    make_response,
    parse_message,
    parse_uri,
    parse_via,
)
from bridges.sip.sdp import MediaConfig, build_answer, parse_sdp
from bridges.sip.transaction import (
    InviteServerTransaction,
    NonInviteClientTransaction,
    ResponseReceived,
    TransactionTerminated,
    Transmit,
)
from tests.bridges.sip import vector
from voice.errors import LocalProtocolError, RemoteProtocolError


def req(name: str) -> SipRequest:
    message = parse_message(vector(name))
    assert isinstance(message, SipRequest)
    return message


def resp(name: str) -> SipResponse:
    message = parse_message(vector(name))
    assert isinstance(message, SipResponse)
    return message


INVITE = req("rfc3261_24_2_f1_invite.txt")
INVITE_AT_BOB = req("rfc3261_24_2_f4_invite.txt")
OK = resp("rfc3261_24_2_f9_200.txt")
BYE = req("rfc3261_24_2_f13_bye.txt")

ALICE_VIA = parse_via("SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds9")
BOB_VIA = parse_via("SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKnashds10")


def with_record_route(message: SipResponse, *routes: str) -> SipResponse:
    headers = message.headers
    for route in routes:
        headers = headers.add("Record-Route", route)
    return message.with_headers(headers)


# UAC side (§12.1.2) -------------------------------------------------------------------------------------


def test_uac_dialog_from_the_200() -> None:
    dialog = Dialog.from_uac(INVITE, OK)
    assert dialog.id == DialogId("a84b4c76e66710", "1928301774", "a6c85cf")
    assert dialog.state == "confirmed" and dialog.is_uac
    assert dialog.remote_target == SipUri("192.0.2.4", user="bob")
    assert dialog.local_seq == 314159 and dialog.remote_seq is None
    assert dialog.route_set == () and not dialog.secure
    assert dialog.local_uri.tag is None and dialog.remote_uri.tag is None


def test_uac_ack_for_the_2xx_matches_f12() -> None:
    dialog = Dialog.from_uac(INVITE, OK)
    ack = dialog.ack(INVITE.cseq.number, via=ALICE_VIA)
    f12 = req("rfc3261_24_2_f12_ack.txt")
    assert (ack.method, ack.uri) == (f12.method, f12.uri)
    assert (ack.top_via, ack.from_, ack.to, ack.call_id, ack.cseq) == (
        f12.top_via,
        f12.from_,
        f12.to,
        f12.call_id,
        f12.cseq,
    )
    assert ack.max_forwards == 70 and ack.body == b""
    assert dialog.local_seq == 314159  # an ACK does not use a new sequence number
    with pytest.raises(LocalProtocolError):
        dialog.create_request("ACK", via=ALICE_VIA)


def test_uas_bye_matches_f13_byte_for_byte() -> None:
    dialog = Dialog.from_uas(INVITE_AT_BOB, "a6c85cf")
    assert dialog.id == DialogId("a84b4c76e66710", "a6c85cf", "1928301774")
    assert not dialog.is_uac and dialog.remote_seq == 314159 and dialog.local_seq is None
    dialog.local_seq = 230
    bye = dialog.create_request("BYE", via=BOB_VIA)
    assert bye.to_bytes() == vector("rfc3261_24_2_f13_bye.txt")
    assert dialog.local_seq == 231


def test_alices_dialog_accepts_bobs_bye_and_answers() -> None:
    dialog = Dialog.from_uac(INVITE, OK)
    assert dialog.matches(BYE)
    dialog.receive_request(BYE)
    assert dialog.remote_seq == 231
    ok = make_response(BYE, 200)
    assert ok.to_bytes() == vector("rfc3261_24_2_f14_200.txt")
    dialog.terminate()
    assert dialog.state == "terminated"
    with pytest.raises(LocalProtocolError):
        dialog.create_request("BYE", via=ALICE_VIA)


def test_first_local_request_starts_at_one() -> None:
    dialog = Dialog.from_uas(INVITE_AT_BOB, "a6c85cf")
    assert dialog.create_request("INFO", via=BOB_VIA).cseq.number == 1
    assert dialog.create_request("INFO", via=BOB_VIA).cseq.number == 2


def test_matching() -> None:
    dialog = Dialog.from_uac(INVITE, OK)
    assert dialog.matches(OK)
    assert not dialog.matches(make_response(INVITE, 200, to_tag="other-fork"))
    other_call = BYE.with_headers(BYE.headers.set("Call-ID", "different"))
    assert not dialog.matches(other_call)
    broken = BYE.with_headers(BYE.headers.set("From", "<<<"))
    assert not dialog.matches(broken)


# Routing (§12.2.1.1) -------------------------------------------------------------------------------------


def test_loose_routing_uses_the_reversed_record_route() -> None:
    ok = with_record_route(OK, "<sip:server10.biloxi.com;lr>", "<sip:bigbox3.site3.atlanta.com;lr>")
    dialog = Dialog.from_uac(INVITE, ok)
    assert [str(r.uri) for r in dialog.route_set] == [
        "sip:bigbox3.site3.atlanta.com;lr",
        "sip:server10.biloxi.com;lr",
    ]
    bye = dialog.create_request("BYE", via=ALICE_VIA)
    assert bye.uri == "sip:bob@192.0.2.4"
    assert bye.headers.get_all("Route") == [
        "<sip:bigbox3.site3.atlanta.com;lr>",
        "<sip:server10.biloxi.com;lr>",
    ]
    assert bye.cseq.number == 314160
    # the UAS keeps Record-Route in order
    invite = INVITE_AT_BOB.with_headers(
        INVITE_AT_BOB.headers.add("Record-Route", "<sip:server10.biloxi.com;lr>").add(
            "Record-Route", "<sip:bigbox3.site3.atlanta.com;lr>"
        )
    )
    uas = Dialog.from_uas(invite, "a6c85cf")
    assert [str(r.uri) for r in uas.route_set] == [
        "sip:server10.biloxi.com;lr",
        "sip:bigbox3.site3.atlanta.com;lr",
    ]


def test_strict_routing() -> None:
    ok = with_record_route(OK, "<sip:p2.example.com>", "<sip:p1.example.com;maddr=10.0.0.1;transport=udp>")
    dialog = Dialog.from_uac(INVITE, ok)
    bye = dialog.create_request("BYE", via=ALICE_VIA)
    assert bye.uri == "sip:p1.example.com;transport=udp"  # maddr is not allowed in a Request-URI
    assert bye.headers.get_all("Route") == ["<sip:p2.example.com>", "<sip:bob@192.0.2.4>"]


# What the peer sends (§12.2.2, §12.2.1.2) ----------------------------------------------------------------


def test_out_of_order_request_is_refused_with_500() -> None:
    dialog = Dialog.from_uac(INVITE, OK)
    dialog.receive_request(BYE)
    older = BYE.with_headers(BYE.headers.set("CSeq", "230 INFO"))
    with pytest.raises(DialogRequestError) as caught:
        dialog.receive_request(SipRequest("INFO", BYE.uri, older.headers))
    assert caught.value.status_code == 500
    assert isinstance(caught.value, RemoteProtocolError)
    assert dialog.remote_seq == 231


def test_target_refresh_by_reinvite_and_by_2xx() -> None:
    dialog = Dialog.from_uac(INVITE, OK)
    reinvite = SipRequest(
        "INVITE",
        "sip:alice@pc33.atlanta.com",
        BYE.headers.set("CSeq", "232 INVITE").add("Contact", "<sip:bob@192.0.2.99:5070>"),
    )
    dialog.receive_request(reinvite)
    assert dialog.remote_target == parse_uri("sip:bob@192.0.2.99:5070")
    assert dialog.remote_seq == 232
    # our re-INVITE (hold) answered with a new Contact
    hold = dialog.create_request(
        "INVITE", via=ALICE_VIA, contact=NameAddr(SipUri("pc33.atlanta.com", user="alice")), body=b"v=0\r\n"
    )
    assert hold.contact is not None and hold.content_length == 5
    ok = make_response(hold, 200, headers=[("Contact", "<sip:bob@192.0.2.100>")])
    dialog.receive_response("INVITE", ok)
    assert dialog.remote_target == parse_uri("sip:bob@192.0.2.100")
    with pytest.raises(LocalProtocolError):
        dialog.create_request("UPDATE", via=ALICE_VIA)  # a target refresh needs a Contact


def test_early_dialog_confirmed_by_the_2xx_recomputes_the_route_set() -> None:
    ringing = with_record_route(resp("rfc3261_24_2_f6_180.txt"), "<sip:old.example.com;lr>")
    early = Dialog.from_uac(INVITE, ringing)
    assert str(early.state) == "early" and len(early.route_set) == 1
    ok = with_record_route(OK, "<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>")
    early.receive_response("INVITE", ok)
    assert early.state == "confirmed"
    assert [str(r.uri.host) for r in early.route_set if isinstance(r.uri, SipUri)] == [
        "p2.example.com",
        "p1.example.com",
    ]


def test_failures_end_dialogs() -> None:
    early = Dialog.from_uac(INVITE, resp("rfc3261_24_2_f6_180.txt"))
    early.receive_response("INVITE", make_response(INVITE, 486, to_tag="a6c85cf"))
    assert early.state == "terminated"
    for code in (481, 408):
        dialog = Dialog.from_uac(INVITE, OK)
        dialog.receive_response("INFO", make_response(INVITE, code, to_tag="a6c85cf"))
        assert dialog.state == "terminated"
    dialog = Dialog.from_uac(INVITE, OK)
    dialog.receive_response("INFO", make_response(INVITE, 415, to_tag="a6c85cf"))
    assert dialog.state == "confirmed"


def test_creation_errors() -> None:
    with pytest.raises(SipParseError):
        Dialog.from_uac(INVITE, make_response(INVITE, 100))  # no To tag
    no_contact = INVITE_AT_BOB.with_headers(INVITE_AT_BOB.headers.remove("Contact"))
    with pytest.raises(SipParseError):
        Dialog.from_uas(no_contact, "t")
    untagged = INVITE.with_headers(INVITE.headers.set("From", "<sip:alice@atlanta.com>"))
    with pytest.raises(LocalProtocolError):
        Dialog.from_uac(untagged, OK)


def test_sips_dialogs_are_secure_and_early_without_contact_targets_the_request_uri() -> None:
    sips = SipRequest("INVITE", "sips:bob@biloxi.com", INVITE.headers)
    ringing = make_response(sips, 180, to_tag="x")
    dialog = Dialog.from_uac(sips, ringing)
    assert dialog.secure and dialog.state == "early"
    assert dialog.remote_target == parse_uri("sips:bob@biloxi.com")


def test_inbound_call_through_the_cores() -> None:
    """F4 INVITE in, 200 with an SDP answer out, ACK, then our BYE: the cores composed as the UA will."""
    invite = parse_message(vector("rfc3261_24_2_f4_invite.txt"))
    assert isinstance(invite, SipRequest)
    server = InviteServerTransaction(invite, 0.0)
    dialog = Dialog.from_uas(invite, "a6c85cf")
    answer = build_answer(parse_sdp(invite.body), MediaConfig(address="192.0.2.4", port=3456))
    ok = make_response(
        invite,
        200,
        to_tag=dialog.local_tag,
        headers=[("Contact", "<sip:bob@192.0.2.4>")],
        body=answer.session.to_bytes(),
        content_type="application/sdp",
    )
    (sent,) = server.send_response(ok, 50.0)
    assert isinstance(sent, Transmit)
    on_the_wire = parse_message(sent.message.to_bytes())
    assert isinstance(on_the_wire, SipResponse) and on_the_wire.to.tag == "a6c85cf"
    assert answer.media.codec.name == "PCMU" and answer.media.remote_port == 49172
    ack = parse_message(vector("rfc3261_24_2_f12_ack.txt"))
    assert isinstance(ack, SipRequest) and dialog.matches(ack)
    assert not server.matches(ack)  # the ACK for a 2xx is its own transaction (new branch)
    dialog.receive_request(ack)
    bye = dialog.create_request("BYE", via=BOB_VIA)
    client = NonInviteClientTransaction(bye)
    assert client.start(60_000.0) == [Transmit(bye)]
    events = client.receive_response(make_response(bye, 200), 60_050.0)
    assert isinstance(events[0], ResponseReceived) and events[0].response.status_code == 200
    dialog.terminate()
    assert client.advance(70_000.0) == [TransactionTerminated("done")]
    assert server.advance(70_000.0) == [TransactionTerminated("done")]  # timer L
