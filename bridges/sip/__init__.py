"""Our own SIP user agent: the pure (sans-I/O) cores (issue 5).

Bytes and explicit times in, events and bytes out; no sockets, no asyncio, no clock reads. The asyncio
adapter (UDP/TCP transports, RTP socket, timers) drives these cores.

- :mod:`bridges.sip.message`: SIP messages (RFC 3261 §7, §20, §25): parser, serializer, TCP framer,
  typed headers (Via, From/To, CSeq, Contact, URIs), responses built from requests (§8.2.6).
- :mod:`bridges.sip.transaction`: the four transaction state machines with timers A-M (§17, RFC 6026).
- :mod:`bridges.sip.dialog`: dialog state: Call-ID, tags, CSeq, route set, remote target (§12).
- :mod:`bridges.sip.digest`: Digest authentication, client and server (RFC 7616, RFC 2617).
- :mod:`bridges.sip.sdp`: SDP (RFC 4566) and offer/answer for G.711 + telephone-event (RFC 3264).
- :mod:`bridges.sip.rtp`: RTP and RTCP SR/RR packets, wraparound helpers, sender, statistics (RFC 3550).
- :mod:`bridges.sip.jitter`: the receive jitter buffer with loss concealment.
- :mod:`bridges.sip.telephone_event`: RFC 4733 DTMF events, receive and send.

The asyncio adapters (they own sockets, tasks and time, and only pump data through the cores):

- :mod:`bridges.sip.transport`: UDP and TCP transports (RFC 3261 §18).
- :mod:`bridges.sip.ua`: the user agent: transactions by branch, dialogs, timers, inbound calls (100/180/200,
  CANCEL, re-INVITE hold/resume, INFO DTMF, OPTIONS, 403/401/481/488/501), outbound INVITE through a trunk
  with Digest, REFER, REGISTER with refresh.
- :mod:`bridges.sip.rtp_session`: one call's RTP/RTCP endpoint: jitter buffer, symmetric RTP, RFC 4733 and
  in-band DTMF, 20 ms paced sending with marker bits, RTCP SR/RR.
- :mod:`bridges.sip.leg`: the :class:`~bridges.base.Leg` of a SIP call; :mod:`bridges.sip.service`: the
  wiring into ``voice serve`` (``--sip-port``, ``[sip]`` settings in :mod:`bridges.sip.settings`,
  ``POST /api/sip/calls``); ``voice bench sip``.

Errors: every parser raises a :class:`~voice.errors.RemoteProtocolError` subclass on peer input
(:class:`SipParseError`, :class:`SdpParseError`, :class:`NoCommonCodec`, :class:`RtpParseError`,
:class:`DigestError`, :class:`DialogRequestError`) and nothing else; misuse raises
:class:`~voice.errors.LocalProtocolError`.
"""

from __future__ import annotations

from bridges.sip.dialog import Dialog, DialogId, DialogRequestError
from bridges.sip.digest import DigestChallenge, DigestCredentials, DigestError, DigestServer, authorize
from bridges.sip.jitter import JitterBuffer, JitterFrame
from bridges.sip.message import (
    CSeq,
    Headers,
    NameAddr,
    SipFramingError,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    SipStreamFramer,
    SipUri,
    Via,
    error_response,
    make_response,
    parse_message,
)
from bridges.sip.rtp import RtpPacket, RtpParseError, RtpReceiverStats, RtpSender, parse_rtcp
from bridges.sip.sdp import (
    MediaConfig,
    NegotiatedMedia,
    NoCommonCodec,
    SdpParseError,
    SessionDescription,
    accept_answer,
    build_answer,
    build_offer,
    parse_sdp,
)
from bridges.sip.telephone_event import DtmfKey, DtmfStarted, TelephoneEventReceiver, TelephoneEventSender

__all__ = [
    "CSeq",
    "Dialog",
    "DialogId",
    "DialogRequestError",
    "DigestChallenge",
    "DigestCredentials",
    "DigestError",
    "DigestServer",
    "DtmfKey",
    "DtmfStarted",
    "Headers",
    "JitterBuffer",
    "JitterFrame",
    "MediaConfig",
    "NameAddr",
    "NegotiatedMedia",
    "NoCommonCodec",
    "RtpPacket",
    "RtpParseError",
    "RtpReceiverStats",
    "RtpSender",
    "SdpParseError",
    "SessionDescription",
    "SipFramingError",
    "SipMessage",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "SipStreamFramer",
    "SipUri",
    "TelephoneEventReceiver",
    "TelephoneEventSender",
    "Via",
    "accept_answer",
    "authorize",
    "build_answer",
    "build_offer",
    "error_response",
    "make_response",
    "parse_message",
    "parse_rtcp",
    "parse_sdp",
]
