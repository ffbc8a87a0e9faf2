"""Process-wide Prometheus metrics of the call service (``prometheus_client``, module level).

The service exposes them at ``/metrics`` with :func:`prometheus_client.generate_latest`. They live in the
default registry, so importing this module twice (tests, the CLI) reuses the same objects.

- :data:`CALLS_LIVE`: calls in progress (a gauge the runner raises at start and lowers at its end).
- :data:`CALLS_ENDED` ``{reason}``: finished calls by end reason (``caller_hangup``, ``agent_end_call``,
  ``operator``, ``budget``, ``upstream_failed``, ``error``, ``shutdown``, ``transferred``).
- :data:`CALL_DURATION`: call durations in seconds.
- :data:`BARGE_INS`: confirmed barge-ins (the caller spoke or pressed a key over the agent).
- :data:`UPSTREAM_ERRORS`: upstream failures (connection drops, failed opens, ``error`` events).
- :data:`UPSTREAM_RECONNECTS`: successful reconnections (and session hand-overs) to a fresh upstream session.
- :data:`COST_USD` ``{model}``: priced usage in USD.
- :data:`FRAMES_LATE`: pacer ticks that ran more than :data:`LATE_THRESHOLD_MS` after their deadline.
- :data:`FRAME_LATENESS`: how late each pacer tick ran, in seconds.
- :data:`CALLS_REFUSED` ``{reason}``: callers turned away by admission control (``busy``, ``draining``),
  the per-client rate limit (``rate_limited``) or a replayed single-use token (``token_used``).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BARGE_INS",
    "CALLS_ENDED",
    "CALLS_LIVE",
    "CALLS_REFUSED",
    "CALL_DURATION",
    "COST_USD",
    "FRAMES_LATE",
    "FRAME_LATENESS",
    "LATE_THRESHOLD_MS",
    "UPSTREAM_ERRORS",
    "UPSTREAM_RECONNECTS",
]

LATE_THRESHOLD_MS: Final = 10.0
"""A pacer tick later than this counts in :data:`FRAMES_LATE`."""

CALLS_LIVE: Final = Gauge("voice_calls_live", "Calls in progress")
CALLS_ENDED: Final = Counter("voice_calls_ended", "Calls ended, by end reason", ["reason"])
CALL_DURATION: Final = Histogram(
    "voice_call_duration_seconds",
    "Duration of finished calls",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
BARGE_INS: Final = Counter("voice_barge_ins", "Confirmed barge-ins (caller speech or key over the agent)")
UPSTREAM_ERRORS: Final = Counter(
    "voice_upstream_errors", "Upstream failures: dropped connections, failed opens and error events"
)
UPSTREAM_RECONNECTS: Final = Counter(
    "voice_upstream_reconnects", "Calls moved to a fresh upstream session (reconnects and hand-overs)"
)
COST_USD: Final = Counter("voice_cost_usd", "Priced usage in USD", ["model"])
FRAMES_LATE: Final = Counter("voice_frames_late", "Pacer ticks more than 10 ms after their deadline")
FRAME_LATENESS: Final = Histogram(
    "voice_frame_lateness_seconds",
    "How late each 20 ms pacer tick ran after its deadline",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)
CALLS_REFUSED: Final = Counter("voice_calls_refused", "Callers refused by admission control", ["reason"])
