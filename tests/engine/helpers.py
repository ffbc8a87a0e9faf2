"""Helpers for the engine tests: SDK validation of server events and a synchronous driver for the core."""

from __future__ import annotations

import base64
import itertools
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pydantic
from openai.types.realtime.realtime_server_event import RealtimeServerEvent

from voice.engine.effects import Cancel, Effect, Respond, Speak, Step, Transcribe
from voice.engine.responder import CallTool, ResponseRequest, Say
from voice.engine.session import EngineSession

SERVER_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RealtimeServerEvent)


def validate_server_event(event: dict[str, Any]) -> Any:
    """Parse ``event`` with the SDK's own discriminated union (strict: a wrong field raises)."""
    model = SERVER_EVENT.validate_python(event)
    assert model.type == event["type"]
    return model


def counter_ids() -> tuple[Callable[[str], str], Callable[[], str]]:
    """Deterministic id factories: ``item_1``, ``resp_2``, ... and ``event_1``, ..."""
    numbers = itertools.count(1)
    events = itertools.count(1)
    return (lambda prefix: f"{prefix.rstrip('_')}_{next(numbers)}"), (lambda: f"event_{next(events)}")


def new_session(*, recognition: bool = True, model: str = "gpt-realtime") -> EngineSession:
    ids, event_ids = counter_ids()
    return EngineSession(
        model=model, created_at=1_700_000_000, recognition=recognition, ids=ids, event_ids=event_ids
    )


def tone(ms: int, rate: int, *, freq: float = 440.0, level: float = 8000.0) -> bytes:
    n = rate * ms // 1000
    return struct.pack(f"<{n}h", *(int(level * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)))


def silence(ms: int, rate: int, width: int = 2) -> bytes:
    return b"\x00" * (rate * ms // 1000 * width)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def types(events: Iterable[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


Responder = Callable[[ResponseRequest], list[Say | CallTool]]


@dataclass
class Driver:
    """Runs a core synchronously: effects of the kinds in ``auto`` are carried out at once with fakes.

    - Transcribe -> ``transcripts[item_id]`` or ``transcript`` (default);
    - Respond -> ``responder(request)``;
    - Speak -> ``speech_ms`` of a tone per sentence at the requested rate, then done.
    Other effects wait in ``pending``. Every event is validated with the SDK's models.
    """

    session: EngineSession
    responder: Responder = lambda request: [Say("Hello there. How can I help?")]
    transcript: str = "hello"
    transcripts: dict[str, str] = field(default_factory=dict)
    speech_ms: int = 1000
    auto: set[type] = field(default_factory=lambda: {Transcribe, Respond, Speak, Cancel})
    events: list[dict[str, Any]] = field(default_factory=list)
    pending: list[Effect] = field(default_factory=list)
    requests: list[ResponseRequest] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def start(self) -> list[dict[str, Any]]:
        return self.apply(self.session.start())

    def send(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        return self.apply(self.session.handle(event))

    def apply(self, step: Step) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        queue: list[Step] = [step]
        while queue:
            current = queue.pop(0)
            for event in current.events:
                validate_server_event(event)
                out.append(event)
            for effect in current.effects:
                if type(effect) in self.auto:
                    queue.append(self.run(effect))
                else:
                    self.pending.append(effect)
        self.events.extend(out)
        return out

    def run(self, effect: Effect) -> Step:
        if isinstance(effect, Transcribe):
            text = self.transcripts.get(effect.item_id, self.transcript)
            return self.session.on_transcript(effect.item_id, effect.content_index, text)
        if isinstance(effect, Respond):
            self.requests.append(effect.request)
            return self.session.on_actions(effect.response_id, self.responder(effect.request))
        if isinstance(effect, Speak):
            step = Step()
            for _ in effect.sentences:
                step.extend(
                    self.session.on_speech(
                        effect.response_id, effect.item_id, tone(self.speech_ms, effect.sample_rate)
                    )
                )
            return step.extend(self.session.on_speech_done(effect.response_id, effect.item_id))
        self.cancelled.append(effect.response_id)
        return Step()

    def run_pending(self) -> list[dict[str, Any]]:
        effects, self.pending = self.pending, []
        out: list[dict[str, Any]] = []
        for effect in effects:
            out.extend(self.apply(self.run(effect)))
        return out

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]
