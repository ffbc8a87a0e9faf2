"""The engine's sans-I/O session core: protocol rules with byte vectors and explicit values.

Every event the core emits is validated against the SDK's ``RealtimeServerEvent`` union (see
``helpers.Driver``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.engine.helpers import Driver, b64, new_session, silence, tone, types
from voice.audio.g711 import ulaw_encode
from voice.engine.effects import Cancel, Respond, Speak, Transcribe
from voice.engine.responder import CallTool, ResponseRequest, Say
from voice.engine.responses import split_sentences

SpeechFn = Callable[[str, int], bytes]


def error_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1, types(events)
    body: dict[str, Any] = errors[0]["error"]
    return body


def manual(driver: Driver, **session: Any) -> None:
    driver.start()
    driver.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}, **session},
        }
    )


def user_text(driver: Driver, text: str) -> str:
    events = driver.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        }
    )
    item_id: str = events[0]["item"]["id"]
    return item_id


# -- session.created / session.update ----------------------------------------------------------------------


def test_session_created_carries_the_full_default_session() -> None:
    driver = Driver(new_session(model="gpt-realtime-mini"))
    (created,) = driver.start()
    assert created["type"] == "session.created"
    session = created["session"]
    assert session["id"].startswith("sess_")
    assert session["object"] == "realtime.session"
    assert session["type"] == "realtime"
    assert session["model"] == "gpt-realtime-mini"
    assert session["output_modalities"] == ["audio"]
    assert session["tools"] == [] and session["tool_choice"] == "auto"
    assert session["max_output_tokens"] == "inf"
    assert session["tracing"] is None and session["truncation"] == "auto"
    assert session["expires_at"] > 1_700_000_000
    assert session["instructions"]
    audio_in = session["audio"]["input"]
    assert audio_in["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio_in["transcription"] is None and audio_in["noise_reduction"] is None
    assert audio_in["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }
    assert session["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "marin",
        "speed": 1.0,
    }


def test_session_update_merges_only_the_fields_present() -> None:
    driver = Driver(new_session())
    before = driver.start()[0]["session"]
    (updated,) = driver.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "instructions": "Be brief.",
                "audio": {"output": {"voice": "cedar"}, "input": {"transcription": {"model": "whisper-1"}}},
            },
        }
    )
    assert updated["type"] == "session.updated"
    after = updated["session"]
    assert after["instructions"] == "Be brief."
    assert after["audio"]["output"] == {**before["audio"]["output"], "voice": "cedar"}
    assert after["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    assert after["audio"]["input"]["turn_detection"] == before["audio"]["input"]["turn_detection"]
    assert after["audio"]["input"]["format"] == before["audio"]["input"]["format"]
    assert {k: v for k, v in after.items() if k not in ("instructions", "audio")} == {
        k: v for k, v in before.items() if k not in ("instructions", "audio")
    }


def test_session_update_clears_with_null_and_empty() -> None:
    driver = Driver(new_session())
    driver.start()
    tools = [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}]
    session = driver.send({"type": "session.update", "session": {"type": "realtime", "tools": tools}})[0][
        "session"
    ]
    assert session["tools"] == tools
    (updated,) = driver.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "tools": [],
                "instructions": "",
                "audio": {"input": {"turn_detection": None, "format": {"type": "audio/pcmu"}}},
            },
        }
    )
    session = updated["session"]
    assert session["tools"] == [] and session["instructions"] == ""
    assert session["audio"]["input"]["turn_detection"] is None
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}


def test_turn_detection_objects_get_server_defaults() -> None:
    driver = Driver(new_session())
    driver.start()
    (updated,) = driver.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 200}}},
            },
        }
    )
    td = updated["session"]["audio"]["input"]["turn_detection"]
    assert td["silence_duration_ms"] == 200
    assert td["threshold"] == 0.5 and td["prefix_padding_ms"] == 300 and td["create_response"] is True


@pytest.mark.parametrize(
    ("session", "code", "param", "message"),
    [
        ({"type": "realtime", "model": "gpt-4o"}, "invalid_value", "session.model", None),
        (
            {"type": "realtime", "bogus": 1},
            "unknown_parameter",
            "session.bogus",
            "Unknown parameter: 'session.bogus'.",
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/wav"}}}},
            "invalid_value",
            "session.audio.input.format.type",
            "Invalid value: 'audio/wav'. Supported values are: 'audio/pcm', 'audio/pcmu', and 'audio/pcma'.",
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            "invalid_value",
            "session.audio.input.format.rate",
            None,
        ),
        (
            {"type": "realtime", "instructions": 5},
            "invalid_type",
            "session.instructions",
            "Invalid type for 'session.instructions': expected a string, but got an integer instead.",
        ),
        (
            {"type": "realtime", "audio": {"output": {"speed": 2.0}}},
            "decimal_above_max_value",
            "session.audio.output.speed",
            None,
        ),
        (
            {"type": "realtime", "output_modalities": ["audio", "text"]},
            "invalid_value",
            "session.output_modalities",
            None,
        ),
        (
            {"type": "realtime", "max_output_tokens": 0},
            "integer_below_min_value",
            "session.max_output_tokens",
            None,
        ),
        ({"instructions": "x"}, "missing_required_parameter", "session.type", None),
    ],
)
def test_bad_session_updates_are_errors_and_change_nothing(
    session: dict[str, Any], code: str, param: str, message: str | None
) -> None:
    driver = Driver(new_session())
    before = driver.start()[0]["session"]
    events = driver.send(
        {
            "type": "session.update",
            "event_id": "evt_1",
            "session": {**session, "instructions": "changed"} if "instructions" not in session else session,
        }
    )
    error = error_of(events)
    assert (error["type"], error["code"], error["param"], error["event_id"]) == (
        "invalid_request_error",
        code,
        param,
        "evt_1",
    )
    if message is not None:
        assert error["message"] == message
    assert driver.session.config == before


def test_voice_cannot_change_after_audio_was_produced() -> None:
    driver = Driver(new_session())
    manual(driver)
    driver.send(
        {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "ash"}}}}
    )
    driver.send({"type": "response.create"})
    assert driver.of_type("response.output_audio.delta")
    events = driver.send(
        {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "echo"}}}}
    )
    error = error_of(events)
    assert error["code"] == "cannot_update_voice"
    assert error["message"] == "Cannot update a conversation's voice if assistant audio is present."
    same = driver.send(
        {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "ash"}}}}
    )
    assert types(same) == ["session.updated"]


def test_unknown_event_type_is_an_error_and_the_session_goes_on() -> None:
    driver = Driver(new_session())
    driver.start()
    error = error_of(driver.send({"type": "nope.nothing", "event_id": "e7"}))
    assert error["param"] == "type" and error["event_id"] == "e7"
    assert types(driver.send({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]


# -- input audio: manual turns -------------------------------------------------------------------------------


def test_commit_of_an_empty_buffer_is_openais_error() -> None:
    driver = Driver(new_session())
    manual(driver)
    error = error_of(driver.send({"type": "input_audio_buffer.commit", "event_id": "c1"}))
    assert error == {
        "type": "invalid_request_error",
        "code": "input_audio_buffer_commit_empty",
        "message": "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
        "but buffer only has 0.00ms of audio.",
        "param": None,
        "event_id": "c1",
    }


def test_commit_of_a_short_buffer_reports_its_length() -> None:
    driver = Driver(new_session())
    manual(driver)
    driver.send({"type": "input_audio_buffer.append", "audio": b64(silence(50, 24000))})
    assert (
        "only has 50.00ms of audio" in error_of(driver.send({"type": "input_audio_buffer.commit"}))["message"]
    )


def test_manual_commit_adds_a_user_audio_item_and_transcribes_it() -> None:
    driver = Driver(new_session(), auto=set())
    manual(driver, audio={"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}})
    audio = tone(400, 24000)
    assert driver.send({"type": "input_audio_buffer.append", "audio": b64(audio)}) == []
    events = driver.send({"type": "input_audio_buffer.commit"})
    assert types(events) == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    committed, added, _ = events
    assert committed["previous_item_id"] is None
    item = added["item"]
    assert item["id"] == committed["item_id"]
    assert item["role"] == "user" and item["status"] == "completed"
    assert item["content"] == [{"type": "input_audio", "transcript": None}]
    (effect,) = driver.pending
    assert isinstance(effect, Transcribe)
    assert effect.item_id == item["id"]
    assert len(effect.pcm16_16k) == 2 * 16000 * 400 // 1000
    events = driver.run_pending()
    assert types(events) == [
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    ]
    completed = events[1]
    assert completed["transcript"] == "hello"
    assert completed["usage"]["input_token_details"] == {"text_tokens": 0, "audio_tokens": 4}
    retrieved = driver.send({"type": "conversation.item.retrieve", "item_id": item["id"]})[0]
    assert retrieved["item"]["content"] == [
        {"type": "input_audio", "audio": b64(audio), "transcript": "hello"}
    ]


def test_clear_empties_the_buffer() -> None:
    driver = Driver(new_session())
    manual(driver)
    driver.send({"type": "input_audio_buffer.append", "audio": b64(tone(300, 24000))})
    assert types(driver.send({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    assert (
        error_of(driver.send({"type": "input_audio_buffer.commit"}))["code"]
        == "input_audio_buffer_commit_empty"
    )


def test_bad_base64_audio_is_an_error() -> None:
    driver = Driver(new_session())
    driver.start()
    error = error_of(driver.send({"type": "input_audio_buffer.append", "audio": "***"}))
    assert error["param"] == "audio"


def test_without_recognition_transcription_completes_empty() -> None:
    driver = Driver(new_session(recognition=False), auto=set())
    manual(driver, audio={"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}})
    driver.send({"type": "input_audio_buffer.append", "audio": b64(tone(300, 24000))})
    events = driver.send({"type": "input_audio_buffer.commit"})
    assert types(events)[-1] == "conversation.item.input_audio_transcription.completed"
    assert events[-1]["transcript"] == ""
    assert driver.pending == []
    driver.send({"type": "response.create"})
    (respond,) = driver.pending
    assert isinstance(respond, Respond)
    assert respond.request.turns[-1].role == "user" and respond.request.turns[-1].text == ""


# -- server VAD with real speech -----------------------------------------------------------------------------


def _onset_and_end_ms(pcm: bytes, rate: int) -> tuple[float, float]:
    import numpy as np

    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    loud = np.nonzero(samples > 1000)[0]
    return 1000 * loud[0] / rate, 1000 * loud[-1] / rate


def _append_in_chunks(driver: Driver, audio: bytes, chunk: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for start in range(0, len(audio), chunk):
        out.extend(
            driver.send({"type": "input_audio_buffer.append", "audio": b64(audio[start : start + chunk])})
        )
    return out


def test_server_vad_turn_from_real_speech(speech: SpeechFn) -> None:
    words = speech("I would like to book a table for four people", 24000)
    onset, end = _onset_and_end_ms(words, 24000)
    audio = silence(1000, 24000) + words + silence(1500, 24000)
    driver = Driver(new_session(), transcript="I would like to book a table for four people")
    driver.start()
    events = _append_in_chunks(driver, audio, 960)  # 20 ms chunks
    kinds = types(events)
    assert kinds[:5] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    started, stopped, committed = events[0], events[1], events[2]
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    assert abs(started["audio_start_ms"] - (1000 + onset - 300)) <= 120
    assert abs(stopped["audio_end_ms"] - (1000 + end + 500)) <= 150
    # The committed item holds the audio from the start (prefix padding included) to the stop.
    retrieved = driver.send({"type": "conversation.item.retrieve", "item_id": committed["item_id"]})[0]
    stored = base64.b64decode(retrieved["item"]["content"][0]["audio"])
    assert abs(len(stored) / 48 - (stopped["audio_end_ms"] - started["audio_start_ms"])) <= 25
    # create_response: a response follows, answered after the transcript came in.
    assert "response.created" in kinds and "response.done" in kinds
    assert driver.requests[0].turns[-1].text == "I would like to book a table for four people"
    done = driver.of_type("response.done")[0]["response"]
    assert done["status"] == "completed"


def test_server_vad_with_pcmu_input(speech: SpeechFn) -> None:
    words = speech("What are your opening hours", 8000)
    audio = ulaw_encode(silence(600, 8000) + words + silence(1200, 8000))
    driver = Driver(new_session())
    driver.start()
    driver.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcmu"},
                        "turn_detection": {"type": "server_vad", "create_response": False},
                    },
                    "output": {"format": {"type": "audio/pcmu"}},
                },
            },
        }
    )
    events = _append_in_chunks(driver, audio, 160)
    assert types(events)[:3] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ]
    assert "response.created" not in types(events)
    onset, _ = _onset_and_end_ms(words, 8000)
    assert abs(events[0]["audio_start_ms"] - (600 + onset - 300)) <= 120
    # pcmu output: deltas are µ-law bytes, 8 bytes per ms.
    driver.send({"type": "response.create"})
    deltas = [base64.b64decode(e["delta"]) for e in driver.of_type("response.output_audio.delta")]
    assert deltas and sum(len(d) for d in deltas) == 8 * driver.speech_ms * 2  # two sentences of 1000 ms


def test_speech_interrupts_the_response_in_progress(speech: SpeechFn) -> None:
    driver = Driver(new_session(), auto={Transcribe, Respond, Cancel})
    driver.start()
    user_text(driver, "hello")
    driver.send({"type": "response.create"})
    (speak,) = driver.pending
    assert isinstance(speak, Speak)
    driver.pending.clear()
    driver.apply(driver.session.on_speech(speak.response_id, speak.item_id, tone(500, 24000)))
    # The caller starts talking: the response is cancelled with reason turn_detected.
    events = _append_in_chunks(driver, silence(200, 24000) + speech("Wait a moment", 24000), 960)
    kinds = types(events)
    assert kinds[0] == "input_audio_buffer.speech_started"
    assert kinds[1:7] == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    done = driver.of_type("response.done")[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert done["output"][0]["status"] == "incomplete"
    assert done["output"][0]["content"][0]["transcript"] == "Hello there."
    assert driver.cancelled == [speak.response_id]
    # Late synthesis results for the cancelled response are ignored.
    assert driver.session.on_speech(speak.response_id, speak.item_id, tone(500, 24000)).events == []


def test_interrupt_response_false_lets_the_response_finish(speech: SpeechFn) -> None:
    driver = Driver(new_session(), auto={Transcribe, Respond, Cancel})
    driver.start()
    driver.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "interrupt_response": False}}},
            },
        }
    )
    user_text(driver, "hello")
    driver.send({"type": "response.create"})
    events = _append_in_chunks(driver, silence(200, 24000) + speech("Wait a moment", 24000), 960)
    assert "input_audio_buffer.speech_started" in types(events)
    assert "response.done" not in types(events)
    assert driver.session.active_response_id is not None


def test_idle_timeout_commits_the_silence_and_responds() -> None:
    driver = Driver(new_session(), transcript="")
    driver.start()
    td = {"type": "server_vad", "idle_timeout_ms": 5000}
    driver.send(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": td}}},
        }
    )
    user_text(driver, "hello")
    driver.send({"type": "response.create"})  # 2000 ms of agent audio: the deadline is 2000 + 5000 ms
    events = _append_in_chunks(driver, silence(6900, 24000), 960)
    assert events == []
    events = _append_in_chunks(driver, silence(200, 24000), 960)
    kinds = types(events)
    assert kinds[:4] == [
        "input_audio_buffer.timeout_triggered",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert "response.created" in kinds and kinds[-1] == "response.done"
    triggered = events[0]
    assert triggered["audio_end_ms"] == 7000 and triggered["audio_start_ms"] == 2000
    assert triggered["item_id"] == events[1]["item_id"]
    assert _append_in_chunks(driver, silence(3000, 24000), 960) == []  # re-armed from the new response


# -- conversation items ------------------------------------------------------------------------------------


def test_item_create_orders_items_by_previous_item_id() -> None:
    driver = Driver(new_session())
    manual(driver)
    first = user_text(driver, "one")
    events = driver.send(
        {
            "type": "conversation.item.create",
            "previous_item_id": "root",
            "item": {
                "type": "message",
                "role": "system",
                "content": [{"type": "input_text", "text": "zero"}],
            },
        }
    )
    assert types(events) == ["conversation.item.added", "conversation.item.done"]
    zero = events[0]["item"]["id"]
    assert events[0]["previous_item_id"] is None
    events = driver.send(
        {
            "type": "conversation.item.create",
            "previous_item_id": zero,
            "item": {
                "id": "mine",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "half"}],
            },
        }
    )
    assert events[0]["previous_item_id"] == zero and events[0]["item"]["id"] == "mine"
    assert [item.id for item in driver.session.conversation] == [zero, "mine", first]


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        (
            {
                "previous_item_id": "nope",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]},
            },
            "invalid_value",
            "previous_item_id",
        ),
        (
            {
                "item": {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_audio", "transcript": "x"}],
                }
            },
            "invalid_value",
            "item.content[0].type",
        ),
        ({"item": {"type": "message", "role": "wizard", "content": []}}, "invalid_value", "item.role"),
        (
            {"item": {"type": "function_call_output", "output": "{}"}},
            "missing_required_parameter",
            "item.call_id",
        ),
        ({"item": {"type": "function_call", "arguments": "{}"}}, "missing_required_parameter", "item.name"),
        (
            {
                "item": {
                    "type": "message",
                    "role": "system",
                    "content": [{"type": "input_audio", "audio": ""}],
                }
            },
            "invalid_value",
            "item.content[0].type",
        ),
    ],
)
def test_bad_item_creates_are_errors(event: dict[str, Any], code: str, param: str) -> None:
    driver = Driver(new_session())
    manual(driver)
    error = error_of(driver.send({"type": "conversation.item.create", **event}))
    assert (error["code"], error["param"]) == (code, param)
    assert len(driver.session.conversation) == 0


def test_duplicate_item_id_is_an_error() -> None:
    driver = Driver(new_session())
    manual(driver)
    item = {"id": "same", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}
    driver.send({"type": "conversation.item.create", "item": item})
    assert error_of(driver.send({"type": "conversation.item.create", "item": item}))["param"] == "item.id"


def test_delete_and_retrieve() -> None:
    driver = Driver(new_session())
    manual(driver)
    item_id = user_text(driver, "hi")
    (retrieved,) = driver.send({"type": "conversation.item.retrieve", "item_id": item_id})
    assert retrieved["item"]["content"] == [{"type": "input_text", "text": "hi"}]
    assert driver.send({"type": "conversation.item.delete", "item_id": item_id}) == [
        {"type": "conversation.item.deleted", "event_id": driver.events[-1]["event_id"], "item_id": item_id}
    ]
    error = error_of(driver.send({"type": "conversation.item.delete", "item_id": item_id, "event_id": "d2"}))
    assert error == {
        "type": "invalid_request_error",
        "code": "item_delete_invalid_item_id",
        "message": f"Error deleting item: the item with id '{item_id}' does not exist.",
        "param": "item_id",
        "event_id": "d2",
    }
    error = error_of(driver.send({"type": "conversation.item.retrieve", "item_id": item_id}))
    assert error["code"] == "item_retrieve_invalid_item_id"


# -- truncation (protocols.md §C.1) ------------------------------------------------------------------------


def _spoken_item(driver: Driver) -> str:
    manual(driver)
    user_text(driver, "hello")
    driver.send({"type": "response.create"})
    done = driver.of_type("response.done")[-1]["response"]
    item_id: str = done["output"][0]["id"]
    return item_id


def test_truncate_cuts_the_audio_and_drops_the_transcript() -> None:
    driver = Driver(new_session())
    item_id = _spoken_item(driver)  # two sentences of 1000 ms
    (truncated,) = driver.send(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 1500}
    )
    assert truncated == {
        "type": "conversation.item.truncated",
        "event_id": truncated["event_id"],
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": 1500,
    }
    (retrieved,) = driver.send({"type": "conversation.item.retrieve", "item_id": item_id})
    content = retrieved["item"]["content"][0]
    assert content["type"] == "output_audio"
    assert content["transcript"] == ""
    assert len(base64.b64decode(content["audio"])) == 1500 * 48
    # The next response's input counts the truncated audio only: 1500 ms = 30 tokens.
    driver.send({"type": "response.create"})
    usage = driver.of_type("response.done")[-1]["response"]["usage"]
    assert usage["input_token_details"]["audio_tokens"] == 30


def test_truncate_errors_follow_openai() -> None:
    driver = Driver(new_session())
    item_id = _spoken_item(driver)
    user_id = user_text(driver, "again")

    def truncate(**fields: Any) -> dict[str, Any]:
        event = {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 100,
            **fields,
        }
        return error_of(driver.send(event))

    too_long = truncate(audio_end_ms=2500)
    assert too_long["message"] == "Audio content of 2000ms is already shorter than 2500ms"
    assert too_long["param"] == "audio_end_ms"
    assert truncate(content_index=1)["param"] == "content_index"
    assert truncate(item_id=user_id)["param"] == "item_id"
    unknown = truncate(item_id="item_nope")
    assert unknown["code"] == "item_truncate_invalid_item_id"
    assert unknown["message"] == "Error truncating item: the item with id 'item_nope' does not exist."
    assert truncate(audio_end_ms=-1)["param"] == "audio_end_ms"


# -- responses -----------------------------------------------------------------------------------------------


AUDIO_RESPONSE = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "response.output_audio_transcript.delta",
    *["response.output_audio.delta"] * 10,
    "response.output_audio_transcript.delta",
    *["response.output_audio.delta"] * 10,
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]


def test_audio_response_sequence() -> None:
    driver = Driver(new_session())
    manual(driver)
    user_text(driver, "hello")
    events = driver.send({"type": "response.create"})
    assert types(events) == AUDIO_RESPONSE
    created = events[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    assert created["conversation_id"].startswith("conv_")
    added = events[2]["item"]
    assert added["status"] == "in_progress" and added["content"] == [] and added["role"] == "assistant"
    assert events[4]["part"] == {"type": "audio", "transcript": ""}
    transcript = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    assert transcript == "Hello there. How can I help?"
    pcm = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    assert len(pcm) == 2 * 24000 * 2
    assert events[-4]["part"] == {"type": "audio", "transcript": transcript}
    done = events[-1]["response"]
    assert (
        done["object"] == "realtime.response"
        and done["status"] == "completed"
        and done["status_details"] is None
    )
    assert done["output"] == [
        {
            "id": added["id"],
            "type": "message",
            "object": "realtime.item",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_audio", "transcript": transcript}],
        }
    ]
    assert done["output_modalities"] == ["audio"] and done["max_output_tokens"] == "inf"
    assert done["audio"] == {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}}
    usage = done["usage"]
    assert usage["output_token_details"] == {"text_tokens": 7, "audio_tokens": 40}
    assert usage["input_token_details"]["audio_tokens"] == 0
    assert driver.requests[0].turns[-1].text == "hello"


def test_text_response_and_per_response_overrides() -> None:
    driver = Driver(new_session())
    manual(driver)
    user_text(driver, "hello")
    events = driver.send(
        {
            "type": "response.create",
            "response": {
                "output_modalities": ["text"],
                "instructions": "Say: Hi.",
                "metadata": {"topic": "greeting"},
                "max_output_tokens": 200,
            },
        }
    )
    assert types(events) == [
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    assert events[7]["text"] == "Hello there. How can I help?"
    done = events[-1]["response"]
    assert done["metadata"] == {"topic": "greeting"} and done["max_output_tokens"] == 200
    assert done["output"][0]["content"] == [{"type": "output_text", "text": "Hello there. How can I help?"}]
    assert driver.requests[0].response_instructions == "Say: Hi."


def test_function_call_round_trip() -> None:
    def responder(request: ResponseRequest) -> list[Say | CallTool]:
        last = request.turns[-1]
        if last.role == "function_call_output":
            return [Say(f"Booked, code {json.loads(last.text)['code']}.")]
        return [CallTool("book_table", {"party_size": 4})]

    driver = Driver(new_session(), responder=responder)
    tools = [{"type": "function", "name": "book_table", "parameters": {"type": "object"}}]
    manual(driver, tools=tools)
    user_text(driver, "book a table for four")
    events = driver.send({"type": "response.create"})
    assert types(events) == [
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    added = events[2]["item"]
    assert added["type"] == "function_call" and added["status"] == "in_progress" and added["arguments"] == ""
    args_done = events[5]
    assert args_done["name"] == "book_table" and json.loads(args_done["arguments"]) == {"party_size": 4}
    call_id = args_done["call_id"]
    assert events[6]["item"]["call_id"] == call_id and events[6]["item"]["status"] == "completed"
    assert driver.requests[0].tools == tools
    driver.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": '{"code": "X7"}'},
        }
    )
    driver.send({"type": "response.create"})
    transcript = driver.of_type("response.output_audio_transcript.done")[-1]["transcript"]
    assert transcript == "Booked, code X7."
    turns = driver.requests[-1].turns
    assert [t.role for t in turns] == ["user", "function_call", "function_call_output"]
    assert turns[1].call_id == call_id and turns[1].name == "book_table"


def test_tool_choice_none_hides_the_tools_from_the_responder() -> None:
    driver = Driver(new_session())
    manual(driver, tools=[{"type": "function", "name": "f"}])
    driver.send({"type": "response.create", "response": {"tool_choice": "none"}})
    assert driver.requests[0].tools == []


def test_only_one_response_at_a_time_in_the_default_conversation() -> None:
    driver = Driver(new_session(), auto={Transcribe, Cancel})
    manual(driver)
    driver.send({"type": "response.create"})
    (respond,) = driver.pending
    assert isinstance(respond, Respond)
    error = error_of(driver.send({"type": "response.create", "event_id": "r2"}))
    assert error["code"] == "conversation_already_has_active_response"
    assert error["message"] == (
        f"Conversation already has an active response in progress: {respond.response_id}. "
        "Wait until the response is finished before creating a new one."
    )
    # An out-of-band response may run alongside.
    events = driver.send({"type": "response.create", "response": {"conversation": "none", "input": []}})
    assert events[0]["response"]["conversation_id"] is None


def test_out_of_band_response_does_not_touch_the_conversation() -> None:
    driver = Driver(new_session())
    manual(driver)
    first = user_text(driver, "hello")
    events = driver.send(
        {
            "type": "response.create",
            "response": {
                "conversation": "none",
                "output_modalities": ["text"],
                "input": [
                    {"type": "item_reference", "id": first},
                    {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "summarize"}],
                    },
                ],
            },
        }
    )
    assert "conversation.item.added" not in types(events)
    assert len(driver.session.conversation) == 1
    assert [t.text for t in driver.requests[0].turns] == ["hello", "summarize"]
    error = error_of(
        driver.send(
            {"type": "response.create", "response": {"input": [{"type": "item_reference", "id": "zz"}]}}
        )
    )
    assert error["param"] == "response.input[0].id"


def test_cancel_mid_speech_emits_the_done_events_first() -> None:
    driver = Driver(new_session(), auto={Transcribe, Respond, Cancel})
    manual(driver)
    driver.send({"type": "response.create"})
    (speak,) = driver.pending
    assert isinstance(speak, Speak)
    driver.apply(driver.session.on_speech(speak.response_id, speak.item_id, tone(300, 24000)))
    events = driver.send({"type": "response.cancel"})
    assert types(events) == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert done["output"][0]["status"] == "incomplete"
    assert done["usage"]["output_token_details"]["audio_tokens"] == 6  # 300 ms generated
    assert driver.cancelled == [speak.response_id]
    assert driver.session.active_response_id is None


def test_cancel_before_any_output() -> None:
    driver = Driver(new_session(), auto={Cancel})
    manual(driver)
    driver.send({"type": "response.create"})
    events = driver.send({"type": "response.cancel"})
    assert types(events) == ["response.done"]
    assert events[0]["response"]["output"] == []
    driver.run_pending()  # the responder's late answer is ignored
    assert types(driver.events[-1:]) == ["response.done"]


def test_cancel_with_nothing_in_progress_is_an_error() -> None:
    driver = Driver(new_session())
    manual(driver)
    error = error_of(driver.send({"type": "response.cancel", "event_id": "x1"}))
    assert error["code"] == "response_cancel_not_active"
    assert error["message"] == "Cancellation failed: no active response found"
    assert error["event_id"] == "x1"
    error = error_of(driver.send({"type": "response.cancel", "response_id": "resp_gone"}))
    assert error["code"] == "response_cancel_not_active"


def test_responder_failure_fails_the_response() -> None:
    driver = Driver(new_session(), auto={Transcribe, Cancel})
    manual(driver)
    driver.send({"type": "response.create"})
    (respond,) = driver.pending
    assert isinstance(respond, Respond)
    (done,) = driver.apply(driver.session.on_respond_failed(respond.response_id, "boom"))
    assert done["response"]["status"] == "failed"
    assert done["response"]["status_details"]["error"]["message"] == "boom"
    assert types(driver.send({"type": "response.create"}))[0] == "response.created"


def test_max_output_tokens_makes_the_response_incomplete() -> None:
    driver = Driver(new_session())
    manual(driver)
    events = driver.send({"type": "response.create", "response": {"max_output_tokens": 10}})
    done = events[-1]["response"]
    assert done["status"] == "incomplete"
    assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert len(driver.of_type("response.output_audio_transcript.delta")) == 1


def test_response_waits_for_the_transcript_of_caller_audio() -> None:
    driver = Driver(new_session(), auto={Respond, Speak, Cancel})
    manual(driver)
    driver.send({"type": "input_audio_buffer.append", "audio": b64(tone(500, 24000))})
    driver.send({"type": "input_audio_buffer.commit"})
    events = driver.send({"type": "response.create"})
    assert types(events) == ["response.created", "rate_limits.updated"]
    assert driver.requests == []
    driver.run_pending()
    assert driver.requests[0].turns[-1].text == "hello"
    assert driver.of_type("response.done")[-1]["response"]["status"] == "completed"


def test_usage_counts_the_whole_conversation_and_caches_the_shared_prefix() -> None:
    driver = Driver(new_session())
    manual(driver, instructions="x" * 4400)  # 1100 + 4 text tokens
    driver.send({"type": "input_audio_buffer.append", "audio": b64(tone(2000, 24000))})
    driver.send({"type": "input_audio_buffer.commit"})
    driver.send({"type": "response.create"})
    first = driver.of_type("response.done")[-1]["response"]["usage"]
    assert first["input_token_details"]["text_tokens"] == 1104 + 4
    assert first["input_token_details"]["audio_tokens"] == 20
    assert first["input_token_details"]["cached_tokens"] == 0
    assert first["output_token_details"]["audio_tokens"] == 40
    driver.send({"type": "response.create"})
    second = driver.of_type("response.done")[-1]["response"]["usage"]
    details = second["input_token_details"]
    # input: instructions 1104 + user (4 + 20 audio) + assistant (4 + 40 audio)
    assert second["input_tokens"] == 1104 + 24 + 44
    # shared prefix with the first response: 1104 + 24 = 1128 -> 1024 cached, all text.
    assert details["cached_tokens"] == 1024
    assert details["cached_tokens_details"] == {"text_tokens": 1024, "audio_tokens": 0, "image_tokens": 0}
    driver.send({"type": "response.create"})
    third = driver.of_type("response.done")[-1]["response"]["usage"]["input_token_details"]
    # shared: 1104 + 24 + 44 = 1172 -> 1152 = 1108 text (instructions + 4) + 20 audio + 4 text + 20 audio
    assert third["cached_tokens"] == 1152
    assert third["cached_tokens_details"]["audio_tokens"] == 40


def test_split_sentences() -> None:
    assert split_sentences("Hi. How are you?  Fine!") == ["Hi.", "How are you?", "Fine!"]
    assert split_sentences("  ") == []
    assert split_sentences("3.5 people") == ["3.5 people"]
