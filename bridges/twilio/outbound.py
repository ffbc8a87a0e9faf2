"""Outbound calls: what ``voice call TO`` and ``POST /api/calls`` send to Twilio (protocols.md §E.1, §E.5).

:func:`outbound_request` turns settings and the caller's choices into an
:class:`~bridges.twilio.rest.OutboundCallRequest`: inline TwiML ``<Connect><Stream>`` to our public stream URL
with ``<Parameter>``s (``agent``, ``direction=outbound``, ``to``, ``from`` and an optional pre-assigned
``call_id``) that come back in the stream's ``start.customParameters``; status callbacks for every progress
event to ``/twilio/status`` (the outcome: ``completed``, ``busy``, ``no-answer``, ``failed``, ``canceled``);
the ring timeout; asynchronous answering-machine detection when configured (``AnsweredBy`` on the same
callback).

:func:`place_call` sends it. Twilio's refusal (an invalid number, an unverified caller id, …) comes back as
:class:`~bridges.twilio.errors.TwilioRestError` with Twilio's code and message.
"""

from __future__ import annotations

from collections.abc import Mapping

from bridges.twilio.rest import CallInfo, OutboundCallRequest, TwilioRest
from bridges.twilio.settings import MachineDetection, TwilioSettings
from bridges.twilio.twiml import connect_stream, parse_transfer_target
from voice.errors import ConfigError

__all__ = ["outbound_parameters", "outbound_request", "place_call"]


def outbound_parameters(
    *, agent: str, to: str, from_: str, call_id: str | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The ``<Parameter>``s of an outbound stream (read back from ``start.customParameters``)."""
    params = {"agent": agent, "direction": "outbound", "to": to, "from": from_}
    if call_id:
        params["call_id"] = call_id
    params.update(extra or {})
    return params


def outbound_request(
    settings: TwilioSettings,
    *,
    to: str,
    agent: str,
    from_: str | None = None,
    call_id: str | None = None,
    machine_detection: MachineDetection | None = None,
    ring_timeout_s: int | None = None,
    parameters: Mapping[str, str] | None = None,
) -> OutboundCallRequest:
    """Build the REST request of an outbound call (see the module docstring).

    ``to`` is an E.164 number, ``sip:`` URI or ``client:NAME``; ``from_`` defaults to
    ``VOICE_TWILIO_FROM_NUMBER``. Raises :class:`ConfigError` when the public URL or a caller id is missing
    and :class:`InvalidTransferTarget` (a ``ValueError``) for a ``to`` that cannot be dialled.
    """
    caller_id = from_ or settings.from_number
    if not caller_id:
        raise ConfigError("no caller id: pass --from NUMBER or set VOICE_TWILIO_FROM_NUMBER")
    target = parse_transfer_target(to)
    callee = f"client:{target.value}" if target.kind == "client" else target.value
    twiml = connect_stream(
        settings.stream_url,
        outbound_parameters(agent=agent, to=callee, from_=caller_id, call_id=call_id, extra=parameters),
    )
    amd = settings.machine_detection if machine_detection is None else machine_detection
    return OutboundCallRequest(
        to=callee,
        from_=caller_id,
        twiml=twiml,
        status_callback=settings.status_url,
        machine_detection=None if amd == "off" else amd,
        machine_detection_timeout_s=settings.machine_detection_timeout_s if amd != "off" else None,
        ring_timeout_s=ring_timeout_s if ring_timeout_s is not None else settings.ring_timeout_s,
        time_limit_s=settings.time_limit_s,
    )


async def place_call(
    rest: TwilioRest,
    settings: TwilioSettings,
    *,
    to: str,
    agent: str,
    from_: str | None = None,
    call_id: str | None = None,
    machine_detection: MachineDetection | None = None,
    ring_timeout_s: int | None = None,
) -> CallInfo:
    """Create the call with Twilio (the callee's phone starts ringing); returns its ``CallSid`` and status."""
    request = outbound_request(
        settings,
        to=to,
        agent=agent,
        from_=from_,
        call_id=call_id,
        machine_detection=machine_detection,
        ring_timeout_s=ring_timeout_s,
    )
    return await rest.create_call(request)
