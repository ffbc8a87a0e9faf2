"""The browser WebSocket protocol (``/ws/browser``) as a pure codec: see ``PROTOCOL.md`` beside this file.

Page -> server:

- BINARY: caller audio, PCM16 little-endian mono 24 kHz, a multiple of 10 ms (typically 20 ms = 960 bytes);
  :func:`check_audio` validates it (an odd byte count cannot be PCM16; a frame over ``max_bytes`` is refused).
- JSON text: ``playback`` (the page's playout clock), ``dtmf`` (a keypad key), ``hangup``;
  :func:`parse_page_message` turns one into a :class:`PagePlayback`, :class:`PageDtmf` or
  :class:`PageHangup`, or raises :class:`BrowserProtocolError` with a ``code`` and a message the page can
  show (the leg answers it with an ``error`` message and the call goes on).

Server -> page: builders for every JSON message (:func:`call_started`, :func:`agent_item`,
:func:`transcript_delta`, :func:`transcript_done`, :func:`clear`, :func:`cost`, :func:`dtmf_ack`,
:func:`tool`, :func:`error`, :func:`call_ended`) and :func:`from_control`, which maps the call's control
messages (``Leg.send_control``, the vocabulary of :class:`voice.call.core.Control` plus the runner's own) to
these wire messages.

No I/O, no clock: bytes and dicts in, dataclasses and dicts out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from bridges.base import DTMF_DIGITS, is_dtmf_digit
from voice.errors import RemoteProtocolError

__all__ = [
    "AUDIO_FORMAT",
    "BYTES_PER_MS",
    "CLOSE_BUSY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "FRAME_BYTES",
    "MAX_AUDIO_BYTES",
    "MAX_TEXT_BYTES",
    "SAMPLE_RATE",
    "BrowserProtocolError",
    "ErrorCode",
    "PageDtmf",
    "PageHangup",
    "PageMessage",
    "PagePlayback",
    "agent_item",
    "call_ended",
    "call_started",
    "check_audio",
    "clear",
    "cost",
    "dtmf_ack",
    "error",
    "from_control",
    "parse_page_message",
    "tool",
    "transcript_delta",
    "transcript_done",
]

SAMPLE_RATE: Final = 24000
BYTES_PER_MS: Final = 48
"""PCM16 mono at 24 kHz: 24 samples x 2 bytes per ms."""
FRAME_BYTES: Final = 960
"""One 20 ms frame."""
AUDIO_FORMAT: Final[dict[str, Any]] = {"format": "pcm16", "rate": SAMPLE_RATE, "channels": 1, "frame_ms": 20}

MAX_TEXT_BYTES: Final = 4096
"""Largest JSON message a page may send (the real ones are under 200 bytes)."""
MAX_AUDIO_BYTES: Final = BYTES_PER_MS * 1000
"""Largest binary audio message: one second."""

CLOSE_NORMAL: Final = 1000
CLOSE_POLICY: Final = 1008
"""Auth or origin refused."""
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_BUSY: Final = 1013
"""Try again later (admission control)."""

ErrorCode: TypeAlias = Literal[
    "bad_json", "bad_message", "unknown_type", "bad_field", "too_large", "bad_audio", "internal", "upstream"
]


class BrowserProtocolError(RemoteProtocolError):
    """The page sent something this protocol does not allow; ``code`` goes into the ``error`` message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


# Page -> server ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PagePlayback:
    """``{"type":"playback","item_id","played_ms"}``: ``played_ms`` of agent item ``item_id`` were heard."""

    item_id: str
    played_ms: int


@dataclass(frozen=True, slots=True)
class PageDtmf:
    """``{"type":"dtmf","digit"}``: a keypad key (``0-9 * # A-D``)."""

    digit: str


@dataclass(frozen=True, slots=True)
class PageHangup:
    """``{"type":"hangup"}``: the caller ended the call."""


PageMessage: TypeAlias = PagePlayback | PageDtmf | PageHangup

_MAX_ITEM_ID: Final = 128
_MAX_PLAYED_MS: Final = 24 * 3600 * 1000


def _field_str(msg: Mapping[str, Any], name: str, max_len: int) -> str:
    value = msg.get(name)
    if value is None:
        raise BrowserProtocolError("bad_field", f"'{msg['type']}' needs the field '{name}'")
    if not isinstance(value, str) or not value:
        raise BrowserProtocolError("bad_field", f"'{name}' must be a non-empty string")
    if len(value) > max_len:
        raise BrowserProtocolError("bad_field", f"'{name}' is longer than {max_len} characters")
    return value


def _playback(msg: Mapping[str, Any]) -> PagePlayback:
    item_id = _field_str(msg, "item_id", _MAX_ITEM_ID)
    played = msg.get("played_ms")
    if played is None:
        raise BrowserProtocolError("bad_field", "'playback' needs the field 'played_ms'")
    if isinstance(played, float) and played.is_integer():
        played = int(played)
    if isinstance(played, bool) or not isinstance(played, int):
        raise BrowserProtocolError("bad_field", "'played_ms' must be an integer number of milliseconds")
    if not 0 <= played <= _MAX_PLAYED_MS:
        raise BrowserProtocolError("bad_field", f"'played_ms' must be between 0 and {_MAX_PLAYED_MS}")
    return PagePlayback(item_id, played)


def _dtmf(msg: Mapping[str, Any]) -> PageDtmf:
    digit = msg.get("digit")
    if not isinstance(digit, str) or not is_dtmf_digit(digit.upper()):
        raise BrowserProtocolError("bad_field", f"'digit' must be one key of {DTMF_DIGITS!r}")
    return PageDtmf(digit.upper())


def _hangup(msg: Mapping[str, Any]) -> PageHangup:
    return PageHangup()


_PARSERS: Final[dict[str, Callable[[Mapping[str, Any]], PageMessage]]] = {
    "playback": _playback,
    "dtmf": _dtmf,
    "hangup": _hangup,
}


def parse_page_message(raw: str | bytes, *, max_bytes: int = MAX_TEXT_BYTES) -> PageMessage:
    """Parse one JSON text message from the page; :class:`BrowserProtocolError` says what is wrong.

    Unknown fields are ignored (a newer page may send more); an unknown ``type`` is an error.
    """
    size = len(raw.encode("utf-8")) if isinstance(raw, str) else len(raw)
    if size > max_bytes:
        raise BrowserProtocolError("too_large", f"message of {size} bytes; the limit is {max_bytes}")
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BrowserProtocolError("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise BrowserProtocolError("bad_message", "a message must be a JSON object")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise BrowserProtocolError("bad_message", "a message needs a string 'type'")
    parser = _PARSERS.get(kind)
    if parser is None:
        known = ", ".join(sorted(_PARSERS))
        shown = kind if len(kind) <= 40 else kind[:40] + "..."
        raise BrowserProtocolError("unknown_type", f"unknown message type {shown!r}; expected one of {known}")
    return parser(msg)


def check_audio(data: bytes, *, max_bytes: int = MAX_AUDIO_BYTES) -> bytes:
    """Validate one binary audio message (PCM16 LE mono 24 kHz) and return it.

    Refused (:class:`BrowserProtocolError` ``bad_audio`` / ``too_large``): an empty message, an odd byte count
    (not whole 16-bit samples) and anything over ``max_bytes``. Other even lengths are accepted (the call
    handles any length), although pages should send multiples of 10 ms (480 bytes).
    """
    size = len(data)
    if size == 0:
        raise BrowserProtocolError("bad_audio", "empty audio message")
    if size > max_bytes:
        raise BrowserProtocolError("too_large", f"audio message of {size} bytes; the limit is {max_bytes}")
    if size % 2:
        raise BrowserProtocolError(
            "bad_audio", f"audio must be whole 16-bit samples (an even byte count), got {size} bytes"
        )
    return data


# Server -> page ------------------------------------------------------------------------------------------


def call_started(call_id: str, agent: str) -> dict[str, Any]:
    """The first message of every call: its id, the agent and the audio format both ways."""
    return {"type": "call.started", "call_id": call_id, "agent": agent, "audio": dict(AUDIO_FORMAT)}


def agent_item(item_id: str) -> dict[str, Any]:
    """The binary frames that follow belong to agent item ``item_id`` (report playback against it)."""
    return {"type": "agent.item", "item_id": item_id}


def transcript_delta(role: Literal["agent", "caller"], item_id: str | None, delta: str) -> dict[str, Any]:
    return {"type": "transcript.delta", "role": role, "item_id": item_id, "delta": delta}


def transcript_done(
    role: Literal["agent", "caller"], item_id: str | None, text: str, *, interrupted: bool | None = None
) -> dict[str, Any]:
    """A finished turn; for the agent ``text`` is what the caller heard and ``interrupted`` is set."""
    msg: dict[str, Any] = {"type": "transcript.done", "role": role, "item_id": item_id, "text": text}
    if interrupted is not None:
        msg["interrupted"] = interrupted
    return msg


def clear() -> dict[str, Any]:
    """Drop all queued agent audio at once, then report playback."""
    return {"type": "clear"}


def cost(total_usd: str, per_minute_usd: str | None, breakdown: Mapping[str, Any]) -> dict[str, Any]:
    """The live cost meter (money as decimal text)."""
    return {
        "type": "cost",
        "total_usd": total_usd,
        "per_minute_usd": per_minute_usd,
        "breakdown": dict(breakdown),
    }


def dtmf_ack(digit: str) -> dict[str, Any]:
    return {"type": "dtmf.ack", "digit": digit}


def tool(name: str, status: str) -> dict[str, Any]:
    """A tool call's progress: ``running``, ``done`` or ``failed``."""
    return {"type": "tool", "name": name, "status": status}


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def call_ended(reason: str, call_id: str) -> dict[str, Any]:
    return {"type": "call.ended", "reason": reason, "call_id": call_id}


# The call's control vocabulary -> wire messages ----------------------------------------------------------


def _role(value: Any) -> Literal["agent", "caller"]:
    return "agent" if value == "agent" else "caller"


def from_control(message: Mapping[str, Any], *, call_id: str, agent: str) -> dict[str, Any] | None:
    """The wire message for one control message of the call (``None``: nothing to tell the page).

    ============================================  ===================================================
    control (``Leg.send_control``)                wire
    ============================================  ===================================================
    ``call_start``                                ``call.started`` (with the audio format)
    ``transcript`` with ``delta``                 ``transcript.delta``
    ``transcript`` with ``text`` (+ ``final``)    ``transcript.done`` (``interrupted`` if given)
    ``dtmf`` (``digit``)                          ``dtmf.ack``
    ``call_end`` (``reason``)                     ``call.ended``
    ``barge_in``                                  nothing (the leg's ``clear()`` sends ``clear``)
    ``cost``, ``tool``, ``error``, ``clear``,     passed through (already wire messages)
    ``call.started``, ``call.ended``,
    ``transcript.delta``, ``transcript.done``,
    ``dtmf.ack``, ``agent.item``
    ============================================  ===================================================
    """
    kind = message.get("type")
    if kind == "call_start":
        return call_started(call_id, str(message.get("agent") or agent))
    if kind == "transcript":
        role = _role(message.get("role"))
        item_id = message.get("item_id")
        if "delta" in message:
            return transcript_delta(role, item_id, str(message["delta"]))
        interrupted = message.get("interrupted")
        return transcript_done(
            role,
            item_id,
            str(message.get("text", "")),
            interrupted=bool(interrupted) if interrupted is not None else None,
        )
    if kind == "dtmf":
        return dtmf_ack(str(message.get("digit", "")))
    if kind == "call_end":
        return call_ended(str(message.get("reason", "")), call_id)
    if kind in _PASS_THROUGH:
        return dict(message)
    return None


_PASS_THROUGH: Final = frozenset(
    {
        "cost",
        "tool",
        "error",
        "clear",
        "call.started",
        "call.ended",
        "transcript.delta",
        "transcript.done",
        "dtmf.ack",
        "agent.item",
    }
)
