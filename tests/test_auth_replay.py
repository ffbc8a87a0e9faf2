"""Single-use browser tokens: :func:`voice.auth.spend` over the call database's spent-token table
(:meth:`voice.store.CallStore.claim_token`), with explicit times."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from voice.auth import AuthError, BrowserGrant, check_browser, mint, spend, verify
from voice.store import SPENT_TOKEN_GRACE_S, CallStore

SECRET = "s3cret-key-for-tests"
NOW = 1_800_000_000.0
REMOTE = "203.0.113.7"


def _grant(token: str, now: float = NOW) -> BrowserGrant:
    return check_browser(
        secret=SECRET,
        token=token,
        client_host=REMOTE,
        headers={"host": "voice.example"},
        allowed_origins=[],
        open_on_loopback=True,
        agent="restaurant",
        now=now,
    )


@pytest.fixture
def store(tmp_path: Path) -> CallStore:
    return CallStore(tmp_path / "voice.db")


def test_a_token_starts_one_call(store: CallStore) -> None:
    token = mint(SECRET, 300, now=NOW)
    spend(_grant(token), store, NOW)
    with pytest.raises(AuthError) as replay:
        spend(_grant(token, NOW + 1), store, NOW + 1)
    assert replay.value.code == "token_used" and replay.value.status == 401
    assert "already been used" in replay.value.message
    assert store.spent_token_count() == 1


def test_checking_a_token_does_not_spend_it(store: CallStore) -> None:
    token = mint(SECRET, 300, now=NOW)
    for _ in range(3):  # e.g. GET /webrtc/config, then a busy answer, then the call
        _grant(token)
    assert store.spent_token_count() == 0
    spend(_grant(token), store, NOW)
    with pytest.raises(AuthError, match="already"):
        spend(_grant(token), store, NOW)


def test_open_mode_spends_nothing(store: CallStore) -> None:
    grant = BrowserGrant("open", {})
    for _ in range(3):
        spend(grant, store, NOW)
    assert store.spent_token_count() == 0


def test_tokens_minted_at_once_are_each_good_for_one_call(store: CallStore) -> None:
    tokens = [mint(SECRET, 60, agent="restaurant", now=NOW) for _ in range(200)]
    grants = [_grant(t) for t in tokens]
    assert len({g.claims["jti"] for g in grants}) == 200
    assert len({(g.claims["iat"], g.claims["exp"]) for g in grants}) == 1  # same second
    for grant in grants:
        spend(grant, store, NOW)
    for grant in grants:
        with pytest.raises(AuthError):
            spend(grant, store, NOW + 1)
    assert store.spent_token_count() == 200


def test_spent_ids_are_forgotten_once_their_token_has_expired(store: CallStore) -> None:
    assert store.claim_token("a", int(NOW) + 60, NOW)
    assert store.claim_token("b", int(NOW) + 600, NOW)
    # expired but within the grace (a wall clock stepped back must not revive it): still kept
    assert not store.claim_token("a", int(NOW) + 60, NOW + 60 + SPENT_TOKEN_GRACE_S)
    assert store.spent_token_count() == 2
    assert store.claim_token("c", int(NOW) + 900, NOW + 61 + SPENT_TOKEN_GRACE_S)
    assert store.spent_token_count() == 2  # "a" is gone, "b" and "c" stay
    assert store.claim_token("d", int(NOW) + 2000, NOW + 1000 + SPENT_TOKEN_GRACE_S)
    assert store.spent_token_count() == 1


def test_memory_stays_bounded_under_a_steady_stream_of_calls(store: CallStore) -> None:
    """One call a second with 60 s tokens for an hour: the table never holds more than one TTL plus the
    grace worth of ids."""
    most = 0
    for n in range(3600):
        now = NOW + n
        assert store.claim_token(f"jti-{n}", int(now) + 60, now)
        if n % 100 == 0:
            most = max(most, store.spent_token_count())
    assert most <= 60 + SPENT_TOKEN_GRACE_S + 1
    assert store.spent_token_count() <= 60 + SPENT_TOKEN_GRACE_S + 1


def test_a_spent_token_stays_spent_after_a_restart(tmp_path: Path) -> None:
    token = mint(SECRET, 3600, now=NOW)
    with CallStore(tmp_path / "voice.db") as first:
        spend(_grant(token), first, NOW)
    with CallStore(tmp_path / "voice.db") as second, pytest.raises(AuthError) as replay:
        spend(_grant(token, NOW + 600), second, NOW + 600)
    assert replay.value.code == "token_used"


def test_simultaneous_uses_of_one_token_let_exactly_one_call_in(tmp_path: Path) -> None:
    """Eight threads over two connections to the same database race to spend the same token."""
    stores = [CallStore(tmp_path / "voice.db"), CallStore(tmp_path / "voice.db")]
    grant = _grant(mint(SECRET, 60, now=NOW))
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def use(n: int) -> None:
        barrier.wait()
        try:
            spend(grant, stores[n % 2], NOW)
        except AuthError as exc:
            outcomes.append(exc.code)
        else:
            outcomes.append("ok")

    threads = [threading.Thread(target=use, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for s in stores:
        s.close()
    assert sorted(outcomes) == ["ok"] + ["token_used"] * 7


def test_a_signed_token_without_an_id_is_refused() -> None:
    from voice.auth import _b64encode, _signature

    for raw in (b'{"v":1,"iat":1800000000,"exp":1800000060}', b'{"v":1,"iat":1800000000,"exp":1800000060,'
                b'"jti":""}', b'{"v":1,"iat":1800000000,"exp":1800000060,"jti":7}'):  # fmt: skip
        payload = _b64encode(raw)
        with pytest.raises(AuthError) as exc:
            verify(SECRET, f"{payload}.{_signature(SECRET, payload)}", NOW)
        assert exc.value.code == "token_invalid"
