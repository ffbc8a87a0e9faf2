"""Tests of the SIP user agent's pure cores (bridges/sip); byte vectors live in tests/vectors/sip."""

from __future__ import annotations

from pathlib import Path

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "sip"


def vector(name: str) -> bytes:
    """The bytes of one vector file."""
    return (VECTORS / name).read_bytes()
