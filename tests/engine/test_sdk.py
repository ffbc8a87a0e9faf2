"""The official ``openai`` SDK against a running ``voice engine`` process.

Every received message is validated twice: the raw JSON with the SDK's ``RealtimeServerEvent`` type adapter
(strict pydantic validation), and the SDK's own parse (``conn.parse_event``, what ``async for`` yields) must
give a typed model of the right class, never a fallback dict or an untyped object.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pydantic
import pytest
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.websocket_connection_options import WebSocketConnectionOptions

from tests.conftest import EngineProcess
from tests.engine.helpers import validate_server_event
from voice.audio.g711 import ulaw_decode, ulaw_encode
from voice.config import REPO_ROOT
from voice.profiles import load_profile

pytestmark = pytest.mark.slow

SpeechFn = Callable[[str, int], bytes]
TIMEOUT = 30.0
TOOLS = [t.to_session() for t in load_profile("restaurant", REPO_ROOT / "prompts").tools]


class Recorder:
    """Receives events, checking each against the SDK's models."""

    def __init__(self, conn: AsyncRealtimeConnection) -> None:
        self.conn = conn
        self.events: list[Any] = []

    async def next(self) -> Any:
        raw = await asyncio.wait_for(self.conn.recv_bytes(), TIMEOUT)
        data = json.loads(raw)
        validated = validate_server_event(data)
        parsed = self.conn.parse_event(raw)
        assert isinstance(parsed, pydantic.BaseModel), f"untyped event: {data['type']}"
        assert type(parsed) is type(validated), data["type"]
        assert parsed.type == data["type"]
        self.events.append(parsed)
        return parsed

    async def until(self, kind: str) -> list[Any]:
        seen = []
        while True:
            event = await self.next()
            seen.append(event)
            if event.type == kind:
                return seen


def client(engine: EngineProcess) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=engine.http_base, api_key="test")


def kinds(events: list[Any]) -> list[str]:
    return [e.type for e in events]


def first(events: list[Any], kind: str) -> Any:
    return next(e for e in events if e.type == kind)


async def append_audio(conn: AsyncRealtimeConnection, audio: bytes, chunk: int) -> None:
    for start in range(0, len(audio), chunk):
        await conn.input_audio_buffer.append(audio=base64.b64encode(audio[start : start + chunk]).decode())


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


async def test_session_update_and_a_text_turn(engine_no_asr: EngineProcess) -> None:
    async with client(engine_no_asr).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        created = await rec.next()
        assert created.type == "session.created"
        assert created.session.model == "gpt-realtime"
        assert created.session.audio.input.turn_detection.type == "server_vad"
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "Be brief.",
                "tools": TOOLS,
                "output_modalities": ["text"],
            }
        )
        updated = await rec.next()
        assert updated.type == "session.updated"
        assert updated.session.instructions == "Be brief."
        assert [t.name for t in updated.session.tools] == [t["name"] for t in TOOLS]
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Where are you located?"}],
            }
        )
        await conn.response.create()
        events = await rec.until("response.done")
        assert "Harbour Street" in first(events, "response.output_text.done").text
        assert events[-1].response.status == "completed"
        assert events[-1].response.usage.input_tokens > 0


async def test_spoken_turn_and_function_call_round_trip(engine: EngineProcess, speech: SpeechFn) -> None:
    async with client(engine).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.next()
        await conn.session.update(
            session={
                "type": "realtime",
                "tools": TOOLS,
                "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"}}},
            }
        )
        await rec.until("session.updated")
        utterance = speech("I would like to book a table for four people", 24000) + b"\x00" * 48000
        await append_audio(conn, utterance, 960)  # 20 ms chunks
        events = await rec.until("response.done")
        order = kinds(events)
        for kind in (
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.input_audio_transcription.completed",
            "response.created",
        ):
            assert kind in order, kind
        assert order.index("input_audio_buffer.speech_started") < order.index(
            "input_audio_buffer.speech_stopped"
        )
        transcript = first(events, "conversation.item.input_audio_transcription.completed").transcript
        assert "table" in transcript.lower()
        call = first(events, "response.function_call_arguments.done")
        assert call.name == "book_table"
        assert json.loads(call.arguments)["party_size"] == 4
        done = events[-1].response
        assert done.status == "completed" and done.output[0].type == "function_call"
        await conn.conversation.item.create(
            item={
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": json.dumps({"confirmation": "LT-4242"}),
            }
        )
        await conn.response.create()
        events = await rec.until("response.done")
        spoken = first(events, "response.output_audio_transcript.done").transcript
        assert "LT-4242" in spoken
        pcm = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
        assert len(pcm) > 24000 * 2  # more than a second of speech
        assert rms(pcm) > 300
        assert events[-1].response.usage.output_token_details.audio_tokens > 20


async def test_truncate_retrieve_cancel(engine_no_asr: EngineProcess) -> None:
    async with client(engine_no_asr).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.next()
        await conn.response.create()  # the greeting
        events = await rec.until("response.done")
        item_id = events[-1].response.output[0].id
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=500)
        truncated = await rec.next()
        assert truncated.type == "conversation.item.truncated" and truncated.audio_end_ms == 500
        await conn.conversation.item.retrieve(item_id=item_id)
        retrieved = await rec.next()
        assert retrieved.type == "conversation.item.retrieved"
        content = retrieved.item.content[0]
        assert content.transcript == "" and len(base64.b64decode(content.audio)) == 500 * 48
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=900)
        error = await rec.next()
        assert (
            error.type == "error"
            and error.error.message == "Audio content of 500ms is already shorter than 900ms"
        )

        long_text = " ".join(f"Here is sentence number {i}." for i in range(40))
        await conn.response.create(response={"instructions": f"Say: {long_text}"})
        await conn.response.cancel()
        events = await rec.until("response.done")
        assert events[-1].response.status == "cancelled"
        assert events[-1].response.status_details.reason == "client_cancelled"
        await conn.response.cancel()
        error = await rec.next()
        assert error.type == "error" and error.error.code == "response_cancel_not_active"


async def test_unknown_event_is_an_error_and_the_session_stays_usable(engine_no_asr: EngineProcess) -> None:
    async with client(engine_no_asr).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.next()
        await conn.send({"type": "no.such.event", "event_id": "evt_bogus"})  # type: ignore[arg-type, misc]
        error = await rec.next()
        assert error.type == "error"
        assert error.error.param == "type" and error.error.event_id == "evt_bogus"
        await conn.input_audio_buffer.commit()
        error = await rec.next()
        assert error.error.code == "input_audio_buffer_commit_empty"
        await conn.session.update(session={"type": "realtime", "instructions": "still here"})
        assert (await rec.next()).type == "session.updated"


async def test_pcmu_in_and_out(engine: EngineProcess, speech: SpeechFn) -> None:
    async with client(engine).realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder(conn)
        await rec.next()
        await conn.session.update(
            session={
                "type": "realtime",
                "audio": {
                    "input": {"format": {"type": "audio/pcmu"}, "transcription": {"model": "whisper-1"}},
                    "output": {"format": {"type": "audio/pcmu"}},
                },
            }
        )
        updated = await rec.until("session.updated")
        assert updated[-1].session.audio.output.format.type == "audio/pcmu"
        # Narrowband speech is hard for Whisper tiny.en (test-peers.md): this sentence is recognized reliably
        # from 8 kHz eSpeak audio, run after run, where "What are your opening hours" is not.
        utterance = ulaw_encode(speech("Are you open on Sunday?", 8000) + b"\x00" * 16000)
        await append_audio(conn, utterance, 160)  # 20 ms of µ-law
        events = await rec.until("response.done")
        transcript = first(events, "conversation.item.input_audio_transcription.completed").transcript
        assert "open" in transcript.lower() and "sunday" in transcript.lower()
        mulaw = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
        assert len(mulaw) > 8000  # a second at 8 bytes/ms
        assert rms(ulaw_decode(mulaw)) > 300
        assert "Tuesday" in first(events, "response.output_audio_transcript.done").transcript
        assert events[-1].response.audio.output.format.type == "audio/pcmu"


async def test_many_sessions_at_once(engine_no_asr: EngineProcess) -> None:
    async def one_call(index: int) -> str:
        async with client(engine_no_asr).realtime.connect(model="gpt-realtime") as conn:
            rec = Recorder(conn)
            await rec.next()
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "opening hours"}],
                }
            )
            await conn.response.create(response={"metadata": {"call": str(index)}})
            events = await rec.until("response.done")
            assert events[-1].response.metadata == {"call": str(index)}
            transcript: str = first(events, "response.output_audio_transcript.done").transcript
            return transcript

    transcripts = await asyncio.gather(*(one_call(i) for i in range(6)))
    assert all("Tuesday to Sunday" in t for t in transcripts)


async def test_disconnect_mid_response(engine_no_asr: EngineProcess) -> None:
    long_text = " ".join(f"This is sentence number {i} of a long answer." for i in range(40))
    # An unbounded receive queue: with websockets' default (16 frames) and unread events, the client's own
    # close handshake waits for its close_timeout (10 s), against any server.
    options: WebSocketConnectionOptions = {"max_queue": None}
    async with client(engine_no_asr).realtime.connect(
        model="gpt-realtime", websocket_connection_options=options
    ) as conn:
        rec = Recorder(conn)
        await rec.next()
        await conn.response.create(response={"instructions": f"Say: {long_text}"})
        await rec.until("response.output_audio.delta")
    # The engine is still fine: a new session works, and the abandoned one was ended and forgotten.
    async with client(engine_no_asr).realtime.connect(model="gpt-realtime") as conn:
        assert (await Recorder(conn).next()).type == "session.created"
    async with httpx.AsyncClient() as http:
        for _ in range(50):
            health = (await http.get(f"http://127.0.0.1:{engine_no_asr.port}/healthz")).json()
            if health["sessions"] == 0:
                break
            await asyncio.sleep(0.1)
    assert health["sessions"] == 0


@pytest.mark.parametrize("fixture", ["engine", "engine_no_asr"])
def test_engine_logs_show_no_errors(fixture: str, request: pytest.FixtureRequest) -> None:
    """Run last: nothing the tests above did made the engine log an error or a traceback."""
    info: EngineProcess = request.getfixturevalue(fixture)
    log = info.log_path.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log
    levels = [json.loads(line).get("level") for line in log.splitlines() if line.startswith("{")]
    assert "error" not in levels and "critical" not in levels
