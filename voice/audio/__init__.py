"""Pure audio cores: bytes in, bytes or events out. No asyncio, no clock reads, no I/O.

- :mod:`~voice.audio.g711`: ITU-T G.711 µ-law / A-law encode and decode (table look-ups).
- :mod:`~voice.audio.resample`: low-delay streaming resamplers (8/16/24/48 kHz) and whole-buffer resampling.
- :mod:`~voice.audio.vad`: the WebRTC VAD and the ``server_vad`` turn segmenter.
- :mod:`~voice.audio.dtmf`: ITU-T Q.23 tone generation and a Q.24-style detector.
- :mod:`~voice.audio.measure`: delay and alias-rejection measurements for resamplers (tests, benchmarks).
- :mod:`~voice.audio.pcm`: PCM16 helpers (length checks, conversions, levels).

All PCM is 16-bit little-endian signed mono. Wrong sizes and rates raise :class:`voice.errors.AudioError`.
"""

from voice.audio.dtmf import DtmfDetector, DtmfDigit, dtmf_tones
from voice.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from voice.audio.resample import StreamingResampler, resample_pcm16
from voice.audio.vad import SpeechStarted, SpeechStopped, Vad, VadEvent, VadSegmenter

__all__ = [
    "DtmfDetector",
    "DtmfDigit",
    "SpeechStarted",
    "SpeechStopped",
    "StreamingResampler",
    "Vad",
    "VadEvent",
    "VadSegmenter",
    "alaw_decode",
    "alaw_encode",
    "dtmf_tones",
    "resample_pcm16",
    "ulaw_decode",
    "ulaw_encode",
]
