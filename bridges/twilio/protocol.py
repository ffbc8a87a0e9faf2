"""Twilio Media Streams messages as a pure codec (protocols.md §E.2, §E.3).

Twilio -> us (JSON text frames, §E.2): :func:`parse_message` turns one frame into a frozen dataclass:
:class:`Connected`, :class:`Start`, :class:`Media`, :class:`Dtmf`, :class:`Mark` or :class:`Stop`. An
``event`` this module does not know becomes :class:`Unknown` (a value, never an exception: one new Twilio
event must not end a call). Everything else that cannot be used raises :class:`TwilioProtocolError` with one
of the documented ``reason`` values:

=================  ===============================================================================
``too_large``      the frame is longer than ``max_bytes``
``malformed_json`` not UTF-8, or not JSON
``not_an_object``  JSON, but not an object
``missing_field``  ``event``, ``streamSid`` or a field the event needs is absent
``bad_field``      a field of the wrong type, or a number (``chunk``, ``timestamp``, ...) that is not a
                   non-negative integer (Twilio sends them as decimal strings: they are ``int()``-ed)
``bad_base64``     ``media.payload`` is not base64
``bad_digit``      ``dtmf.digit`` is not exactly one DTMF key
=================  ===============================================================================

No other exception escapes :func:`parse_message` for any input (the fuzz tests hold it to that).

us -> Twilio (§E.3): :func:`media_message` (base64 of raw µ-law 8 kHz, no header), :func:`mark_message`,
:func:`clear_message` build the JSON text. Every message must name the ``streamSid`` from ``start``.

For test doubles that play Twilio (``tests/bridges/twilio/simulator.py``) the codec also runs the other way:
:func:`encode_message` serializes the Twilio -> us dataclasses exactly as Twilio shapes them (numbers as
strings) and :func:`parse_outbound` parses what we send, with the same error rules;
``parse_message(encode_message(m)) == m`` for every message.

No I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias, TypeGuard

from bridges.base import is_dtmf_digit
from bridges.twilio.errors import TwilioProtocolError
from voice.jsontext import plain

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MULAW_ENCODING",
    "MULAW_RATE",
    "Clear",
    "Connected",
    "Dtmf",
    "Mark",
    "Media",
    "MediaFormat",
    "OutboundMark",
    "OutboundMedia",
    "OutboundMessage",
    "Start",
    "Stop",
    "TwilioMessage",
    "Unknown",
    "clear_message",
    "encode_message",
    "encode_outbound",
    "mark_message",
    "media_message",
    "parse_message",
    "parse_outbound",
]

MULAW_ENCODING: Final = "audio/x-mulaw"
MULAW_RATE: Final = 8000
DEFAULT_MAX_BYTES: Final = 1 << 20
"""Largest frame :func:`parse_message` reads (a 20 ms media frame is about 300 bytes)."""


# Twilio -> us ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """``connected``: the first message on the socket (§E.2)."""

    protocol: str = "Call"
    version: str = "1.0.0"


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """``start.mediaFormat``: always µ-law at 8000 Hz, mono, on Media Streams (§E.2)."""

    encoding: str = MULAW_ENCODING
    sample_rate: int = MULAW_RATE
    channels: int = 1

    @property
    def is_mulaw_8k(self) -> bool:
        return self.encoding == MULAW_ENCODING and self.sample_rate == MULAW_RATE and self.channels == 1


@dataclass(frozen=True, slots=True)
class Start:
    """``start``: the stream's metadata; ``custom_parameters`` are the TwiML ``<Parameter>``s (§E.1, §E.2)."""

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...] = ("inbound",)
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    media_format: MediaFormat = field(default_factory=MediaFormat)
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Media:
    """``media``: caller audio; ``timestamp_ms`` is ms since the stream started, ``chunk`` counts from 1."""

    stream_sid: str
    chunk: int
    timestamp_ms: int
    payload: bytes
    track: str = "inbound"
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Dtmf:
    """``dtmf``: one key pressed by the caller (bidirectional streams only, §E.2)."""

    stream_sid: str
    digit: str
    track: str = "inbound_track"
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Mark:
    """``mark``: the echo of a mark we sent, once the audio before it played or was cleared (§E.2)."""

    stream_sid: str
    name: str
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    """``stop``: the stream ended (hang-up, TwiML change, ``<Connect>`` ended)."""

    stream_sid: str
    account_sid: str = ""
    call_sid: str = ""
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message with an ``event`` this codec does not know (kept whole, for logs)."""

    event: str
    data: Mapping[str, Any]


TwilioMessage: TypeAlias = Connected | Start | Media | Dtmf | Mark | Stop | Unknown


# us -> Twilio ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboundMedia:
    """Agent audio for Twilio's playback queue: raw µ-law 8 kHz, any length (§E.3)."""

    stream_sid: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class OutboundMark:
    """A mark: echoed by Twilio once the audio queued before it has played (§E.3)."""

    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Clear:
    """Drop Twilio's playback queue now (barge-in); outstanding marks are echoed (§E.3)."""

    stream_sid: str


OutboundMessage: TypeAlias = OutboundMedia | OutboundMark | Clear


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def media_message(stream_sid: str, payload: bytes) -> str:
    """``{"event":"media","streamSid":…,"media":{"payload":<base64>}}`` (§E.3).

    Sent for every 20 ms of agent audio: formatted directly when the stream id needs no escaping (Twilio's
    ``MZ…`` ids never do); the same JSON as :func:`encode_outbound`.
    """
    if not plain(stream_sid):
        return encode_outbound(OutboundMedia(stream_sid, payload))
    b64 = base64.b64encode(payload).decode("ascii")
    return f'{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"{b64}"}}}}'


def mark_message(stream_sid: str, name: str) -> str:
    """``{"event":"mark","streamSid":…,"mark":{"name":…}}`` (§E.3), formatted directly like
    :func:`media_message` when nothing needs escaping."""
    if not (plain(stream_sid) and plain(name)):
        return encode_outbound(OutboundMark(stream_sid, name))
    return f'{{"event":"mark","streamSid":"{stream_sid}","mark":{{"name":"{name}"}}}}'


def clear_message(stream_sid: str) -> str:
    """``{"event":"clear","streamSid":…}`` (§E.3)."""
    return encode_outbound(Clear(stream_sid))


def encode_outbound(message: OutboundMessage) -> str:
    """The JSON text of a message to Twilio (§E.3)."""
    if isinstance(message, OutboundMedia):
        payload = base64.b64encode(message.payload).decode("ascii")
        return _dumps({"event": "media", "streamSid": message.stream_sid, "media": {"payload": payload}})
    if isinstance(message, OutboundMark):
        return _dumps({"event": "mark", "streamSid": message.stream_sid, "mark": {"name": message.name}})
    return _dumps({"event": "clear", "streamSid": message.stream_sid})


# Parsing helpers -------------------------------------------------------------------------------------------


def _load(raw: str | bytes, max_bytes: int) -> tuple[str, dict[str, Any]]:
    if len(raw) > max_bytes:
        raise TwilioProtocolError("too_large", f"message of {len(raw)} bytes is over the {max_bytes} limit")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TwilioProtocolError("malformed_json", f"not a JSON message: {exc}") from None
    if not isinstance(data, dict):
        raise TwilioProtocolError("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    if "event" not in data:
        raise TwilioProtocolError("missing_field", "message has no 'event'")
    event = data["event"]
    if not isinstance(event, str):
        raise TwilioProtocolError("bad_field", "'event' must be a string")
    return event, data


def _obj(data: Mapping[str, Any], key: str, event: str, *, required: bool = True) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise TwilioProtocolError("missing_field", f"{event} message has no '{key}'", event=event)
        return {}
    if not isinstance(value, dict):
        raise TwilioProtocolError("bad_field", f"'{key}' of {event} must be an object", event=event)
    return value


def _str(data: Mapping[str, Any], key: str, event: str, *, default: str | None = None) -> str:
    value = data.get(key)
    if value is None:
        if default is None:
            raise TwilioProtocolError("missing_field", f"{event} message has no '{key}'", event=event)
        return default
    if not isinstance(value, str):
        raise TwilioProtocolError("bad_field", f"'{key}' of {event} must be a string", event=event)
    return value


def _int_value(value: Any, key: str, event: str) -> int:
    """A non-negative integer sent as a decimal string (Twilio's way, §E.2) or as a JSON number."""
    if isinstance(value, bool):
        raise TwilioProtocolError("bad_field", f"'{key}' of {event} must be a number", event=event)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        number = int(value)
    else:
        raise TwilioProtocolError(
            "bad_field", f"'{key}' of {event} must be a non-negative integer, got {value!r:.40}", event=event
        )
    if number < 0:
        raise TwilioProtocolError("bad_field", f"'{key}' of {event} must not be negative", event=event)
    return number


def _int(data: Mapping[str, Any], key: str, event: str) -> int:
    if data.get(key) is None:
        raise TwilioProtocolError("missing_field", f"{event} message has no '{key}'", event=event)
    return _int_value(data[key], key, event)


def _opt_int(data: Mapping[str, Any], key: str, event: str) -> int | None:
    value = data.get(key)
    return None if value is None else _int_value(value, key, event)


def _b64(value: str, event: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TwilioProtocolError("bad_base64", f"{event} payload is not base64", event=event) from None


def _stream_sid(data: Mapping[str, Any], event: str, inner: Mapping[str, Any] | None = None) -> str:
    if data.get("streamSid") is None and inner is not None and inner.get("streamSid") is not None:
        return _str(inner, "streamSid", event)
    return _str(data, "streamSid", event)


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


# Per-event parsers (Twilio -> us) --------------------------------------------------------------------------


def _connected(data: Mapping[str, Any]) -> Connected:
    return Connected(
        _str(data, "protocol", "connected", default=""), _str(data, "version", "connected", default="")
    )


def _start(data: Mapping[str, Any]) -> Start:
    body = _obj(data, "start", "start")
    tracks_raw = body.get("tracks", ["inbound"])
    if not isinstance(tracks_raw, list) or not all(isinstance(t, str) for t in tracks_raw):
        raise TwilioProtocolError("bad_field", "'tracks' of start must be a list of strings", event="start")
    params_raw = _obj(body, "customParameters", "start", required=False)
    params: dict[str, str] = {}
    for key, value in params_raw.items():
        text = _scalar_text(value)
        if text is None:
            raise TwilioProtocolError(
                "bad_field", f"custom parameter {key!r:.40} must be a string", event="start"
            )
        params[key] = text
    fmt_raw = _obj(body, "mediaFormat", "start", required=False)
    media_format = MediaFormat(
        encoding=_str(fmt_raw, "encoding", "start", default=MULAW_ENCODING),
        sample_rate=_int_value(fmt_raw.get("sampleRate", MULAW_RATE), "sampleRate", "start"),
        channels=_int_value(fmt_raw.get("channels", 1), "channels", "start"),
    )
    return Start(
        stream_sid=_stream_sid(data, "start", body),
        call_sid=_str(body, "callSid", "start"),
        account_sid=_str(body, "accountSid", "start"),
        tracks=tuple(tracks_raw),
        custom_parameters=params,
        media_format=media_format,
        sequence_number=_opt_int(data, "sequenceNumber", "start"),
    )


def _digits(value: Any) -> TypeGuard[str]:
    return type(value) is str and value.isascii() and value.isdigit() and len(value) <= 18


def _media(data: Mapping[str, Any]) -> Media:
    # The shape Twilio sends fifty times a second, read directly; anything else takes the checked path
    # below, which says what is wrong.
    body = data.get("media")
    sid = data.get("streamSid")
    seq = data.get("sequenceNumber")
    if type(body) is dict and type(sid) is str and (seq is None or _digits(seq)):
        chunk, stamp, payload = body.get("chunk"), body.get("timestamp"), body.get("payload")
        track = body.get("track", "inbound")
        if _digits(chunk) and _digits(stamp) and type(payload) is str and type(track) is str:
            try:
                audio = binascii.a2b_base64(payload, strict_mode=True)
            except binascii.Error:
                pass
            else:
                return Media(sid, int(chunk), int(stamp), audio, track, None if seq is None else int(seq))
    return _media_checked(data)


def _media_checked(data: Mapping[str, Any]) -> Media:
    body = _obj(data, "media", "media")
    return Media(
        stream_sid=_stream_sid(data, "media"),
        chunk=_int(body, "chunk", "media"),
        timestamp_ms=_int(body, "timestamp", "media"),
        payload=_b64(_str(body, "payload", "media"), "media"),
        track=_str(body, "track", "media", default="inbound"),
        sequence_number=_opt_int(data, "sequenceNumber", "media"),
    )


def _dtmf(data: Mapping[str, Any]) -> Dtmf:
    body = _obj(data, "dtmf", "dtmf")
    digit = _str(body, "digit", "dtmf")
    if not is_dtmf_digit(digit):
        raise TwilioProtocolError("bad_digit", f"not one DTMF key: {digit!r:.20}", event="dtmf")
    return Dtmf(
        stream_sid=_stream_sid(data, "dtmf"),
        digit=digit,
        track=_str(body, "track", "dtmf", default="inbound_track"),
        sequence_number=_opt_int(data, "sequenceNumber", "dtmf"),
    )


def _mark(data: Mapping[str, Any]) -> Mark:
    body = _obj(data, "mark", "mark")
    return Mark(
        stream_sid=_stream_sid(data, "mark"),
        name=_str(body, "name", "mark"),
        sequence_number=_opt_int(data, "sequenceNumber", "mark"),
    )


def _stop(data: Mapping[str, Any]) -> Stop:
    body = _obj(data, "stop", "stop", required=False)
    return Stop(
        stream_sid=_stream_sid(data, "stop"),
        account_sid=_str(body, "accountSid", "stop", default=""),
        call_sid=_str(body, "callSid", "stop", default=""),
        sequence_number=_opt_int(data, "sequenceNumber", "stop"),
    )


_PARSERS: Final[dict[str, Callable[[Mapping[str, Any]], TwilioMessage]]] = {
    "connected": _connected,
    "start": _start,
    "media": _media,
    "dtmf": _dtmf,
    "mark": _mark,
    "stop": _stop,
}
"""``event`` -> parser of a Twilio -> us message (§E.2)."""


def parse_message(raw: str | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> TwilioMessage:
    """One Media Streams frame from Twilio (§E.2); see the module docstring for the errors it raises."""
    event, data = _load(raw, max_bytes)
    parser = _PARSERS.get(event)
    if parser is None:
        return Unknown(event, data)
    return parser(data)


# Serializing Twilio -> us (for test doubles) --------------------------------------------------------------


def encode_message(message: TwilioMessage) -> str:
    """The JSON text Twilio sends for ``message`` (§E.2): numbers as decimal strings, as Twilio does."""
    if isinstance(message, Connected):
        return _dumps({"event": "connected", "protocol": message.protocol, "version": message.version})
    if isinstance(message, Start):
        fmt = message.media_format
        body = {
            "accountSid": message.account_sid,
            "streamSid": message.stream_sid,
            "callSid": message.call_sid,
            "tracks": list(message.tracks),
            "customParameters": dict(message.custom_parameters),
            "mediaFormat": {
                "encoding": fmt.encoding,
                "sampleRate": fmt.sample_rate,
                "channels": fmt.channels,
            },
        }
        head = {"event": "start", "sequenceNumber": None, "streamSid": message.stream_sid, "start": body}
        return _dumps(_strip_seq(head, message.sequence_number))
    if isinstance(message, Media):
        body = {
            "track": message.track,
            "chunk": str(message.chunk),
            "timestamp": str(message.timestamp_ms),
            "payload": base64.b64encode(message.payload).decode("ascii"),
        }
        head = {"event": "media", "sequenceNumber": None, "streamSid": message.stream_sid, "media": body}
        return _dumps(_strip_seq(head, message.sequence_number))
    if isinstance(message, Dtmf):
        body = {"track": message.track, "digit": message.digit}
        head = {"event": "dtmf", "sequenceNumber": None, "streamSid": message.stream_sid, "dtmf": body}
        return _dumps(_strip_seq(head, message.sequence_number))
    if isinstance(message, Mark):
        head = {
            "event": "mark",
            "sequenceNumber": None,
            "streamSid": message.stream_sid,
            "mark": {"name": message.name},
        }
        return _dumps(_strip_seq(head, message.sequence_number))
    if isinstance(message, Stop):
        body = {"accountSid": message.account_sid, "callSid": message.call_sid}
        head = {"event": "stop", "sequenceNumber": None, "streamSid": message.stream_sid, "stop": body}
        return _dumps(_strip_seq(head, message.sequence_number))
    return _dumps(dict(message.data))


def _strip_seq(message: dict[str, Any], seq: int | None) -> dict[str, Any]:
    """Keep ``sequenceNumber`` second (Twilio's key order) when present; drop it when ``None``."""
    if seq is None:
        message.pop("sequenceNumber")
        return message
    message["sequenceNumber"] = str(seq)
    return message


# Parsing us -> Twilio (for test doubles) ------------------------------------------------------------------


def _out_media(data: Mapping[str, Any]) -> OutboundMedia:
    body = _obj(data, "media", "media")
    return OutboundMedia(_stream_sid(data, "media"), _b64(_str(body, "payload", "media"), "media"))


def _out_mark(data: Mapping[str, Any]) -> OutboundMark:
    body = _obj(data, "mark", "mark")
    return OutboundMark(_stream_sid(data, "mark"), _str(body, "name", "mark"))


def _out_clear(data: Mapping[str, Any]) -> Clear:
    return Clear(_stream_sid(data, "clear"))


_OUT_PARSERS: Final[dict[str, Callable[[Mapping[str, Any]], OutboundMessage]]] = {
    "media": _out_media,
    "mark": _out_mark,
    "clear": _out_clear,
}


def parse_outbound(raw: str | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> OutboundMessage | Unknown:
    """A message sent to Twilio (§E.3), as Twilio reads it; same errors as :func:`parse_message`."""
    event, data = _load(raw, max_bytes)
    parser = _OUT_PARSERS.get(event)
    if parser is None:
        return Unknown(event, data)
    return parser(data)
