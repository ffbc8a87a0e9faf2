"""What all sessions of one engine process share: settings, the speech models, the speech thread pool,
agent profiles and the table of live sessions (for the status page). Nothing else is shared.

Speech work (recognition and synthesis) runs in one bounded thread pool of ``speech_threads`` workers so
that many sessions cannot oversubscribe the CPU; the models themselves serialize their own calls.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from voice.config import Settings
from voice.engine.asr import Transcriber
from voice.engine.tts import Synthesizer
from voice.logs import get_logger
from voice.profiles import AgentProfile, load_profile

__all__ = ["EngineServices", "LiveSession"]

T = TypeVar("T")

_log = get_logger(component="engine")


@dataclass
class LiveSession:
    """A connected session, as the status page shows it."""

    session_id: str
    model: str
    agent: str
    peer: str
    connected_at: float
    responses: int = 0


@dataclass
class EngineServices:
    settings: Settings
    speech_threads: int = 2
    transcriber: Transcriber | None = None
    synthesizer: Synthesizer = field(init=False)
    executor: ThreadPoolExecutor = field(init=False)
    live: dict[str, LiveSession] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    timings: deque[tuple[str, float]] = field(default_factory=lambda: deque(maxlen=1000))
    """Recent per-stage durations in ms (``asr``, ``responder``, ``tts_first_sentence``), newest last."""
    _profiles: dict[str, AgentProfile] = field(default_factory=dict)

    def __post_init__(self) -> None:
        engine = self.settings.engine
        self.synthesizer = Synthesizer(engine.tts_voice, engine.tts_words_per_minute)
        if engine.asr and self.transcriber is None:
            self.transcriber = Transcriber(engine.asr_model_path, threads=engine.asr_threads)
        self.executor = ThreadPoolExecutor(
            max_workers=self.speech_threads, thread_name_prefix="engine-speech"
        )

    @property
    def recognition(self) -> bool:
        return self.transcriber is not None

    def default_agent(self) -> str:
        return self.settings.engine.agent or self.settings.agent

    def profile(self, name: str) -> AgentProfile:
        """The agent profile ``name`` (loaded once; raises :class:`~voice.errors.ConfigError`)."""
        profile = self._profiles.get(name)
        if profile is None:
            profile = load_profile(name, self.settings.prompts_dir)
            self._profiles[name] = profile
        return profile

    async def run(self, func: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run blocking speech work in the speech thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(func, *args, **kwargs))

    def record(self, stage: str, ms: float) -> None:
        self.timings.append((stage, ms))

    def warm_up(self) -> None:
        """Load the recognition model and exercise both models once (blocking), so that the first call of
        the first session is as fast as the others."""
        started = time.perf_counter()
        pcm = self.synthesizer.synthesize("Hello there, how are you today?", 16000)
        if self.transcriber is not None:
            self.transcriber.load()
            self.transcriber.transcribe(pcm)
        _log.info(
            "engine_warm", ms=round((time.perf_counter() - started) * 1000), recognition=self.recognition
        )

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
