"""``voice bench engine``: the local engine's response latency, with speech recognition on.

An in-process engine (the same app ``voice engine`` serves, on a loopback port) gets ``TURNS`` caller turns
over one WebSocket session: a spoken question of about 3 s (synthesized, 24 kHz PCM) followed by silence,
appended in 20 ms chunks as fast as the socket takes them. For each turn it measures the time from
``input_audio_buffer.speech_stopped`` to the first ``response.output_audio.delta``: what a caller waits
after the end-of-turn silence (recognition + responder + synthesis of the first sentence + transport). The
engine's own per-stage timings (recognition, responder, first sentence synthesis) are printed beside.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import statistics
import time
from typing import Any, Final

import uvicorn
from websockets.asyncio.client import connect

from voice.bench.common import free_port, percentile
from voice.config import Settings
from voice.engine.server import create_app, uvicorn_config
from voice.engine.services import EngineServices
from voice.logs import configure_logging

__all__ = ["run"]

TURNS: Final = 10
UTTERANCE: Final = "Hello there, could you tell me what your opening hours are"
UTTERANCE_MS: Final = 3000
"""The utterance is padded with silence to at least this length (it is about 2.8 s of speech)."""
SILENCE_MS: Final = 1000
CHUNK: Final = 960  # 20 ms of 24 kHz PCM16


def _utterance(services: EngineServices) -> bytes:
    """The spoken question, at least ``UTTERANCE_MS`` long, then ``SILENCE_MS`` of silence (24 kHz PCM16)."""
    pcm = services.synthesizer.synthesize(UTTERANCE, 24000)
    pcm += b"\x00" * max(0, 48 * UTTERANCE_MS - len(pcm))
    return pcm + b"\x00" * (48 * SILENCE_MS)


async def _turn(ws: Any, audio: bytes) -> float:
    """Send one spoken turn; seconds from speech_stopped to the first audio delta (then wait for done)."""
    for start in range(0, len(audio), CHUNK):
        chunk = base64.b64encode(audio[start : start + CHUNK]).decode("ascii")
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
    stopped: float | None = None
    first_audio: float | None = None
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), 60))
        kind = event["type"]
        if kind == "input_audio_buffer.speech_stopped":
            stopped = time.perf_counter()
        elif kind == "response.output_audio.delta" and first_audio is None:
            first_audio = time.perf_counter()
        elif kind == "response.done":
            break
        elif kind == "error":
            raise RuntimeError(f"engine error: {event['error']}")
    if stopped is None or first_audio is None:
        raise RuntimeError("the turn produced no speech_stopped or no audio")
    return first_audio - stopped


async def _bench() -> None:
    configure_logging("warning")
    for name in ("uvicorn", "uvicorn.error", "faster_whisper"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = Settings()
    settings.engine.asr = True
    services = EngineServices(settings)
    app = create_app(settings, services=services)
    port = free_port()
    config = uvicorn_config(settings, "127.0.0.1", port, app)
    config.log_level = "warning"
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:  # uvicorn exposes a flag, not an event
        if serving.done():
            await serving  # startup failed: raise its error
        await asyncio.sleep(0.05)
    try:
        audio = _utterance(services)
        latencies: list[float] = []
        async with connect(f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime", max_size=None) as ws:
            json.loads(await ws.recv())  # session.created
            services.timings.clear()
            for _ in range(TURNS):
                latencies.append(await _turn(ws, audio))
        stages: dict[str, list[float]] = {}
        for stage, stage_ms in services.timings:
            stages.setdefault(stage, []).append(stage_ms)
    finally:
        server.should_exit = True
        await serving

    ms = [s * 1000 for s in latencies]
    speech_ms = len(audio) // 48 - SILENCE_MS
    print(
        f"utterance: {speech_ms} ms (speech + padding) + {SILENCE_MS} ms silence, "
        f"{TURNS} turns, recognition on"
    )
    print(f"{'measure':<44}{'median':>10}{'p95':>10}{'min':>10}{'max':>10}")
    rows = [("speech_stopped -> first output_audio.delta", ms)]
    rows += [(f"  stage: {name}", values) for name, values in sorted(stages.items())]
    for name, values in rows:
        print(
            f"{name:<44}{statistics.median(values):>8.0f}ms{percentile(values, 0.95):>8.0f}ms"
            f"{min(values):>8.0f}ms{max(values):>8.0f}ms"
        )
    verdict = "meets" if statistics.median(ms) <= 1000 else "MISSES"
    print(f"target: median <= 1000 ms: {verdict}")


def run() -> None:
    asyncio.run(_bench())


if __name__ == "__main__":
    run()
