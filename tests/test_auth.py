"""voice.auth: browser tokens, origin rules, operator bearer auth, loopback-only open modes."""

from __future__ import annotations

import base64
import json

import pytest

from voice.auth import (
    MAX_TOKEN_TTL_S,
    AuthError,
    bearer_token,
    check_browser,
    check_operator,
    host_is_loopback,
    is_loopback_address,
    mint,
    normalize_origin,
    origin_allowed,
    verify,
)

SECRET = "s3cret-key-for-tests"
NOW = 1_800_000_000.0


def _forge(token: str, **changes: object) -> str:
    payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    raw = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + signature


# -- tokens ----------------------------------------------------------------------------------------------


def test_token_round_trip_carries_claims() -> None:
    token = mint(SECRET, 300, agent="restaurant", origin="https://Shop.Example:443", now=NOW)
    claims = verify(SECRET, token, NOW + 10, "https://shop.example")
    assert claims["agent"] == "restaurant"
    assert claims["origin"] == "https://shop.example"
    assert claims["exp"] == int(NOW) + 300
    assert claims["iat"] == int(NOW)
    assert claims["v"] == 1
    assert len(claims["jti"]) >= 8


def test_tokens_are_unique() -> None:
    assert mint(SECRET, 60, now=NOW) != mint(SECRET, 60, now=NOW)


def test_token_expires() -> None:
    token = mint(SECRET, 60, now=NOW)
    verify(SECRET, token, NOW + 59)
    with pytest.raises(AuthError) as exc:
        verify(SECRET, token, NOW + 60)
    assert exc.value.code == "token_expired"
    assert exc.value.status == 401


def test_token_from_the_future_is_refused() -> None:
    token = mint(SECRET, 60, now=NOW + 3600)
    with pytest.raises(AuthError) as exc:
        verify(SECRET, token, NOW)
    assert exc.value.code == "token_invalid"


def test_token_with_a_changed_claim_is_refused() -> None:
    token = mint(SECRET, 60, agent="restaurant", now=NOW)
    for forged in (_forge(token, agent="other"), _forge(token, exp=int(NOW) + 10**6)):
        with pytest.raises(AuthError) as exc:
            verify(SECRET, forged, NOW)
        assert exc.value.code == "token_invalid"


def test_token_signed_with_another_secret_is_refused() -> None:
    token = mint("another secret", 60, now=NOW)
    with pytest.raises(AuthError, match="signature"):
        verify(SECRET, token, NOW)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b.c", ".", "x" * 5000, "eyJ2IjoxfQ.", "!!!.???", "é.é", "eyJ2IjoxfQ.AAAA"],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(AuthError) as exc:
        verify(SECRET, token, NOW)
    assert exc.value.code == "token_invalid"


def test_signed_garbage_payload_is_refused() -> None:
    from voice.auth import _b64encode, _signature

    for raw in (b"not json", b"[1,2]", b'{"v":2,"exp":1,"iat":1}', b'{"v":1,"exp":"x","iat":1}'):
        payload = _b64encode(raw)
        with pytest.raises(AuthError) as exc:
            verify(SECRET, f"{payload}.{_signature(SECRET, payload)}", NOW)
        assert exc.value.code == "token_invalid"


def test_origin_bound_token_is_refused_elsewhere() -> None:
    token = mint(SECRET, 60, origin="https://shop.example", now=NOW)
    for origin in ("https://evil.example", None, "http://shop.example"):
        with pytest.raises(AuthError) as exc:
            verify(SECRET, token, NOW, origin)
        assert exc.value.code == "origin_refused"


def test_mint_checks_its_arguments() -> None:
    with pytest.raises(ValueError):
        mint(SECRET, 0, now=NOW)
    with pytest.raises(ValueError):
        mint(SECRET, MAX_TOKEN_TTL_S + 1, now=NOW)
    with pytest.raises(ValueError):
        mint(SECRET, 60, origin="not an origin", now=NOW)
    with pytest.raises(AuthError):
        mint("", 60, now=NOW)


def test_verify_without_a_secret_refuses() -> None:
    token = mint(SECRET, 60, now=NOW)
    with pytest.raises(AuthError) as exc:
        verify("", token, NOW)
    assert exc.value.status == 403


# -- addresses and origins -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("192.168.1.2", False),
        ("::ffff:10.0.0.5", False),
        ("localhost", False),  # a client address is an IP, never a name
        ("testclient", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback_address(host: str | None, expected: bool) -> None:
    assert is_loopback_address(host) is expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1:8080", True),
        ("localhost", True),
        ("LOCALHOST:80", True),
        ("app.localhost:3000", True),
        ("[::1]:8080", True),
        ("evil.example:8080", False),
        ("10.0.0.5", False),
        (None, False),
    ],
)
def test_host_is_loopback(host: str | None, expected: bool) -> None:
    assert host_is_loopback(host) is expected


def test_normalize_origin() -> None:
    assert normalize_origin("HTTPS://Shop.Example:443") == "https://shop.example"
    assert normalize_origin("http://shop.example:8080/") == "http://shop.example:8080"
    assert normalize_origin("http://[::1]:80") == "http://[::1]"
    assert normalize_origin("null") is None
    assert normalize_origin("file:///tmp/x.html") is None
    assert normalize_origin("http://host:99999") is None


def test_origin_rules() -> None:
    def allowed(origin: str | None, allow: list[str], host: str = "voice.example") -> bool:
        return origin_allowed(origin, host_header=host, allowed=allow)

    assert allowed(None, [])  # not a browser: the token check decides
    assert allowed("https://voice.example", [])  # same origin
    assert allowed("http://voice.example:8080", [], host="voice.example:8080")
    assert not allowed("https://voice.example:8443", [])  # same host, other port
    assert allowed("https://shop.example", ["https://shop.example"])
    assert allowed("https://shop.example", ["https://SHOP.example:443"])
    assert not allowed("https://evil.example", ["https://shop.example"])
    assert allowed("https://anything.example", ["*"])
    assert allowed("http://localhost:3000", [])  # development: loopback pages while the list is empty
    assert not allowed("http://localhost:3000", ["https://shop.example"])
    assert not allowed("null", [])
    assert not allowed("https://evil.example", [])


# -- operator API ----------------------------------------------------------------------------------------


def test_bearer_token_parsing() -> None:
    assert bearer_token({"authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"authorization": "bearer  abc "}) == "abc"
    assert bearer_token({"authorization": "Basic abc"}) is None
    assert bearer_token({"authorization": "Bearer "}) is None
    assert bearer_token({}) is None


def test_operator_with_a_token() -> None:
    headers = {"host": "voice.example"}
    with pytest.raises(AuthError) as exc:
        check_operator("tok", "10.0.0.5", headers)
    assert (exc.value.status, exc.value.code) == (401, "unauthorized")
    with pytest.raises(AuthError) as exc:
        check_operator("tok", "10.0.0.5", {**headers, "authorization": "Bearer wrong"})
    assert exc.value.status == 401
    # A token set means a token is needed on loopback too.
    with pytest.raises(AuthError):
        check_operator("tok", "127.0.0.1", {"host": "127.0.0.1:8080"})
    assert check_operator("tok", "10.0.0.5", {**headers, "authorization": "Bearer tok"}) == "token"


def test_operator_without_a_token_is_loopback_only() -> None:
    assert check_operator(None, "127.0.0.1", {"host": "127.0.0.1:8080"}) == "loopback"
    assert (
        check_operator(None, "::1", {"host": "localhost:8080", "origin": "http://localhost:8080"})
        == "loopback"
    )
    with pytest.raises(AuthError) as exc:
        check_operator(None, "10.0.0.5", {"host": "voice.example"})
    assert (exc.value.status, exc.value.code) == (403, "forbidden")
    # DNS rebinding: a loopback connection that names a foreign host.
    with pytest.raises(AuthError):
        check_operator(None, "127.0.0.1", {"host": "evil.example:8080"})
    # A foreign page posting to the loopback API from the operator's own browser.
    with pytest.raises(AuthError):
        check_operator(None, "127.0.0.1", {"host": "127.0.0.1:8080", "origin": "https://evil.example"})
    # Any bearer token is useless when none is configured.
    with pytest.raises(AuthError):
        check_operator(None, "10.0.0.5", {"host": "voice.example", "authorization": "Bearer x"})


# -- browser calls ---------------------------------------------------------------------------------------


def _browser(
    *,
    token: str | None = None,
    client: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
    allowed: list[str] | None = None,
    open_on_loopback: bool = True,
    agent: str = "restaurant",
    now: float = NOW,
) -> str:
    grant = check_browser(
        secret=SECRET,
        token=token,
        client_host=client,
        headers=headers if headers is not None else {"host": "127.0.0.1:8080"},
        allowed_origins=allowed or [],
        open_on_loopback=open_on_loopback,
        agent=agent,
        now=now,
    )
    return grant.mode


def test_browser_open_mode_only_on_loopback() -> None:
    assert _browser() == "open"
    assert _browser(headers={"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:8080"}) == "open"
    with pytest.raises(AuthError) as exc:
        _browser(client="10.0.0.5", headers={"host": "voice.example"})
    assert exc.value.code == "unauthorized"
    with pytest.raises(AuthError):
        _browser(open_on_loopback=False)
    with pytest.raises(AuthError):  # rebinding
        _browser(headers={"host": "evil.example:8080"})


def test_browser_token_mode() -> None:
    token = mint(SECRET, 60, agent="restaurant", now=NOW)
    headers = {"host": "voice.example", "origin": "https://voice.example"}
    assert _browser(token=token, client="10.0.0.5", headers=headers) == "token"
    with pytest.raises(AuthError) as exc:
        _browser(token=token, client="10.0.0.5", headers=headers, agent="other")
    assert exc.value.code == "forbidden"
    with pytest.raises(AuthError) as exc:
        _browser(token=token, client="10.0.0.5", headers=headers, now=NOW + 61)
    assert exc.value.code == "token_expired"
    # A bad token is refused even where open mode would let the caller in without one.
    with pytest.raises(AuthError):
        _browser(token=token + "x")


def test_browser_origin_allowlist() -> None:
    token = mint(SECRET, 60, now=NOW)
    shop = {"host": "voice.example", "origin": "https://shop.example"}
    assert _browser(token=token, client="10.0.0.5", headers=shop, allowed=["https://shop.example"]) == "token"
    with pytest.raises(AuthError) as exc:
        _browser(token=token, client="10.0.0.5", headers=shop, allowed=["https://other.example"])
    assert exc.value.code == "origin_refused"
    with pytest.raises(AuthError) as exc:
        _browser(token=token, client="10.0.0.5", headers=shop)
    assert exc.value.code == "origin_refused"
