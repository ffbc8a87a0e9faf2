"""Identifiers in the shape OpenAI's Realtime server uses (protocols.md §A.1, §A.6).

Server ids look like ``event_C2PhDkEPcWS59aN5rY2CQ``, ``item_…``, ``resp_…``, ``sess_…``, ``conv_…``: a
prefix, an underscore and a run of ASCII letters and digits. Ours are ``prefix_`` + 20 random alphanumerics
(about 119 bits from :mod:`secrets`), so they never collide in practice and never reveal a counter.
"""

from __future__ import annotations

import itertools
import secrets

ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_RANDOM_CHARS = 20
_SPACE = len(ID_ALPHABET) ** ID_RANDOM_CHARS


def _random_alnum() -> str:
    """20 random characters from :data:`ID_ALPHABET` (one ``os.urandom`` call, base-62 digits)."""
    n = int.from_bytes(secrets.token_bytes(16), "big") % _SPACE
    chars = []
    for _ in range(ID_RANDOM_CHARS):
        n, digit = divmod(n, 62)
        chars.append(ID_ALPHABET[digit])
    return "".join(chars)


def new_id(prefix: str) -> str:
    """``prefix_`` + 20 random alphanumerics, e.g. ``new_id("item")`` -> ``item_3fZ…``.

    The prefix may be given with or without its trailing underscore (``"item"`` or ``"item_"``).
    """
    return f"{prefix.rstrip('_')}_{_random_alnum()}"


_EVENT_PREFIX = _random_alnum()[:8]
_EVENT_COUNTER = itertools.count()


def new_event_id() -> str:
    """A client event id: ``event_`` + 20 alphanumerics (echoed back in ``error.event_id``).

    Event ids only need to be unique, not unguessable, and one is made for every audio frame sent: they
    are a random 8-character process prefix and a 12-digit counter, which costs a fraction of
    :func:`new_id`'s ``os.urandom`` call.
    """
    return f"event_{_EVENT_PREFIX}{next(_EVENT_COUNTER) % 10**12:012d}"
