"""Call-listing filters shared by the operator API (``/api/calls``) and the CLI (``voice calls``, ``cost``).

Times are given as ISO 8601 (``2025-01-31``, ``2025-01-31T12:00:00Z``; naive means UTC) or as an age before
now: a number and a unit, ``30s``, ``15m``, ``2h``, ``7d``, ``1w``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from voice.errors import VoiceError

__all__ = ["MAX_LIMIT", "QueryError", "parse_limit", "parse_when"]

MAX_LIMIT: Final = 1000
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d|day|days|w|wk)\s*$", re.IGNORECASE)
_UNIT_S: Final[dict[str, float]] = {
    "s": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "hr": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 7 * 86400,
    "wk": 7 * 86400,
}


class QueryError(VoiceError):
    """A filter value could not be understood; the message says what was expected."""


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from ISO 8601 text or an age (``15m``, ``2h``, ``7d``) before ``now``."""
    moment = now or datetime.now(UTC)
    match = _AGE.match(text)
    if match:
        seconds = float(match.group(1)) * _UNIT_S[match.group(2).lower()]
        return moment - timedelta(seconds=seconds)
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise QueryError(
            f"not a time: {text!r} (use ISO 8601 such as 2025-01-31T12:00Z, or an age such as 15m, 2h, 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_limit(
    text: str | int | None, default: int, *, name: str = "limit", maximum: int = MAX_LIMIT
) -> int:
    """A non-negative integer no larger than ``maximum`` (``default`` when missing)."""
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise QueryError(f"{name} must be an integer, got {text!r}") from None
    if value < 0 or value > maximum:
        raise QueryError(f"{name} must be between 0 and {maximum}, got {value}")
    return value
