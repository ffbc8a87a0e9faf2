"""Realtime voice-agent telephony service.

Sub-packages:
- ``voice.audio``: pure audio cores (G.711, resampling, VAD, DTMF).
- ``voice.realtime``: the OpenAI Realtime (GA) wire protocol, upstream client and pricing.
- ``voice.engine``: the local Realtime engine, the offline default upstream.
"""

__version__ = "0.1.0"

from voice import native as _native

_native.enable()
