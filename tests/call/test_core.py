"""CallCore with explicit times: playout, transcripts, responses, tools, usage, robustness.

Barge-in, DTMF and tool scenarios that need more set-up live in test_bargein.py, test_dtmf_policy.py and
test_tools.py; they share the :class:`Sim` driver and the event builders defined here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridges.base import AudioCodec, frame_bytes, silence_frame
from voice.audio.g711 import alaw_encode, ulaw_encode
from voice.call.core import (
    INTERNAL_ERROR_METRIC,
    Action,
    CallCore,
    ClearLeg,
    Control,
    Hangup,
    Metric,
    PlayFrame,
    RunTool,
    SendUpstream,
    TranscriptEntry,
    UsageReported,
)
from voice.profiles import AgentProfile, DtmfPolicy, TurnDetection
from voice.realtime.events import ServerEvent, parse_server_event

A = TypeVar("A")

# Upstream event builders (GA shapes, protocols.md §A.6), parsed like the runner does ----------------------

_seq = 0


def event(type_: str, **fields: Any) -> ServerEvent:
    global _seq
    _seq += 1
    return parse_server_event(json.dumps({"type": type_, "event_id": f"event_{_seq}", **fields}))


def response_created(rid: str = "resp_1") -> ServerEvent:
    return event(
        "response.created", response={"id": rid, "object": "realtime.response", "status": "in_progress"}
    )


def response_done(
    rid: str = "resp_1", status: str = "completed", usage: dict[str, Any] | None = None, **extra: Any
) -> ServerEvent:
    response: dict[str, Any] = {"id": rid, "object": "realtime.response", "status": status, "output": []}
    if usage is not None:
        response["usage"] = usage
    response.update(extra)
    return event("response.done", response=response)


def audio_delta(item_id: str, audio: bytes, rid: str = "resp_1") -> ServerEvent:
    return event(
        "response.output_audio.delta",
        response_id=rid,
        item_id=item_id,
        output_index=0,
        content_index=0,
        delta=base64.b64encode(audio).decode(),
    )


def audio_done(item_id: str, rid: str = "resp_1") -> ServerEvent:
    return event(
        "response.output_audio.done", response_id=rid, item_id=item_id, output_index=0, content_index=0
    )


def transcript_delta(item_id: str, delta: str, rid: str = "resp_1") -> ServerEvent:
    return event(
        "response.output_audio_transcript.delta",
        response_id=rid,
        item_id=item_id,
        output_index=0,
        content_index=0,
        delta=delta,
    )


def transcript_done(item_id: str, text: str, rid: str = "resp_1") -> ServerEvent:
    return event(
        "response.output_audio_transcript.done",
        response_id=rid,
        item_id=item_id,
        output_index=0,
        content_index=0,
        transcript=text,
    )


def speech_started(ms: int = 0) -> ServerEvent:
    return event("input_audio_buffer.speech_started", audio_start_ms=ms, item_id="item_user")


def speech_stopped(ms: int = 0) -> ServerEvent:
    return event("input_audio_buffer.speech_stopped", audio_end_ms=ms, item_id="item_user")


def function_call(call_id: str, name: str, arguments: str, rid: str = "resp_1") -> ServerEvent:
    return event(
        "response.function_call_arguments.done",
        response_id=rid,
        item_id=f"fc_{call_id}",
        output_index=0,
        call_id=call_id,
        name=name,
        arguments=arguments,
    )


def item_added(item_id: str) -> ServerEvent:
    return event(
        "conversation.item.added",
        item={
            "id": item_id,
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "x"}],
        },
    )


# Driver ----------------------------------------------------------------------------------------------------


def profile(**overrides: Any) -> AgentProfile:
    return AgentProfile(name="test", **overrides)


def encode(pcm16: bytes, codec: AudioCodec) -> bytes:
    """PCM16 at the codec's rate -> leg codec bytes."""
    if codec == "pcmu":
        return ulaw_encode(pcm16)
    if codec == "pcma":
        return alaw_encode(pcm16)
    return pcm16


def tone(ms: int, codec: AudioCodec = "pcmu", level: int = 8000) -> bytes:
    """A recognisable non-silent agent audio stand-in (a square wave), ``ms`` long, in ``codec``."""
    rate = 24000 if codec == "pcm16_24k" else 8000
    n = rate * ms // 1000
    samples = bytearray()
    for i in range(n):
        value = level if (i // 10) % 2 else -level
        samples += value.to_bytes(2, "little", signed=True)
    return encode(bytes(samples), codec)


class Sim:
    """Drives a CallCore on an explicit clock and keeps every action with its time."""

    def __init__(self, core: CallCore | None = None, **kwargs: Any) -> None:
        if core is None:
            kwargs.setdefault("reports_playback", False)
            core = CallCore(
                "call_test", kwargs.pop("profile", profile()), kwargs.pop("codec", "pcmu"), **kwargs
            )
        self.core = core
        self.now = 0
        self.log: list[tuple[int, Action]] = []

    def _keep(self, actions: list[Action]) -> list[Action]:
        assert not any(isinstance(a, Metric) and a.name == INTERNAL_ERROR_METRIC for a in actions), actions
        self.log += [(self.now, a) for a in actions]
        return actions

    def up(self, *events: ServerEvent) -> list[Action]:
        out: list[Action] = []
        for e in events:
            out += self._keep(self.core.upstream_event(e, self.now))
        return out

    def tick(self) -> list[Action]:
        return self._keep(self.core.tick(self.now))

    def run(self, ms: int, caller: bytes | None = None) -> list[Action]:
        """Advance ``ms`` in 20 ms steps: caller audio for the step (if any), then the pacer tick."""
        out: list[Action] = []
        fb = frame_bytes(self.core.codec)
        for step in range(ms // 20):
            if caller is not None:
                chunk = caller[step * fb : (step + 1) * fb]
                if chunk:
                    out += self._keep(self.core.caller_audio(chunk, self.now))
            out += self.tick()
            self.now += 20
        return out

    def dtmf(self, digit: str) -> list[Action]:
        return self._keep(self.core.caller_dtmf(digit, self.now))

    def report(self, item_id: str, played_ms: int) -> list[Action]:
        return self._keep(self.core.playback_report(item_id, played_ms, self.now))

    def result(self, call_id: str, output: str) -> list[Action]:
        return self._keep(self.core.tool_result(call_id, output, self.now))

    def end(self, reason: str = "caller hung up") -> list[Action]:
        return self._keep(self.core.end(reason, self.now))

    def all(self, kind: type[A], since: int = -1) -> list[A]:
        return [a for t, a in self.log if isinstance(a, kind) and t >= since]

    def upstream(self, type_: str, since: int = -1) -> list[dict[str, Any]]:
        return [a.event for a in self.all(SendUpstream, since) if a.event["type"] == type_]

    def all_entries(self) -> list[TranscriptEntry]:
        return self.all(TranscriptEntry)

    def entries(self, kind: str) -> list[TranscriptEntry]:
        return [a for a in self.all(TranscriptEntry) if a.kind == kind]

    def frames(self, item_id: str | None = None) -> list[PlayFrame]:
        return [f for f in self.all(PlayFrame) if item_id is None or f.item_id == item_id]

    def metrics(self, name: str) -> list[Metric]:
        return [m for m in self.all(Metric) if m.name == name]


def only(items: Iterable[A]) -> A:
    (one,) = list(items)
    return one


# Playout ----------------------------------------------------------------------------------------------------


def test_agent_audio_is_played_one_frame_per_tick_in_20ms_frames() -> None:
    sim = Sim()
    audio = tone(100)
    sim.up(response_created(), audio_delta("item_a", audio))
    actions = sim.tick()
    assert [type(a) for a in actions] == [PlayFrame]
    frame = actions[0]
    assert isinstance(frame, PlayFrame)
    assert (frame.frame, frame.item_id, frame.item_ms) == (audio[:160], "item_a", 20)
    sim.now = 20
    sim.run(200)
    frames = sim.frames()
    assert [f.item_ms for f in frames] == [20, 40, 60, 80, 100]
    assert b"".join(f.frame for f in frames) == audio


@pytest.mark.parametrize("codec", ["pcmu", "pcma", "pcm16_24k"])
def test_partial_final_frame_is_padded_with_codec_silence(codec: AudioCodec) -> None:
    sim = Sim(codec=codec)
    audio = tone(50, codec)
    sim.up(response_created(), audio_delta("item_a", audio))
    sim.run(60)
    assert [f.item_ms for f in sim.frames()] == [20, 40]  # the last 10 ms wait: more audio may come
    sim.up(audio_done("item_a"))
    sim.run(40)
    frames = sim.frames()
    assert [f.item_ms for f in frames] == [20, 40, 50]
    last = frames[-1].frame
    half = len(audio) - 2 * frame_bytes(codec)
    assert len(last) == frame_bytes(codec)
    assert last[:half] == audio[-half:] and last[half:] == silence_frame(codec)[half:]


def test_items_play_in_arrival_order_and_underrun_waits() -> None:
    sim = Sim()
    sim.up(response_created(), audio_delta("item_a", tone(40)), audio_delta("item_b", tone(40)))
    sim.run(200)
    assert [f.item_id for f in sim.frames()] == ["item_a", "item_a"]  # b waits for a to be final
    sim.up(audio_done("item_a"))
    sim.run(100)
    assert [f.item_id for f in sim.frames()] == ["item_a", "item_a", "item_b", "item_b"]


def test_agent_turn_recorded_with_full_transcript_when_played_to_the_end() -> None:
    sim = Sim()
    sim.up(response_created(), transcript_delta("item_a", "Hello "), audio_delta("item_a", tone(60)))
    sim.now = 1000
    sim.run(40)
    assert sim.entries("agent") == []
    sim.up(
        transcript_delta("item_a", "there."), audio_done("item_a"), transcript_done("item_a", "Hello there.")
    )
    sim.run(40)  # the last frame closes the item, the transcript is already final
    entry = only(sim.entries("agent"))
    assert entry.text == "Hello there."
    assert entry.t_ms == 1000  # when it started being heard
    assert entry.data == {
        "item_id": "item_a",
        "interrupted": False,
        "heard_ms": 60,
        "audio_ms": 60,
        "generated_text": "Hello there.",
    }
    sim.up(response_done())
    assert len(sim.entries("agent")) == 1


def test_agent_turn_waits_for_the_transcript_when_audio_finishes_first() -> None:
    sim = Sim()
    sim.up(response_created(), audio_delta("item_a", tone(40)), audio_done("item_a"))
    sim.run(100)
    assert sim.entries("agent") == []
    sim.up(transcript_done("item_a", "Hi."))
    assert only(sim.entries("agent")).text == "Hi."


def test_text_only_response_is_recorded_at_response_done() -> None:
    sim = Sim()
    sim.up(
        response_created(),
        event("response.output_text.delta", response_id="resp_1", item_id="item_t", output_index=0,
              content_index=0, delta="Typed answer"),
        response_done(),
    )  # fmt: skip
    entry = only(sim.entries("agent"))
    assert entry.text == "Typed answer" and entry.data["heard_ms"] is None


def test_reporting_leg_heard_ms_comes_from_reports_capped_at_sent() -> None:
    sim = Sim(reports_playback=True)
    sim.up(response_created(), audio_delta("item_a", tone(200)))
    sim.run(100)  # 5 frames = 100 ms sent
    sim.report("item_a", 60)
    assert sim.core.playout.heard_ms("item_a") == 60
    sim.report("item_a", 5000)  # a bogus report cannot exceed what was sent
    assert sim.core.playout.heard_ms("item_a") == 100


def test_reporting_leg_item_closes_on_final_report_or_grace() -> None:
    sim = Sim(reports_playback=True, playback_grace_ms=500)
    sim.up(
        response_created(),
        audio_delta("item_a", tone(40)),
        audio_done("item_a"),
        transcript_done("item_a", "A"),
    )
    sim.up(
        audio_delta("item_b", tone(40), rid="resp_1"), audio_done("item_b"), transcript_done("item_b", "B")
    )
    sim.run(100)
    assert sim.entries("agent") == []  # sent, but the leg has not said it was heard
    sim.report("item_b", 20)  # b is playing, so a was heard to the end
    assert [e.text for e in sim.entries("agent")] == ["A"]
    sim.run(600)
    assert [e.text for e in sim.entries("agent")] == ["A", "B"]  # grace: the last report never came


# Transcripts, usage, errors -----------------------------------------------------------------------------


def test_caller_transcript_and_transcription_usage() -> None:
    sim = Sim()
    sim.now = 500
    usage = {"type": "tokens", "input_tokens": 10, "output_tokens": 3, "total_tokens": 13}
    sim.up(
        event(
            "conversation.item.input_audio_transcription.delta",
            item_id="item_u",
            content_index=0,
            delta="I'd ",
        ),
        event(
            "conversation.item.input_audio_transcription.completed",
            item_id="item_u",
            content_index=0,
            transcript="I'd like a table.",
            usage=usage,
        ),
    )
    entry = only(sim.entries("caller"))
    assert (entry.text, entry.data, entry.t_ms) == ("I'd like a table.", {"item_id": "item_u"}, 500)
    reported = only(sim.all(UsageReported))
    assert reported == UsageReported("transcription", "gpt-4o-mini-transcribe", usage)
    assert [c.message.get("delta") or c.message.get("text") for c in sim.all(Control)] == [
        "I'd ",
        "I'd like a table.",
    ]


def test_response_usage_is_surfaced_without_pricing() -> None:
    sim = Sim()
    usage = {
        "total_tokens": 821,
        "input_tokens": 789,
        "output_tokens": 32,
        "input_token_details": {"text_tokens": 313, "audio_tokens": 476, "cached_tokens": 640},
        "output_token_details": {"text_tokens": 9, "audio_tokens": 23},
    }
    sim.up(response_created(), response_done(usage=usage))
    reported = only(sim.all(UsageReported))
    assert reported.kind == "response" and reported.model == "gpt-realtime"
    assert reported.usage["input_tokens"] == 789
    assert reported.usage["input_token_details"]["cached_tokens"] == 640
    assert [m.value for m in sim.metrics("usage.output_tokens")] == [32.0]


def test_upstream_error_becomes_a_transcript_error() -> None:
    sim = Sim()
    sim.up(
        event(
            "error", error={"type": "invalid_request_error", "code": "bad", "message": "Nope", "param": "x"}
        )
    )
    entry = only(sim.entries("error"))
    assert entry.text == "Nope" and entry.data["code"] == "bad"
    assert sim.metrics("upstream.error")


def test_failed_response_is_recorded_as_an_error() -> None:
    sim = Sim()
    sim.up(
        response_created(),
        response_done(
            status="failed", status_details={"type": "failed", "error": {"type": "server_error", "code": "x"}}
        ),
    )
    assert only(sim.entries("error")).data["type"] == "response_failed"


def test_unknown_and_malformed_events_only_count() -> None:
    sim = Sim()
    assert sim.up(parse_server_event('{"type":"response.brand_new","x":1}')) == [
        Metric("upstream.unknown_event")
    ]
    assert sim.up(parse_server_event("not json")) == [Metric("upstream.malformed_event")]
    assert sim.up(parse_server_event('{"type":"response.output_audio.delta"}')) == [
        Metric("upstream.malformed_event")
    ]
    assert sim.up(event("rate_limits.updated", rate_limits=[])) == []


def test_bad_base64_audio_is_counted_and_ignored() -> None:
    sim = Sim()
    bad = event(
        "response.output_audio.delta",
        response_id="r",
        item_id="i",
        output_index=0,
        content_index=0,
        delta="!!notbase64",
    )
    assert sim.up(bad) == [Metric("upstream.bad_audio")]
    assert sim.run(40) == []


def test_caller_audio_is_forwarded_upstream_unchanged() -> None:
    sim = Sim()
    audio = tone(20)
    actions = sim.core.caller_audio(audio, 0)
    append = only(a for a in actions if isinstance(a, SendUpstream))
    assert append.event["type"] == "input_audio_buffer.append"
    assert base64.b64decode(append.event["audio"]) == audio
    assert Sim(forward_audio=False).core.caller_audio(audio, 0) == []


def test_session_event_uses_the_leg_format_and_given_tools() -> None:
    core = CallCore("c", profile(), "pcma", reports_playback=False)
    session = core.session_event(
        tools=[{"type": "function", "name": "t", "description": "", "parameters": {}}]
    )
    assert session["type"] == "session.update"
    assert session["session"]["audio"]["input"]["format"] == {"type": "audio/pcma"}
    assert session["session"]["audio"]["output"]["format"] == {"type": "audio/pcma"}
    assert [t["name"] for t in session["session"]["tools"]] == ["t"]


# Responses ----------------------------------------------------------------------------------------------


def test_response_create_waits_for_the_active_response() -> None:
    sim = Sim(profile=profile(dtmf=DtmfPolicy(barge_in=False)))
    sim.up(response_created("resp_1"))
    sim.dtmf("5")
    assert sim.upstream("conversation.item.create") and not sim.upstream("response.create")
    sim.up(response_done("resp_1"))
    assert len(sim.upstream("response.create")) == 1


def test_wanted_response_is_satisfied_by_a_server_response_after_our_item() -> None:
    sim = Sim()
    sim.up(speech_started())  # the caller is talking: the server will create the response itself
    sim.dtmf("5")
    item_id = sim.upstream("conversation.item.create")[0]["item"]["id"]
    assert not sim.upstream("response.create")
    sim.up(speech_stopped(), item_added(item_id), response_created("resp_auto"), response_done("resp_auto"))
    sim.run(2000)
    assert sim.upstream("response.create") == []  # the auto response already saw the key


def test_wanted_response_is_sent_if_the_server_response_started_before_our_item() -> None:
    sim = Sim()
    sim.up(speech_started())
    sim.dtmf("5")
    item_id = sim.upstream("conversation.item.create")[0]["item"]["id"]
    sim.up(speech_stopped(), response_created("resp_auto"), item_added(item_id), response_done("resp_auto"))
    assert len(sim.upstream("response.create")) == 1


def test_wanted_response_is_sent_after_grace_if_the_server_never_responds() -> None:
    sim = Sim(auto_response_grace_ms=1500)
    sim.up(speech_started())
    sim.dtmf("5")
    sim.up(speech_stopped())
    sim.run(1400)
    assert sim.upstream("response.create") == []
    sim.run(200)
    assert len(sim.upstream("response.create")) == 1


def test_manual_turns_send_response_create_at_once() -> None:
    sim = Sim(profile=profile(turn_detection=TurnDetection(enabled=False)))
    sim.dtmf("7")
    assert len(sim.upstream("response.create")) == 1
    assert sim.core.upstream_interrupts is False


def test_end_records_unfinished_turn_and_stops_everything() -> None:
    sim = Sim()
    sim.up(
        response_created(), transcript_delta("item_a", "One two three four"), audio_delta("item_a", tone(400))
    )
    sim.run(200)
    sim.end("caller hung up")
    agent = only(sim.entries("agent"))
    assert agent.data["interrupted"] is True and agent.data["heard_ms"] == 200
    assert only(sim.entries("system")).text == "call ended: caller hung up"
    assert Control({"type": "call_end", "reason": "caller hung up"}) in sim.all(Control)
    assert sim.run(100) == [] and sim.up(response_done()) == [] and sim.end() == []


# Tool round trip (the core side; registry tests are in test_tools.py) --------------------------------------


def test_tool_call_runs_and_result_goes_back_with_response_create() -> None:
    sim = Sim()
    sim.up(response_created(), function_call("call_1", "book_table", '{"party_size": 2}'))
    run = only(sim.all(RunTool))
    assert run == RunTool("call_1", "book_table", {"party_size": 2})
    assert only(sim.entries("tool_call")).data == {
        "name": "book_table",
        "call_id": "call_1",
        "arguments": '{"party_size": 2}',
    }
    sim.up(response_done())
    sim.result("call_1", '{"confirmation": "ABC"}')
    item = only(sim.upstream("conversation.item.create"))["item"]
    assert item["type"] == "function_call_output" and item["call_id"] == "call_1"
    assert item["output"] == '{"confirmation": "ABC"}'
    assert len(sim.upstream("response.create")) == 1
    assert only(sim.entries("tool_result")).data["error"] is None


def test_tool_result_while_a_response_is_active_queues_response_create() -> None:
    sim = Sim()
    sim.up(
        response_created("resp_1"), function_call("call_1", "check_availability", '{"date": "2026-12-24"}')
    )
    sim.result("call_1", "{}")  # resp_1 is still active
    assert sim.upstream("conversation.item.create") and not sim.upstream("response.create")
    sim.up(response_done("resp_1"))
    assert len(sim.upstream("response.create")) == 1


def test_bad_tool_json_gets_an_immediate_error_output() -> None:
    sim = Sim()
    sim.up(response_created(), function_call("call_1", "book_table", "{not json"))
    assert sim.all(RunTool) == []
    output = only(sim.upstream("conversation.item.create"))["item"]["output"]
    assert "not valid JSON" in json.loads(output)["error"]
    assert only(sim.entries("tool_result")).data["error"]
    sim.up(response_done())
    assert len(sim.upstream("response.create")) == 1


def test_tool_error_outputs_are_marked_in_the_transcript_and_unknown_results_ignored() -> None:
    sim = Sim()
    sim.up(function_call("call_1", "book_table", "{}"))
    sim.result("call_1", '{"error": "invalid arguments"}')
    assert only(sim.entries("tool_result")).data["error"] == "invalid arguments"
    assert sim.result("call_1", "{}") == [Metric("tool.unexpected_result")]
    assert sim.up(function_call("call_1", "book_table", "{}")) == [Metric("tool.duplicate_call")]


def test_end_call_hangs_up_only_after_the_goodbye_has_been_played() -> None:
    sim = Sim()
    sim.up(
        response_created("resp_1"), function_call("call_1", "end_call", '{"reason": "caller said goodbye"}')
    )
    sim.up(response_done("resp_1"))
    assert len(sim.upstream("response.create")) == 1  # the model may say goodbye
    sim.run(200)
    assert sim.all(Hangup) == []  # the follow-up response has not even started
    sim.up(response_created("resp_2"), audio_delta("item_bye", tone(300), rid="resp_2"))
    sim.up(audio_done("item_bye", rid="resp_2"), response_done("resp_2"))
    start = sim.now
    sim.run(400)
    hangup = only(sim.all(Hangup))
    assert hangup.reason == "caller said goodbye"
    hung_at = next(t for t, a in sim.log if isinstance(a, Hangup))
    last_frame_at = max(t for t, a in sim.log if isinstance(a, PlayFrame))
    assert last_frame_at == start + 280 and hung_at == start + 300  # right after the last 20 ms frame


def test_end_call_gives_up_waiting_after_the_timeout() -> None:
    sim = Sim(end_call_timeout_ms=3000)
    sim.up(response_created("resp_1"), function_call("call_1", "end_call", "{}"))
    sim.run(2900)
    assert sim.all(Hangup) == []
    sim.run(200)
    assert only(sim.all(Hangup)).reason == "agent ended the call"


def test_transfer_call_uses_argument_or_default_after_audio() -> None:
    sim = Sim(default_transfer_target="sip:staff@example.com")
    sim.up(
        response_created(), function_call("call_1", "transfer_call", '{"target": null, "reason": "asked"}')
    )
    output = json.loads(only(sim.upstream("conversation.item.create"))["item"]["output"])
    assert output["target"] == "sip:staff@example.com"
    sim.up(response_done())
    sim.up(response_created("resp_2"), response_done("resp_2"))
    sim.run(40)
    from voice.call.core import Transfer

    assert only(sim.all(Transfer)).target == "sip:staff@example.com"
    sim2 = Sim()
    sim2.up(function_call("call_2", "transfer_call", '{"target": "+15550100", "reason": "asked"}'))
    sim2.run(40)
    assert sim2.all(Transfer) == []  # waiting for the follow-up response ("connecting you now")
    sim2.up(response_created("resp_3"), response_done("resp_3"))
    sim2.run(40)
    assert only(sim2.all(Transfer)).target == "+15550100"


@pytest.mark.parametrize(
    ("kwargs", "arguments", "problem"),
    [
        ({}, '{"target": null, "reason": "x"}', "no transfer target"),
        ({"can_transfer": False}, '{"target": "+1555", "reason": "x"}', "cannot be transferred"),
        ({}, '{"target": "+1555"}', "invalid arguments"),
    ],
)
def test_transfer_call_errors_go_back_to_the_model(
    kwargs: dict[str, Any], arguments: str, problem: str
) -> None:
    sim = Sim(**kwargs)
    sim.up(function_call("call_1", "transfer_call", arguments))
    output = json.loads(only(sim.upstream("conversation.item.create"))["item"]["output"])
    assert problem in output["error"]
    assert len(sim.upstream("response.create")) == 1
    sim.run(100)
    from voice.call.core import Transfer

    assert sim.all(Transfer) == []


def test_send_dtmf_validates_digits() -> None:
    from voice.call.core import SendDtmf

    sim = Sim()
    sim.up(function_call("call_1", "send_dtmf", '{"digits": "12#"}'))
    assert only(sim.all(SendDtmf)).digits == "12#"
    assert only(sim.entries("dtmf")).data == {"digits": "12#", "direction": "out"}
    sim.up(function_call("call_2", "send_dtmf", '{"digits": "12x"}'))
    assert len(sim.all(SendDtmf)) == 1
    outputs = [json.loads(e["item"]["output"]) for e in sim.upstream("conversation.item.create")]
    assert outputs[0] == {"ok": True, "sent": "12#"}
    assert "digits" in outputs[1]["error"]


def test_clear_leg_is_first_on_barge_in() -> None:
    sim = Sim()
    sim.up(response_created(), audio_delta("item_a", tone(400)))
    sim.run(100)
    actions = sim.up(speech_started())
    assert isinstance(actions[0], ClearLeg)


# Robustness: random input sequences never raise -----------------------------------------------------------


_items = st.sampled_from(["i1", "i2", "i3"])
_responses = st.sampled_from(["r1", "r2"])
_calls = st.sampled_from(["c1", "c2"])
_names = st.sampled_from(["book_table", "end_call", "transfer_call", "send_dtmf", "x"])
_args = st.one_of(
    st.text(max_size=20),
    st.sampled_from(['{"digits": "12#"}', '{"target": "+1", "reason": "r"}', "{}", "[]", '{"reason": null}']),
)
_delta = st.builds(lambda i, r, n: audio_delta(i, b"\x55" * n, r), _items, _responses, st.integers(0, 2000))
_upstream = st.one_of(
    st.builds(audio_done, _items, _responses),
    st.builds(transcript_delta, _items, st.text(max_size=10), _responses),
    st.builds(transcript_done, _items, st.text(max_size=10), _responses),
    st.builds(response_created, _responses),
    st.builds(
        lambda r, s: response_done(r, status=s, usage={"input_tokens": 3, "output_tokens": 1}),
        _responses,
        st.sampled_from(["completed", "cancelled", "failed", "incomplete"]),
    ),
    st.builds(function_call, _calls, _names, _args, _responses),
    st.builds(lambda ms: speech_started(ms), st.integers(0, 10_000)),
    st.builds(lambda ms: speech_stopped(ms), st.integers(0, 10_000)),
    st.builds(item_added, st.text(min_size=1, max_size=8)),
    st.builds(
        lambda d: event("input_audio_buffer.dtmf_event_received", event=d, received_at=1), st.text(max_size=3)
    ),
    st.builds(lambda m: event("error", error={"type": "server_error", "message": m}), st.text(max_size=10)),
    st.builds(
        lambda i, t: event(
            "conversation.item.input_audio_transcription.completed",
            item_id=i,
            content_index=0,
            transcript=t,
            usage={"type": "duration", "seconds": 1.5},
        ),
        _items,
        st.text(max_size=10),
    ),
    st.builds(parse_server_event, st.one_of(st.text(max_size=40), st.binary(max_size=40))),
)
_op_args: dict[str, st.SearchStrategy[Any]] = {
    "delta": _delta,
    "up": _upstream,
    "tick": st.integers(1, 40),
    "audio": st.binary(max_size=400),
    "dtmf": st.text(max_size=2),
    "report": st.tuples(_items, st.integers(-50, 5000)),
    "result": st.tuples(_calls, st.text(max_size=20)),
}
_ops = st.sampled_from(
    ["delta"] * 4 + ["up"] * 6 + ["tick"] * 4 + ["audio", "dtmf", "report", "result"]
).flatmap(lambda kind: st.tuples(st.just(kind), _op_args[kind]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    codec=st.sampled_from(["pcmu", "pcma", "pcm16_24k"]),
    reports=st.booleans(),
    interrupts=st.booleans(),
    mode=st.sampled_from(["each", "collect"]),
    ops=st.lists(_ops, min_size=5, max_size=120),
)
def test_random_event_sequences_never_raise(
    codec: AudioCodec, reports: bool, interrupts: bool, mode: str, ops: list[tuple[str, Any]]
) -> None:
    sim = Sim(
        codec=codec,
        reports_playback=reports,
        upstream_interrupts=interrupts,
        profile=profile(dtmf=DtmfPolicy(mode=mode, timeout_ms=200)),
        default_transfer_target="sip:desk@example.com",
    )
    for op, arg in ops:
        if op in ("up", "delta"):
            sim.up(arg)
        elif op == "audio":
            sim._keep(sim.core.caller_audio(arg, sim.now))
        elif op == "dtmf":
            sim.dtmf(arg)
        elif op == "report":
            sim.report(*arg)
        elif op == "result":
            sim.result(*arg)
        else:
            sim.run(20 * arg)
    sim.end()
    # Invariants: truncation never asks for more than was played of that item; one hang-up at most.
    played: dict[str, int] = {}
    for _, action in sim.log:
        if isinstance(action, PlayFrame):
            played[action.item_id] = max(played.get(action.item_id, 0), action.item_ms)
        elif isinstance(action, SendUpstream) and action.event["type"] == "conversation.item.truncate":
            assert action.event["audio_end_ms"] <= played.get(action.event["item_id"], 0)
    assert len(sim.all(Hangup)) <= 1
    assert sim.run(40) == []


def test_unanswered_response_create_is_forgotten_after_the_timeout() -> None:
    sim = Sim(response_create_timeout_ms=5000, profile=profile(dtmf=DtmfPolicy(barge_in=False)))
    sim.dtmf("1")
    sim.run(4900)
    sim.dtmf("2")  # the first response.create is still outstanding: do not stack another
    assert len(sim.upstream("response.create")) == 1
    sim.run(200)
    assert sim.metrics("response.create_unanswered")
    assert len(sim.upstream("response.create")) == 2


def test_refused_response_create_is_retried_when_wanted_again() -> None:
    sim = Sim()
    sim.dtmf("1")
    create = only(sim.upstream("response.create"))
    sim.up(
        event(
            "error",
            error={"type": "invalid_request_error", "message": "busy", "event_id": create["event_id"]},
        )
    )
    sim.dtmf("2")
    assert len(sim.upstream("response.create")) == 2


def test_hold_stops_playout_and_a_barge_in_after_it_truncates_at_what_was_heard() -> None:
    sim = Sim()
    sim.up(response_created(), audio_delta("item_a", tone(2000)), audio_done("item_a"))
    sim.run(400)  # 400 ms of the answer played
    assert len(sim.all(PlayFrame)) == 20
    held_at = sim.now
    sim._keep(sim.core.hold(True, sim.now))
    sim.run(600)  # on hold: nothing is played, so nothing more counts as heard
    assert not sim.all(PlayFrame, since=held_at)
    assert sim.core.agent_speaking
    sim._keep(sim.core.hold(True, sim.now))  # a repeated hold changes nothing
    sim._keep(sim.core.hold(False, sim.now))
    resumed_at = sim.now
    sim.run(200)  # playout goes on where it stopped
    resumed = sim.all(PlayFrame, since=resumed_at)
    assert len(resumed) == 10 and resumed[0].item_ms == 420
    sim.up(speech_started(sim.now))
    (truncate,) = sim.upstream("conversation.item.truncate")
    assert truncate["item_id"] == "item_a" and truncate["audio_end_ms"] == 600
    metrics = [a.name for a in sim.all(Metric)]
    assert metrics.count("call.held") == 1 and metrics.count("call.resumed") == 1


def test_caller_audio_is_gathered_into_appends_of_append_ms_and_a_key_sends_what_is_gathered() -> None:
    sim = Sim(append_ms=60)
    frames = [bytes([k]) * 160 for k in range(7)]
    for k, frame in enumerate(frames):
        sim._keep(sim.core.caller_audio(frame, 20 * k))
    appends = [base64.b64decode(e["audio"]) for e in sim.upstream("input_audio_buffer.append")]
    assert appends == [b"".join(frames[0:3]), b"".join(frames[3:6])]  # 60 ms each; frame 7 waits
    sim.dtmf("5")
    appends = [base64.b64decode(e["audio"]) for e in sim.upstream("input_audio_buffer.append")]
    assert appends[-1] == frames[6]  # the key's item comes after the audio before it
    sent = [a.event["type"] for a in sim.all(SendUpstream)]
    assert sent.index("input_audio_buffer.append", 2) < sent.index("conversation.item.create")


def test_appends_of_one_frame_each_by_default() -> None:
    sim = Sim()
    for k in range(3):
        sim._keep(sim.core.caller_audio(bytes([k]) * 160, 20 * k))
    assert len(sim.upstream("input_audio_buffer.append")) == 3
