"""A call's transcript as ordered events on the call's own timeline.

Each event is a frozen :class:`TranscriptEvent`: who or what (``kind``), when (``t_ms``, milliseconds since
the call started, read from the call's clock by the caller of :meth:`Transcript.add`; this module never reads
a clock), a human-readable ``text`` and structured ``data``. ``seq`` numbers events in the order they were
added, which is the order they are stored and shown; ``t_ms`` is when the thing happened (an agent turn is
added when it ends but carries the time it started being heard), so the two orders can differ.

Conventions for ``data`` (the call runner writes them, the API and CLI read them):

- ``caller``: ``{"item_id"}``; ``text`` is the caller's transcribed words.
- ``agent``: ``{"item_id", "interrupted": bool, "heard_ms", "generated_text"}``; ``text`` is what the caller
  really heard (see :func:`heard_text`), ``generated_text`` what the model produced.
- ``dtmf``: ``{"digits"}``; ``tool_call``: ``{"name", "call_id", "arguments"}``;
  ``tool_result``: ``{"call_id", "output", "error"}``; ``barge_in``: ``{"item_id", "heard_ms"}``;
  ``error``: ``{"type", "code", ...}``; ``system``: free-form (call started, transferred, ended...).

Misuse (an unknown kind, a negative time) raises :class:`RecordError`, a :class:`~voice.errors.VoiceError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from voice.errors import RecordError

TranscriptKind = Literal["caller", "agent", "dtmf", "tool_call", "tool_result", "barge_in", "error", "system"]
TRANSCRIPT_KINDS: frozenset[str] = frozenset(get_args(TranscriptKind))


def check_kind(kind: str) -> TranscriptKind:
    """Return ``kind`` as a :data:`TranscriptKind`, or raise :class:`RecordError` naming the valid ones."""
    if kind not in TRANSCRIPT_KINDS:
        raise RecordError(
            f"unknown transcript event kind {kind!r}; expected one of {sorted(TRANSCRIPT_KINDS)}"
        )
    return kind  # type: ignore[return-value]


def check_t_ms(t_ms: int) -> int:
    """Validate a call-timeline position: a non-negative integer number of milliseconds."""
    if isinstance(t_ms, bool) or not isinstance(t_ms, int):
        raise RecordError(f"t_ms must be an int (ms since call start), got {type(t_ms).__name__}")
    if t_ms < 0:
        raise RecordError(f"t_ms must be >= 0 (ms since call start), got {t_ms}")
    return t_ms


@dataclass(frozen=True)
class TranscriptEvent:
    """One entry of a call's transcript."""

    call_id: str
    seq: int
    t_ms: int
    kind: TranscriptKind
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the shape the store returns and the operator API serves)."""
        return {
            "call_id": self.call_id,
            "seq": self.seq,
            "t_ms": self.t_ms,
            "kind": self.kind,
            "text": self.text,
            "data": dict(self.data),
        }

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> TranscriptEvent:
        """Rebuild an event from :meth:`to_dict` output or a store row (``data`` or ``data_json``)."""
        data = row.get("data")
        if data is None and row.get("data_json") is not None:
            data = json.loads(row["data_json"])
        return cls(
            call_id=str(row["call_id"]),
            seq=int(row["seq"]),
            t_ms=int(row["t_ms"]),
            kind=check_kind(str(row["kind"])),
            text=str(row.get("text") or ""),
            data=dict(data or {}),
        )

    def format(self) -> str:
        """One readable line, e.g. ``[00:03.250] agent (interrupted at 1200 ms): Sure, a table for``."""
        minutes, rest = divmod(self.t_ms, 60_000)
        stamp = f"[{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}]"
        label: str = self.kind
        body = self.text
        if self.kind == "agent" and self.data.get("interrupted"):
            label = f"agent (interrupted at {self.data.get('heard_ms', '?')} ms)"
        elif self.kind == "dtmf" and not body:
            body = str(self.data.get("digits", ""))
        elif self.kind == "tool_call":
            body = f"{self.data.get('name', '?')}({self.data.get('arguments', '')})"
        elif self.kind == "tool_result":
            err = self.data.get("error")
            body = f"error: {err}" if err else str(self.data.get("output", ""))
        return f"{stamp} {label}: {body}".rstrip()


EventSink = Callable[[TranscriptEvent], None]


class Transcript:
    """The ordered events of one call.

    ``sink`` (optional) is called with each event as it is added, e.g. ``store.add_transcript_event``, so the
    record is persisted as the call goes rather than at its end. An exception from the sink propagates; the
    event is still kept in memory.
    """

    def __init__(self, call_id: str, *, sink: EventSink | None = None) -> None:
        if not call_id:
            raise RecordError("a transcript needs a non-empty call id")
        self.call_id = call_id
        self._events: list[TranscriptEvent] = []
        self._sink = sink

    @property
    def events(self) -> list[TranscriptEvent]:
        """A copy of the events in the order they were added."""
        return list(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[TranscriptEvent]:
        return iter(list(self._events))

    def add(self, kind: str, t_ms: int, /, text: str = "", **data: Any) -> TranscriptEvent:
        """Append an event of ``kind`` at ``t_ms`` (ms since call start) and return it."""
        event = TranscriptEvent(
            call_id=self.call_id,
            seq=len(self._events),
            t_ms=check_t_ms(t_ms),
            kind=check_kind(kind),
            text=text,
            data=data,
        )
        self._events.append(event)
        if self._sink is not None:
            self._sink(event)
        return event

    # Convenience builders: they fix the ``data`` keys documented in the module docstring.

    def caller(self, t_ms: int, text: str, *, item_id: str | None = None, **extra: Any) -> TranscriptEvent:
        """A caller turn (the upstream's transcription of the caller's speech)."""
        return self.add("caller", t_ms, text, item_id=item_id, **extra)

    def agent(
        self,
        t_ms: int,
        generated_text: str,
        *,
        item_id: str | None = None,
        heard_ms: int | None = None,
        audio_ms: int | None = None,
        interrupted: bool = False,
        **extra: Any,
    ) -> TranscriptEvent:
        """An agent turn. ``text`` becomes what was heard.

        ``heard_ms`` is how much of the turn's audio the caller really heard (the playout clock) and
        ``audio_ms`` how much audio was generated; when the turn was interrupted and both are known, the text
        is cut in proportion (:func:`heard_text`). The full ``generated_text`` stays in ``data``.
        """
        text = generated_text
        if interrupted and heard_ms is not None and audio_ms:
            text = heard_text(generated_text, heard_ms, audio_ms)
        return self.add(
            "agent",
            t_ms,
            text,
            item_id=item_id,
            interrupted=interrupted,
            heard_ms=heard_ms,
            generated_text=generated_text,
            **extra,
        )

    def dtmf(self, t_ms: int, digits: str, **extra: Any) -> TranscriptEvent:
        """Key presses from the caller (or sent by the agent, with ``direction="out"`` in ``extra``)."""
        return self.add("dtmf", t_ms, digits, digits=digits, **extra)

    def tool_call(
        self, t_ms: int, name: str, call_id: str, arguments: str | Mapping[str, Any]
    ) -> TranscriptEvent:
        """The model called a function tool; ``arguments`` is kept as the JSON text the model sent."""
        args = arguments if isinstance(arguments, str) else json.dumps(dict(arguments), sort_keys=True)
        return self.add("tool_call", t_ms, name, name=name, call_id=call_id, arguments=args)

    def tool_result(
        self, t_ms: int, call_id: str, output: str | None = None, error: str | None = None
    ) -> TranscriptEvent:
        """A tool call finished with ``output`` or failed with ``error``."""
        return self.add(
            "tool_result", t_ms, error or output or "", call_id=call_id, output=output, error=error
        )

    def barge_in(
        self, t_ms: int, *, item_id: str | None = None, heard_ms: int | None = None
    ) -> TranscriptEvent:
        """The caller started speaking over the agent; ``heard_ms`` of ``item_id`` had been played."""
        return self.add("barge_in", t_ms, "", item_id=item_id, heard_ms=heard_ms)

    def error(self, t_ms: int, message: str, **extra: Any) -> TranscriptEvent:
        """Something went wrong during the call (an upstream error event, a failed tool, a leg error)."""
        return self.add("error", t_ms, message, **extra)

    def system(self, t_ms: int, text: str, **extra: Any) -> TranscriptEvent:
        """A call-level event: started, answered, transferred, budget warning, ended."""
        return self.add("system", t_ms, text, **extra)

    def to_text(self) -> str:
        """The whole transcript as readable lines (for the CLI)."""
        return "\n".join(event.format() for event in self._events)


def heard_text(generated_text: str, heard_ms: int, audio_ms: int) -> str:
    """The part of ``generated_text`` the caller heard, cut in proportion to ``heard_ms / audio_ms``.

    Speech runs at a roughly even rate, so the share of characters is a fair estimate. The cut moves back to
    the last word boundary so no half word is recorded; nothing heard gives ``""``, everything the text.
    """
    if audio_ms <= 0 or heard_ms >= audio_ms:
        return generated_text
    if heard_ms <= 0:
        return ""
    cut = len(generated_text) * heard_ms // audio_ms
    if cut < len(generated_text) and not generated_text[cut].isspace():
        space = generated_text.rfind(" ", 0, cut + 1)
        cut = space if space >= 0 else 0
    return generated_text[:cut].rstrip()
