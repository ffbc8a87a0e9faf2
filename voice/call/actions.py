"""The call core's actions: what :class:`voice.call.core.CallCore` returns for the runner to carry out
(frozen dataclasses, one per kind of effect), and :data:`Action`, their union."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from voice.call.transcript import TranscriptKind

__all__ = [
    "INTERNAL_ERROR_METRIC",
    "Action",
    "ClearLeg",
    "Control",
    "Hangup",
    "Metric",
    "PlayFrame",
    "RunTool",
    "SendDtmf",
    "SendUpstream",
    "TranscriptEntry",
    "Transfer",
    "UsageReported",
]


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Send this client event to the Realtime upstream."""

    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PlayFrame:
    """Play one 20 ms frame on the leg; ``item_ms`` is the item position at the end of the frame."""

    frame: bytes
    item_id: str
    item_ms: int


@dataclass(frozen=True, slots=True)
class ClearLeg:
    """Drop every agent frame the leg has not played yet."""


@dataclass(frozen=True, slots=True)
class SendDtmf:
    digits: str


@dataclass(frozen=True, slots=True)
class Transfer:
    target: str


@dataclass(frozen=True, slots=True)
class Hangup:
    reason: str


@dataclass(frozen=True, slots=True)
class RunTool:
    """Run a registered tool; report the output with :meth:`CallCore.tool_result`."""

    call_id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Control:
    """A JSON control message for legs with a UI (``Leg.send_control``).

    Types: ``transcript`` (``role`` agent|caller, ``item_id``, ``delta`` or ``text`` + ``final``),
    ``barge_in`` (``cause``: speech|dtmf; the leg itself is cleared by :class:`ClearLeg`),
    ``dtmf`` (``digit``, ``source``), ``call_end`` (``reason``).
    """

    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """A transcript event for :class:`voice.call.transcript.Transcript` (``.add(kind, t_ms, text, **data)``).

    ``t_ms`` is on the call clock; an agent turn carries the time it started being heard.
    """

    kind: TranscriptKind
    text: str
    data: dict[str, Any]
    t_ms: int


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    value: float = 1.0


@dataclass(frozen=True, slots=True)
class UsageReported:
    """Usage to price: ``kind`` response (``response.done.usage``) or transcription (§B.1)."""

    kind: Literal["response", "transcription"]
    model: str
    usage: dict[str, Any]


Action: TypeAlias = (
    SendUpstream
    | PlayFrame
    | ClearLeg
    | SendDtmf
    | Transfer
    | Hangup
    | RunTool
    | Control
    | TranscriptEntry
    | Metric
    | UsageReported
)

INTERNAL_ERROR_METRIC: Final = "core.internal_error"
"""The :class:`Metric` a core input handler returns when it raised (the error is logged, not propagated)."""
