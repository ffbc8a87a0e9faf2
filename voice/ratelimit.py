"""Per-client rate limit on new browser calls: a token bucket per client address (sans-I/O).

Every call attempt on ``/ws/browser`` spends one token from its client's bucket *before* anything else is
done (token check, agent lookup, admission), so a flood of attempts costs the service one dictionary lookup
each. A bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; an attempt that finds less than
one token is refused with the time until one will be there (``retry_after_s``).

Keys (:func:`client_key`): an IPv4 address as is (IPv4-mapped IPv6 too), an IPv6 address by its /64
network (one host usually owns a whole /64, so per-address buckets would be free to multiply), anything
unparseable or missing as ``"unknown"`` (one shared bucket). Behind a reverse proxy on this host the client
address is the one uvicorn takes from ``X-Forwarded-For`` (it trusts that header from 127.0.0.1 by default).

Memory is bounded (:class:`RateLimiter`): the table keeps at most ``max_clients`` buckets in least recently
used order. A bucket untouched for ``burst / rate_per_s`` seconds is full again, so forgetting it changes
nothing; such idle buckets are dropped from the old end on every attempt (amortised O(1)). When the table is
full of active clients, the least recently used one is evicted (it gets a full bucket on its next attempt:
the limit errs on the lenient side rather than lock out new addresses).

Loopback clients are this machine (development, tests, benchmarks opening a hundred calls at once); they are
not limited unless ``limit_loopback`` is set (:class:`ClientRateLimiter`).

Nothing here reads a clock: every method takes ``now`` (seconds, monotonic in the adapter).
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from voice.auth import is_loopback_address

__all__ = [
    "UNKNOWN_CLIENT",
    "ClientRateLimiter",
    "Decision",
    "RateLimiter",
    "client_key",
    "refill",
]

UNKNOWN_CLIENT: Final = "unknown"
IPV6_PREFIX: Final = 64


def client_key(host: str | None) -> str:
    """The bucket key of a client address: IPv4 as is, IPv6 by /64, else :data:`UNKNOWN_CLIENT`."""
    if not host:
        return UNKNOWN_CLIENT
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return UNKNOWN_CLIENT
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


def refill(tokens: float, last: float, now: float, *, rate_per_s: float, burst: float) -> float:
    """Tokens in a bucket that held ``tokens`` at ``last`` once it has refilled until ``now`` (a clock
    that went backwards refills nothing)."""
    return min(burst, tokens + max(0.0, now - last) * rate_per_s)


@dataclass(frozen=True)
class Decision:
    """The answer to one attempt: ``allowed``, or refused with ``retry_after_s`` until a token is back."""

    allowed: bool
    key: str
    retry_after_s: float = 0.0
    tokens_left: float = 0.0

    @property
    def retry_after_whole_s(self) -> int:
        """``retry_after_s`` rounded up to whole seconds (at least 1 when refused), for messages."""
        return max(1, math.ceil(self.retry_after_s)) if not self.allowed else 0


class _Bucket:
    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


class RateLimiter:
    """Token buckets by key in a bounded least-recently-used table (see the module docstring)."""

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = 10_000) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {max_clients}")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.max_clients = max_clients
        self.idle_s = self.burst / self.rate_per_s
        """A bucket untouched this long is full again (and may be forgotten)."""
        self.evicted = 0
        """Active buckets dropped because the table was full (not counting idle ones)."""
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def tokens(self, key: str, now: float) -> float:
        """The tokens ``key`` would find at ``now`` (a full bucket for an unknown key); changes nothing."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return self.burst
        return refill(bucket.tokens, bucket.last, now, rate_per_s=self.rate_per_s, burst=self.burst)

    def evict_idle(self, now: float) -> int:
        """Drop the buckets that have been idle long enough to be full again; returns how many."""
        dropped = 0
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if now - bucket.last < self.idle_s:
                break  # least recently used first: the rest were touched later
            del self._buckets[key]
            dropped += 1
        return dropped

    def take(self, key: str, now: float) -> Decision:
        """Spend one token of ``key``'s bucket at ``now``, or refuse (the refusal costs nothing)."""
        self.evict_idle(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._buckets.popitem(last=False)
                self.evicted += 1
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        bucket.tokens = refill(bucket.tokens, bucket.last, now, rate_per_s=self.rate_per_s, burst=self.burst)
        bucket.last = max(bucket.last, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return Decision(True, key, tokens_left=bucket.tokens)
        return Decision(False, key, retry_after_s=(1.0 - bucket.tokens) / self.rate_per_s)


class ClientRateLimiter:
    """:class:`RateLimiter` keyed by client address (:func:`client_key`), off for loopback clients unless
    ``limit_loopback``, and off entirely when ``rate_per_s`` is 0."""

    def __init__(
        self, rate_per_s: float, burst: int, *, max_clients: int = 10_000, limit_loopback: bool = False
    ) -> None:
        self.limiter = RateLimiter(rate_per_s, burst, max_clients) if rate_per_s > 0 else None
        self.limit_loopback = limit_loopback

    def check(self, host: str | None, now: float) -> Decision:
        """Spend one attempt of the client at ``host`` (its address as the server saw it) at ``now``."""
        key = client_key(host)
        if self.limiter is None or (not self.limit_loopback and is_loopback_address(host)):
            return Decision(True, key, tokens_left=math.inf)
        return self.limiter.take(key, now)
