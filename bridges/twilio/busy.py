"""What a Twilio caller hears when every line is busy (``max_calls`` reached, or the service draining).

Two places refuse a call, and neither closes silently:

- ``POST /twilio/voice`` (the usual case): :func:`busy_twiml` answers ``<Say>`` the busy message, then
  ``<Hangup/>``. This is kinder than ``<Reject reason="busy"/>``: a busy tone tells the caller nothing
  (a fault? the wrong number?), a short sentence tells them the line works and to call again in a few
  minutes. The price is a few seconds of an answered call.
- ``WS /twilio/stream`` (the race: the webhook saw a free line, the stream found none): the stream is
  accepted, the caller hears :func:`busy_prompt` (the same message as µ-law at 8 kHz, rendered once by the
  local speech synthesizer, :class:`voice.engine.tts.Synthesizer`), and the socket is closed, which ends
  the call (nothing follows ``<Connect>``).

:func:`busy_prompt` is blocking (about half a second the first time) and cached: call it through
``asyncio.to_thread``. Without a working synthesizer it falls back to :func:`busy_tone`, the North
American busy signal (480 + 620 Hz, 0.5 s on, 0.5 s off).
"""

from __future__ import annotations

import functools
from typing import Final

import numpy as np

from bridges.twilio.twiml import say_and_hangup
from voice.audio.g711 import ulaw_encode
from voice.audio.pcm import amplitude_for_dbfs, to_pcm16
from voice.logs import get_logger

__all__ = ["BUSY_TONE_HZ", "busy_prompt", "busy_tone", "busy_twiml"]

BUSY_TONE_HZ: Final = (480.0, 620.0)
_RATE: Final = 8000
_FRAME: Final = 160
_SILENCE: Final = b"\xff"

_log = get_logger(component="twilio_busy")


def busy_twiml(message: str) -> str:
    """``<Response><Say>message</Say><Hangup/></Response>``."""
    return say_and_hangup(message)


def busy_tone(cycles: int = 3, *, level_dbfs: float = -16.0) -> bytes:
    """µ-law busy signal: ``cycles`` times 0.5 s of 480 + 620 Hz then 0.5 s of silence."""
    t = np.arange(_RATE // 2) / _RATE
    amp = amplitude_for_dbfs(level_dbfs)
    low, high = BUSY_TONE_HZ
    on = ulaw_encode(to_pcm16(amp * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))))
    return (on + _SILENCE * (_RATE // 2)) * cycles


@functools.lru_cache(maxsize=4)
def busy_prompt(message: str) -> bytes:
    """``message`` spoken as µ-law 8 kHz, padded to whole 20 ms frames (blocking, cached; see the module
    docstring); the busy tone when speech synthesis is unavailable."""
    try:
        from voice.engine.tts import Synthesizer

        audio = ulaw_encode(Synthesizer().synthesize(message, _RATE))
    except Exception as exc:  # a missing or broken synthesizer must not leave the caller in silence
        _log.warning("twilio.busy_prompt_unavailable", error=repr(exc))
        audio = b""
    if not audio:
        audio = busy_tone()
    return audio + _SILENCE * (-len(audio) % _FRAME)
