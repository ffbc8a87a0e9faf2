"""voice.ratelimit: the per-client token bucket (pure core, time vectors), its bounded table and keys."""

from __future__ import annotations

import pytest

from voice.ratelimit import UNKNOWN_CLIENT, ClientRateLimiter, RateLimiter, client_key, refill

# (t seconds, key, allowed, retry_after_s, tokens_left) for rate 0.5/s, burst 2: every value is exact in
# binary floating point, so the vector compares with ==.
VECTOR: list[tuple[float, str, bool, float, float]] = [
    (0.0, "A", True, 0.0, 1.0),
    (0.0, "A", True, 0.0, 0.0),
    (0.0, "A", False, 2.0, 0.0),  # empty: one token in 2 s
    (1.0, "A", False, 1.0, 0.0),  # half a token back
    (2.0, "A", True, 0.0, 0.0),  # a whole one; refusals cost nothing
    (2.0, "B", True, 0.0, 1.0),  # another key has its own full bucket
    (2.5, "A", False, 1.5, 0.0),
    (10.0, "A", True, 0.0, 1.0),  # refilled, capped at the burst
    (10.0, "A", True, 0.0, 0.0),
    (10.0, "A", False, 2.0, 0.0),
]


def test_token_bucket_vector() -> None:
    limiter = RateLimiter(0.5, 2)
    for t, key, allowed, retry, left in VECTOR:
        decision = limiter.take(key, t)
        assert (decision.allowed, decision.retry_after_s, decision.tokens_left, decision.key) == (
            allowed,
            retry,
            left,
            key,
        ), (t, key)


def test_refill() -> None:
    assert refill(0.0, 0.0, 1.0, rate_per_s=0.5, burst=2) == 0.5
    assert refill(0.5, 3.0, 100.0, rate_per_s=0.5, burst=2) == 2.0  # capped
    assert refill(1.0, 10.0, 4.0, rate_per_s=0.5, burst=2) == 1.0  # a clock that went back refills nothing


def test_a_clock_going_backwards_neither_refills_nor_breaks() -> None:
    limiter = RateLimiter(1.0, 1)
    assert limiter.take("A", 10.0).allowed
    assert not limiter.take("A", 5.0).allowed
    assert limiter.tokens("A", 10.5) == 0.5  # still measured from t=10
    assert limiter.take("A", 11.0).allowed


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    limiter = RateLimiter(0.3, 1)
    limiter.take("A", 0.0)
    refused = limiter.take("A", 0.0)
    assert refused.retry_after_s == pytest.approx(1 / 0.3)
    assert refused.retry_after_whole_s == 4
    assert limiter.take("B", 0.0).retry_after_whole_s == 0


def test_idle_buckets_are_forgotten() -> None:
    limiter = RateLimiter(0.5, 2)  # a bucket is full again 4 s after its last use
    for n in range(100):
        limiter.take(f"10.0.0.{n}", 0.0)
    assert len(limiter) == 100
    limiter.take("10.0.1.1", 3.5)
    assert len(limiter) == 101  # not idle yet
    assert limiter.evict_idle(4.0) == 100
    assert list(limiter._buckets) == ["10.0.1.1"]
    assert limiter.evicted == 0  # idle ones do not count as evictions


def test_forgetting_an_idle_bucket_changes_no_decision() -> None:
    """Replaying the vector with idle eviction (tiny table, gaps longer than the refill time) gives the
    same answers as a table that remembers everything."""
    times = [0.0, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0, 20.0, 20.0, 20.0, 20.5]
    big, small = RateLimiter(0.5, 2, 1000), RateLimiter(0.5, 2, 1)
    for t in times:
        assert big.take("A", t) == small.take("A", t)


def test_the_table_is_bounded_and_evicts_the_least_recently_used() -> None:
    limiter = RateLimiter(0.5, 2, max_clients=2)
    limiter.take("A", 0.0)
    limiter.take("B", 1.0)
    limiter.take("A", 1.5)  # A is now the most recently used
    limiter.take("C", 2.0)  # full of active buckets: B (least recently used) goes
    assert list(limiter._buckets) == ["A", "C"] and limiter.evicted == 1
    limiter.take("D", 5.5)  # A idle since 1.5 (4 s): forgotten, no eviction needed
    assert list(limiter._buckets) == ["C", "D"] and limiter.evicted == 1
    for n in range(10_000):
        limiter.take(f"k{n}", 6.0)
    assert len(limiter) == 2


def test_invalid_limits() -> None:
    for args in ((0.0, 1), (-1.0, 1), (1.0, 0)):
        with pytest.raises(ValueError):
            RateLimiter(*args)
    with pytest.raises(ValueError):
        RateLimiter(1.0, 1, max_clients=0)


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb:cccc:dddd:eeee", "2001:db8:1:2::/64"),
        ("[2001:db8::1]", "2001:db8::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("127.0.0.1", "127.0.0.1"),
        (None, UNKNOWN_CLIENT),
        ("", UNKNOWN_CLIENT),
        ("testclient", UNKNOWN_CLIENT),
    ],
)
def test_client_keys(host: str | None, key: str) -> None:
    assert client_key(host) == key


def test_one_ipv6_network_shares_a_bucket() -> None:
    limiter = ClientRateLimiter(0.5, 1, limit_loopback=True)
    assert limiter.check("2001:db8:1:2::1", 0.0).allowed
    assert not limiter.check("2001:db8:1:2::99", 0.0).allowed
    assert limiter.check("2001:db8:1:3::1", 0.0).allowed


def test_loopback_is_limited_only_when_asked() -> None:
    default = ClientRateLimiter(0.5, 1)
    assert all(default.check("127.0.0.1", 0.0).allowed for _ in range(1000))
    assert all(default.check("::1", 0.0).allowed for _ in range(10))
    assert default.check("203.0.113.7", 0.0).allowed
    assert not default.check("203.0.113.7", 0.0).allowed
    strict = ClientRateLimiter(0.5, 1, limit_loopback=True)
    assert strict.check("127.0.0.1", 0.0).allowed
    assert not strict.check("127.0.0.1", 0.0).allowed


def test_rate_zero_turns_the_limit_off() -> None:
    off = ClientRateLimiter(0.0, 1, limit_loopback=True)
    assert off.limiter is None
    assert all(off.check("203.0.113.7", 0.0).allowed for _ in range(1000))


def test_default_settings_never_stop_a_person_pressing_talk() -> None:
    """The defaults (20 at once, then one every 2 s) against someone starting a call every 2 s for an hour
    after pressing Talk 20 times in a row, from one address with loopback limiting on."""
    from voice.config import Settings

    settings = Settings()
    limiter = ClientRateLimiter(
        settings.browser_rate_per_s,
        settings.browser_rate_burst,
        max_clients=settings.browser_rate_max_clients,
        limit_loopback=True,
    )
    presses = [0.0] * 20 + [2.0 * n for n in range(1, 1800)]
    assert all(limiter.check("127.0.0.1", t).allowed for t in presses)
    assert not limiter.check("127.0.0.1", presses[-1]).allowed  # one more at that moment would not be
