"""The Twilio bridge: phone calls through Twilio Voice and bidirectional Media Streams (protocols.md §E).

- :mod:`~bridges.twilio.protocol`: the Media Streams message codec (pure, §E.2, §E.3);
- :mod:`~bridges.twilio.marks`: the playout clock from mark echoes (pure, §C.2);
- :mod:`~bridges.twilio.signature`: ``X-Twilio-Signature`` checks, webhooks and the WebSocket upgrade (§E.4);
- :mod:`~bridges.twilio.twiml`: TwiML documents (connect a stream, dial a transfer, refuse; §E.1);
- :mod:`~bridges.twilio.machine`: answering-machine results and the agent's policy (pure, §E.5);
- :mod:`~bridges.twilio.busy`: what a caller hears when every line is busy (spoken refusal, µ-law prompt);
- :mod:`~bridges.twilio.callbacks`: incoming-call and status-callback form parsing (§E.5);
- :mod:`~bridges.twilio.rest`: outbound calls and live-call updates through the REST API (§E.5);
- :mod:`~bridges.twilio.outbound`: outbound call requests from settings (``voice call``, ``POST /api/calls``);
- :mod:`~bridges.twilio.leg`: :class:`TwilioLeg`, the :class:`bridges.base.Leg` over a Starlette WebSocket;
- :mod:`~bridges.twilio.web`: Starlette helpers for the service's ``/twilio/*`` routes;
- :mod:`~bridges.twilio.settings`: :class:`TwilioSettings` (``TWILIO_ACCOUNT_SID``, ``TWILIO_AUTH_TOKEN``,
  ``VOICE_PUBLIC_URL``, ``VOICE_TWILIO_*``).
"""

from bridges.twilio.errors import (
    InvalidTransferTarget,
    StreamStartError,
    TwilioError,
    TwilioProtocolError,
    TwilioRestError,
    TwimlError,
)
from bridges.twilio.leg import TwilioLeg
from bridges.twilio.rest import CallInfo, OutboundCallRequest, TwilioRest
from bridges.twilio.settings import STATUS_PATH, STREAM_PATH, VOICE_PATH, TwilioSettings

__all__ = [
    "STATUS_PATH",
    "STREAM_PATH",
    "VOICE_PATH",
    "CallInfo",
    "InvalidTransferTarget",
    "OutboundCallRequest",
    "StreamStartError",
    "TwilioError",
    "TwilioLeg",
    "TwilioProtocolError",
    "TwilioRest",
    "TwilioRestError",
    "TwilioSettings",
    "TwimlError",
]
