"""JSON written by hand on per-frame paths (an audio append upstream, a Twilio media message): a string may
go between JSON quotes as it is only when it needs no escaping."""

from __future__ import annotations

__all__ = ["plain"]


def plain(text: str) -> bool:
    """``text`` can stand between JSON quotes unescaped: printable ASCII without a quote or backslash."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text
