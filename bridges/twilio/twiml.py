"""TwiML documents the bridge answers or sends (protocols.md §E.1, §E.5), built with ``twilio.twiml``.

- :func:`connect_stream`: ``<Connect><Stream url="wss://…">`` with ``<Parameter>``s: the bidirectional
  Media Stream that carries a call to the agent (§E.1). The ``url`` must be ``wss://`` (``ws://`` is allowed
  for local tests) without a query string; per-call data travels as parameters and arrives in
  ``start.customParameters``. Nothing follows ``<Connect>``: when our side closes the socket the call ends.
- :func:`dial`: ``<Dial>`` to a transfer target (E.164 number, ``sip:``/``sips:`` URI, ``client:NAME``). Used
  with ``calls(sid).update(twiml=…)``, which ends the running stream (§E.5).
- :func:`hangup`, :func:`reject`, :func:`say_and_hangup`: refusing or ending calls (busy, unknown agent).

Documents are returned as strings with the XML declaration; :data:`MAX_REST_TWIML` is the REST API's limit
for inline TwiML (§E.5, checked by :mod:`bridges.twilio.rest`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from twilio.twiml.voice_response import VoiceResponse  # type: ignore[import-untyped, unused-ignore]

from bridges.twilio.errors import InvalidTransferTarget, TwimlError

__all__ = [
    "MAX_REST_TWIML",
    "TransferTarget",
    "connect_stream",
    "dial",
    "hangup",
    "parse_transfer_target",
    "reject",
    "say_and_hangup",
]

MAX_REST_TWIML: Final = 4000
"""Longest inline ``Twiml`` the REST API accepts (characters, §E.5)."""

_E164: Final = re.compile(r"^\+[1-9][0-9]{1,14}$")
_NUMBER_PUNCTUATION: Final = re.compile(r"[\s().\-]")
_CLIENT: Final = re.compile(r"^[A-Za-z0-9_.@\-]{1,121}$")


def _xml(response: VoiceResponse) -> str:
    return str(response.to_xml(xml_declaration=True))


def connect_stream(
    url: str,
    parameters: Mapping[str, str] | None = None,
    *,
    name: str | None = None,
    status_callback: str | None = None,
    action: str | None = None,
) -> str:
    """``<Response><Connect><Stream url=…><Parameter …/>…</Stream></Connect></Response>`` (§E.1)."""
    parts = urlsplit(url)
    if parts.scheme not in ("wss", "ws") or not parts.netloc:
        raise TwimlError(f"a Media Streams URL must be wss:// (ws:// for local tests), got {url!r}")
    if parts.query or parts.fragment:
        raise TwimlError("a Media Streams URL cannot carry a query string: pass data as <Parameter>s")
    response = VoiceResponse()
    connect = response.connect(action=action)
    stream = connect.stream(url=url, name=name, status_callback=status_callback)
    for key, value in (parameters or {}).items():
        if not key:
            raise TwimlError("a <Parameter> needs a name")
        stream.parameter(name=key, value=str(value))
    return _xml(response)


@dataclass(frozen=True, slots=True)
class TransferTarget:
    """A dialable destination: ``kind`` number (E.164), sip (URI) or client (identity)."""

    kind: Literal["number", "sip", "client"]
    value: str


def parse_transfer_target(target: str) -> TransferTarget:
    """Normalize a transfer target; :class:`InvalidTransferTarget` when it cannot be dialled.

    ``+1 (555) 123-4567`` and ``tel:+15551234567`` are the number ``+15551234567``; ``sip:``/``sips:`` URIs
    are dialled as SIP; ``client:NAME`` is a Twilio Client identity.
    """
    text = target.strip()
    lowered = text.lower()
    if lowered.startswith(("sip:", "sips:")):
        if len(text) <= len("sips:") or any(ch.isspace() for ch in text):
            raise InvalidTransferTarget(f"not a SIP URI: {target!r}")
        return TransferTarget("sip", text)
    if lowered.startswith("client:"):
        identity = text[len("client:") :]
        if not _CLIENT.match(identity):
            raise InvalidTransferTarget(f"not a Twilio Client identity: {target!r}")
        return TransferTarget("client", identity)
    if lowered.startswith("tel:"):
        text = text[len("tel:") :]
    number = _NUMBER_PUNCTUATION.sub("", text)
    if not _E164.match(number):
        raise InvalidTransferTarget(
            f"cannot transfer to {target!r}: use an E.164 number (+15551234567), a sip: URI or client:NAME"
        )
    return TransferTarget("number", number)


def dial(
    target: str | TransferTarget,
    *,
    caller_id: str | None = None,
    timeout_s: int | None = None,
    action: str | None = None,
    answer_on_bridge: bool = True,
) -> str:
    """``<Response><Dial …><Number|Sip|Client>…</…></Dial></Response>`` for a transfer (§E.5)."""
    where = target if isinstance(target, TransferTarget) else parse_transfer_target(target)
    response = VoiceResponse()
    dial_verb = response.dial(
        caller_id=caller_id,
        timeout=timeout_s,
        action=action,
        answer_on_bridge="true" if answer_on_bridge else None,
    )
    if where.kind == "number":
        dial_verb.number(where.value)
    elif where.kind == "sip":
        dial_verb.sip(where.value)
    else:
        dial_verb.client(identity=where.value)
    return _xml(response)


def hangup() -> str:
    """``<Response><Hangup/></Response>``."""
    response = VoiceResponse()
    response.hangup()
    return _xml(response)


def reject(reason: Literal["busy", "rejected"] = "busy") -> str:
    """``<Response><Reject reason="busy"/></Response>``: refuse an incoming call before answering it."""
    response = VoiceResponse()
    response.reject(reason=reason)
    return _xml(response)


def say_and_hangup(message: str) -> str:
    """``<Response><Say>message</Say><Hangup/></Response>``: a short spoken refusal."""
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return _xml(response)
