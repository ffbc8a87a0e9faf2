"""SIP transaction state machines and timers (bridges/sip/transaction.py; RFC 3261 §17, RFC 6026)."""

from __future__ import annotations

import pytest

from bridges.sip.message import SipRequest, SipResponse, make_response, parse_message
from bridges.sip.transaction import (
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ResponseReceived,
    TimerConfig,
    TransactionEvent,
    TransactionTerminated,
    TransactionTimeout,
    Transmit,
    build_ack_for_non2xx,
    build_cancel,
    client_transaction_key,
    server_transaction_key,
)
from tests.bridges.sip import vector
from voice.errors import LocalProtocolError


def request(name: str) -> SipRequest:
    message = parse_message(vector(name))
    assert isinstance(message, SipRequest)
    return message


INVITE = request("rfc3261_24_2_f1_invite.txt")
INVITE_AT_BOB = request("rfc3261_24_2_f4_invite.txt")
BYE = request("rfc3261_24_2_f13_bye.txt")


def transmitted(events: list[TransactionEvent]) -> list[Transmit]:
    return [e for e in events if isinstance(e, Transmit)]


def run_until(transaction: InviteClientTransaction | NonInviteClientTransaction, end: float) -> list[float]:
    """Times of the retransmissions up to ``end`` (advancing to each deadline in turn)."""
    times: list[float] = []
    while (deadline := transaction.next_deadline) is not None and deadline <= end:
        events = transaction.advance(deadline)
        times += [deadline for e in transmitted(events) if e.retransmission]
    return times


# INVITE client (§17.1.1) ---------------------------------------------------------------------------------


def test_invite_client_retransmits_with_timer_a_and_times_out_with_b() -> None:
    tx = InviteClientTransaction(INVITE)
    assert tx.start(0.0) == [Transmit(INVITE)]
    assert tx.state == "calling" and tx.next_deadline == 500
    assert run_until(tx, 31_999) == [500, 1500, 3500, 7500, 15500, 31500]
    events = tx.advance(32_000)
    assert events == [TransactionTimeout("B"), TransactionTerminated("timeout")]
    assert tx.terminated and tx.next_deadline is None
    assert tx.advance(1e9) == []


def test_late_advance_catches_up_in_order() -> None:
    tx = InviteClientTransaction(INVITE)
    tx.start(0.0)
    events = tx.advance(40_000)
    assert [e.retransmission for e in transmitted(events)] == [True] * 6
    assert events[-2:] == [TransactionTimeout("B"), TransactionTerminated("timeout")]


def test_invite_client_provisional_then_failure() -> None:
    tx = InviteClientTransaction(INVITE)
    tx.start(0.0)
    ringing = make_response(INVITE, 180, to_tag="a6c85cf")
    assert tx.matches(ringing)
    assert tx.receive_response(ringing, 100.0) == [ResponseReceived(ringing)]
    assert str(tx.state) == "proceeding" and tx.next_deadline is None  # no retransmission, no timer B
    busy = make_response(INVITE, 486, to_tag="a6c85cf")
    events = tx.receive_response(busy, 2000.0)
    ack = build_ack_for_non2xx(INVITE, busy)
    assert events == [Transmit(ack), ResponseReceived(busy)]
    assert tx.state == "completed" and tx.ack == ack
    # a retransmitted 486 is answered with the ACK again and not passed up
    assert tx.receive_response(busy, 2500.0) == [Transmit(ack, retransmission=True)]
    assert tx.receive_response(ringing, 2600.0) == []  # absorbed
    assert tx.next_deadline == 2000 + 32_000
    assert tx.advance(34_000) == [TransactionTerminated("done")]


def test_ack_for_a_failure_has_the_fields_of_17_1_1_3() -> None:
    routed = INVITE.with_headers(INVITE.headers.add("Route", "<sip:p1.example.com;lr>"))
    busy = make_response(routed, 486, to_tag="xyz")
    ack = build_ack_for_non2xx(routed, busy)
    assert ack.method == "ACK" and ack.uri == INVITE.uri
    assert ack.top_via == INVITE.top_via and len(ack.vias) == 1
    assert ack.cseq.number == INVITE.cseq.number and ack.cseq.method == "ACK"
    assert ack.to.tag == "xyz" and ack.from_ == INVITE.from_ and ack.call_id == INVITE.call_id
    assert ack.headers.get("Route") == "<sip:p1.example.com;lr>"
    assert parse_message(ack.to_bytes()) == ack


def test_invite_client_success_enters_accepted() -> None:
    tx = InviteClientTransaction(INVITE)
    tx.start(0.0)
    ok = make_response(INVITE, 200, to_tag="a6c85cf")
    assert tx.receive_response(ok, 300.0) == [ResponseReceived(ok)]
    assert tx.state == "accepted"
    # RFC 6026: 2xx retransmissions (and other forks' 2xx) still reach the TU, which ACKs them
    assert tx.receive_response(ok, 800.0) == [ResponseReceived(ok)]
    assert tx.receive_response(make_response(INVITE, 486, to_tag="b"), 900.0) == []
    assert tx.advance(300 + 32_000) == [TransactionTerminated("done")]


def test_invite_client_reliable_transport() -> None:
    tx = InviteClientTransaction(INVITE, reliable=True)
    tx.start(0.0)
    assert tx.next_deadline == 32_000  # timer B only
    events = tx.receive_response(make_response(INVITE, 503, to_tag="t"), 10.0)
    assert events[-1] == TransactionTerminated("done")  # timer D = 0


def test_invite_client_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        InviteClientTransaction(BYE)
    tx = InviteClientTransaction(INVITE)
    tx.start(0.0)
    with pytest.raises(LocalProtocolError):
        tx.start(1.0)


def test_transport_error_ends_the_transaction() -> None:
    tx = InviteClientTransaction(INVITE)
    tx.start(0.0)
    assert tx.transport_error() == [TransactionTerminated("transport_error")]
    assert tx.transport_error() == []


# Non-INVITE client (§17.1.2) -----------------------------------------------------------------------------


def test_non_invite_client_timer_e_caps_at_t2_and_f_times_out() -> None:
    tx = NonInviteClientTransaction(BYE)
    assert tx.start(0.0) == [Transmit(BYE)]
    assert run_until(tx, 31_999) == [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    assert tx.advance(32_000) == [TransactionTimeout("F"), TransactionTerminated("timeout")]


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    tx = NonInviteClientTransaction(BYE)
    tx.start(0.0)
    trying = make_response(BYE, 100)
    assert tx.receive_response(trying, 100.0) == [ResponseReceived(trying)]
    assert tx.state == "proceeding"
    assert run_until(tx, 9_000) == [500, 4500, 8500]


def test_non_invite_client_final_and_timer_k() -> None:
    tx = NonInviteClientTransaction(BYE)
    tx.start(0.0)
    ok = make_response(BYE, 200)
    assert tx.receive_response(ok, 50.0) == [ResponseReceived(ok)]
    assert tx.state == "completed" and tx.last_response == ok
    assert tx.receive_response(ok, 60.0) == []  # absorbed
    assert tx.next_deadline == 50 + 5000
    assert tx.advance(5050) == [TransactionTerminated("done")]
    reliable = NonInviteClientTransaction(BYE, reliable=True)
    reliable.start(0.0)
    assert reliable.receive_response(ok, 1.0) == [ResponseReceived(ok), TransactionTerminated("done")]


def test_non_invite_client_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        NonInviteClientTransaction(INVITE)
    tx = NonInviteClientTransaction(BYE)
    tx.start(0.0)
    with pytest.raises(LocalProtocolError):
        tx.start(0.0)


def test_custom_timers() -> None:
    tx = NonInviteClientTransaction(BYE, timers=TimerConfig(t1=100, t2=400, t4=1000))
    tx.start(0.0)
    assert run_until(tx, 6_399) == [100, 300, *range(700, 6_400, 400)]
    assert tx.advance(6_400) == [TransactionTimeout("F"), TransactionTerminated("timeout")]


# INVITE server (§17.2.1) ---------------------------------------------------------------------------------


def test_invite_server_sends_100_trying_after_200_ms() -> None:
    tx = InviteServerTransaction(INVITE_AT_BOB, 0.0)
    assert tx.state == "proceeding" and tx.next_deadline == 200
    (trying,) = transmitted(tx.advance(200.0))
    assert isinstance(trying.message, SipResponse) and trying.message.status_code == 100
    assert trying.message.to.tag is None
    # a retransmitted INVITE gets the last provisional again
    assert tx.receive_request(INVITE_AT_BOB, 600.0) == [Transmit(trying.message, retransmission=True)]


def test_invite_server_tu_answers_quickly_so_no_100() -> None:
    tx = InviteServerTransaction(INVITE_AT_BOB, 0.0)
    ringing = make_response(INVITE_AT_BOB, 180, to_tag="a6c85cf")
    assert tx.send_response(ringing, 50.0) == [Transmit(ringing)]
    assert tx.advance(1000.0) == []


def test_invite_server_failure_retransmits_until_ack() -> None:
    tx = InviteServerTransaction(INVITE_AT_BOB, 0.0)
    busy = make_response(INVITE_AT_BOB, 486, to_tag="a6c85cf")
    assert tx.send_response(busy, 0.0) == [Transmit(busy)]
    assert str(tx.state) == "completed"
    times: list[float] = []
    while (deadline := tx.next_deadline) is not None and deadline < 6000:
        times += [deadline for _ in transmitted(tx.advance(deadline))]
    assert times == [500, 1500, 3500]  # timer G doubles from T1
    assert tx.receive_request(INVITE_AT_BOB, 5000.0) == [Transmit(busy, retransmission=True)]
    ack = build_ack_for_non2xx(INVITE_AT_BOB, busy)
    assert tx.matches(ack)
    assert tx.receive_request(ack, 5100.0) == []
    assert tx.state == "confirmed"
    assert tx.receive_request(ack, 5200.0) == []  # absorbed
    assert tx.advance(5100 + 5000) == [TransactionTerminated("done")]


def test_invite_server_timer_g_caps_at_t2_and_h_times_out() -> None:
    tx = InviteServerTransaction(INVITE_AT_BOB, 0.0)
    tx.send_response(make_response(INVITE_AT_BOB, 480, to_tag="t"), 0.0)
    events = tx.advance(31_999)
    retransmissions = [e for e in transmitted(events) if e.retransmission]
    assert len(retransmissions) == 10  # 500, 1500, 3500, 7500, 11500 ... 31500
    assert tx.advance(32_000) == [TransactionTimeout("H"), TransactionTerminated("timeout")]


def test_invite_server_success_enters_accepted() -> None:
    tx = InviteServerTransaction(INVITE_AT_BOB, 0.0)
    ok = make_response(INVITE_AT_BOB, 200, to_tag="a6c85cf")
    assert tx.send_response(ok, 10.0) == [Transmit(ok)]
    assert tx.state == "accepted"
    assert tx.receive_request(INVITE_AT_BOB, 20.0) == []  # RFC 6026: absorbed
    assert tx.send_response(ok, 510.0) == [Transmit(ok, retransmission=True)]  # the TU retransmits its 2xx
    with pytest.raises(LocalProtocolError):
        tx.send_response(make_response(INVITE_AT_BOB, 486, to_tag="a6c85cf"), 600.0)
    assert tx.advance(10 + 32_000) == [TransactionTerminated("done")]


def test_invite_server_reliable_and_misuse() -> None:
    tx = InviteServerTransaction(INVITE_AT_BOB, 0.0, reliable=True)
    busy = make_response(INVITE_AT_BOB, 486, to_tag="t")
    tx.send_response(busy, 0.0)
    assert tx.next_deadline == 32_000  # timer H only, no G
    assert tx.receive_request(build_ack_for_non2xx(INVITE_AT_BOB, busy), 1.0) == [
        TransactionTerminated("done")
    ]
    with pytest.raises(LocalProtocolError):
        InviteServerTransaction(BYE, 0.0)
    done = InviteServerTransaction(INVITE_AT_BOB, 0.0)
    done.send_response(busy, 0.0)
    with pytest.raises(LocalProtocolError):
        done.send_response(make_response(INVITE_AT_BOB, 180, to_tag="t"), 1.0)


# Non-INVITE server (§17.2.2) -----------------------------------------------------------------------------


def test_non_invite_server() -> None:
    tx = NonInviteServerTransaction(BYE)
    assert str(tx.state) == "trying"
    assert tx.receive_request(BYE, 10.0) == []  # nothing to resend yet
    trying = make_response(BYE, 100)
    assert tx.send_response(trying, 20.0) == [Transmit(trying)]
    assert tx.receive_request(BYE, 30.0) == [Transmit(trying, retransmission=True)]
    ok = make_response(BYE, 200)
    assert tx.send_response(ok, 40.0) == [Transmit(ok)]
    assert tx.state == "completed"
    assert tx.receive_request(BYE, 50.0) == [Transmit(ok, retransmission=True)]
    with pytest.raises(LocalProtocolError):
        tx.send_response(ok, 60.0)
    assert tx.advance(40 + 32_000) == [TransactionTerminated("done")]
    reliable = NonInviteServerTransaction(BYE, reliable=True)
    assert reliable.send_response(ok, 0.0) == [Transmit(ok), TransactionTerminated("done")]
    with pytest.raises(LocalProtocolError):
        NonInviteServerTransaction(INVITE)


# Matching (§17.1.3, §17.2.3) and CANCEL (§9.1) ------------------------------------------------------------


def test_client_keys() -> None:
    assert client_transaction_key(INVITE) == ("z9hG4bKnashds8", "INVITE")
    response = make_response(INVITE, 180, to_tag="t")
    assert client_transaction_key(response) == client_transaction_key(INVITE)
    cancel = build_cancel(INVITE)
    assert client_transaction_key(make_response(cancel, 200)) == ("z9hG4bKnashds8", "CANCEL")
    tx = InviteClientTransaction(INVITE)
    assert not tx.matches(make_response(cancel, 200))
    no_branch = parse_message(vector("rfc3261_24_2_f14_200.txt").replace(b";branch=z9hG4bKnashds10", b""))
    assert isinstance(no_branch, SipResponse)
    assert not tx.matches(no_branch)


def test_server_keys() -> None:
    key = server_transaction_key(INVITE_AT_BOB)
    assert key == ("z9hG4bK4b43c2ff8.1", "server10.biloxi.com", "INVITE")
    ack = build_ack_for_non2xx(INVITE_AT_BOB, make_response(INVITE_AT_BOB, 486, to_tag="t"))
    assert server_transaction_key(ack) == key
    assert server_transaction_key(build_cancel(INVITE_AT_BOB)) != key
    other_host = INVITE_AT_BOB.with_headers(
        INVITE_AT_BOB.headers.set("Via", "SIP/2.0/UDP elsewhere.example.com;branch=z9hG4bK4b43c2ff8.1")
    )
    assert server_transaction_key(other_host) != key
    rfc2543 = BYE.with_headers(BYE.headers.set("Via", "SIP/2.0/UDP 192.0.2.4;branch=oldstyle"))
    assert server_transaction_key(rfc2543)[-1] == "BYE" and len(server_transaction_key(rfc2543)) == 6


def test_build_cancel() -> None:
    routed = INVITE.with_headers(INVITE.headers.add("Route", "<sip:p1.example.com;lr>"))
    cancel = build_cancel(routed)
    assert cancel.method == "CANCEL" and cancel.uri == INVITE.uri
    assert cancel.top_via == INVITE.top_via
    assert (cancel.from_, cancel.to, cancel.call_id) == (INVITE.from_, INVITE.to, INVITE.call_id)
    assert cancel.cseq.number == INVITE.cseq.number and cancel.cseq.method == "CANCEL"
    assert cancel.headers.get("Route") == "<sip:p1.example.com;lr>"
    assert parse_message(cancel.to_bytes()) == cancel
    with pytest.raises(LocalProtocolError):
        build_cancel(request("rfc3261_24_2_f12_ack.txt"))
    tx = NonInviteClientTransaction(cancel)
    assert tx.start(0.0) == [Transmit(cancel)]
