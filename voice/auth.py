"""Who may use the service: operator bearer tokens, short-lived browser caller tokens, origins, loopback.

Three checks, all pure functions over request facts (client address, headers) so they test without a server:

- **Operator API** (:func:`check_operator`): ``Authorization: Bearer <settings.api_token>``, compared in
  constant time. With no token configured the API answers only to loopback clients whose ``Host`` is a
  loopback name (a DNS-rebinding page cannot reach it) and whose ``Origin``, if any, is a loopback origin (a
  cross-site page cannot post to it).
- **Browser caller tokens** (:func:`mint`, :func:`verify`): ``base64url(JSON claims) "." base64url(HMAC-SHA256
  (secret, first part))``, like a compact JWS with a fixed algorithm (RFC 7515 §3.1 layout, RFC 2104 HMAC).
  Claims: ``v`` (format version 1), ``iat`` and ``exp`` (Unix seconds), ``jti`` (random id), and optional
  ``agent`` (the only agent the token may call) and ``origin`` (the only page origin it may be used from).
  An operator mints them with ``POST /api/tokens`` for a public page or the embeddable widget.
- **Origins** (:func:`origin_allowed`): a browser WebSocket's ``Origin`` must be the service's own origin, or
  listed in ``settings.allowed_origins`` (``"*"`` allows any), or, when that list is empty, a loopback origin
  (development). Clients that send no ``Origin`` (not a browser) pass this check but still need a token.

:func:`check_browser` combines them for ``/ws/browser``: open mode (no token) only for loopback clients when
``settings.browser_open_on_loopback`` is on.

**Single use** (:func:`spend`): a token starts one call. Once a call has been admitted with it, its ``jti``
is recorded until the token expires, and a second call with the same token is refused (``token_used``).
Checking a token does not spend it (``GET /webrtc/config`` and a busy answer leave it usable); starting the
call does. The record of spent ids is the call database (:meth:`voice.store.CallStore.claim_token`), not
process memory: a token may live up to :data:`MAX_TOKEN_TTL_S` and, with a configured ``token_secret``,
stays valid across restarts, so an in-memory set would re-open every unexpired token to replay after each
crash or deploy. One service owns its database (:func:`voice.server.database_lock`), the claim is a single
``INSERT`` on a primary key (the first of two simultaneous uses wins, the other is refused), and ids are
deleted once their token has expired, so the table holds at most the tokens spent within one TTL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol
from urllib.parse import urlsplit

from voice.errors import VoiceError

__all__ = [
    "MAX_JTI_CHARS",
    "MAX_TOKEN_TTL_S",
    "TOKEN_VERSION",
    "AuthError",
    "BrowserGrant",
    "SpentTokens",
    "bearer_token",
    "check_browser",
    "check_operator",
    "host_is_loopback",
    "is_loopback_address",
    "mint",
    "normalize_origin",
    "origin_allowed",
    "spend",
    "verify",
]

TOKEN_VERSION: Final = 1
MAX_TOKEN_TTL_S: Final = 24 * 3600
"""Longest lifetime a browser token may be minted with (they are meant to be short-lived)."""
MAX_TOKEN_CHARS: Final = 4096
MAX_JTI_CHARS: Final = 64
_CLOCK_SKEW_S: Final = 5

AuthCode = Literal[
    "unauthorized",  # no or wrong credentials
    "forbidden",  # credentials fine but not allowed here (origin, agent, not loopback)
    "token_expired",
    "token_invalid",
    "origin_refused",
    "token_used",  # a single-use token that already started a call
]


class AuthError(VoiceError):
    """A request was refused for authentication or authorization; ``code`` says why (stable, for clients)."""

    def __init__(self, message: str, *, code: AuthCode = "unauthorized", status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


# -- addresses ---------------------------------------------------------------------------------------------


def is_loopback_address(host: str | None) -> bool:
    """Whether a client address (``request.client.host``) is loopback: 127.0.0.0/8, ::1, ::ffff:127.x."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _split_host(value: str) -> str:
    """The host part of a ``Host`` header or netloc (``[::1]:8080`` -> ``::1``, ``a:80`` -> ``a``)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def host_is_loopback(host_header: str | None) -> bool:
    """Whether a ``Host`` header names this machine by a loopback name (``localhost``, 127.x, ``[::1]``)."""
    if not host_header:
        return False
    host = _split_host(host_header)
    return host == "localhost" or host.endswith(".localhost") or is_loopback_address(host)


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case with default ports dropped, or None if it is not an origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = 80 if parts.scheme == "http" else 443
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def _same_origin(origin: str, host_header: str | None) -> bool:
    """The page's origin names the host the request was sent to (``Host``). The scheme is taken from the
    origin: behind a TLS-terminating proxy the service itself sees plain ``ws``."""
    if not host_header:
        return False
    scheme = origin.split("://", 1)[0]
    own = normalize_origin(f"{scheme}://{host_header.strip()}")
    return own is not None and own == origin


def origin_allowed(
    origin: str | None, *, host_header: str | None, allowed: list[str] | tuple[str, ...]
) -> bool:
    """Whether a browser page at ``origin`` may open calls (see the module docstring for the rules)."""
    if origin is None:
        return True
    normalized = normalize_origin(origin)
    if normalized is None:
        return False
    if _same_origin(normalized, host_header):
        return True
    listed = {o.strip() for o in allowed}
    if "*" in listed:
        return True
    if normalized in {normalize_origin(o) for o in listed}:
        return True
    if not listed:
        return host_is_loopback(urlsplit(normalized).netloc)
    return False


# -- browser tokens ----------------------------------------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text or any(
        c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text
    ):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str | bytes, payload: str) -> str:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return _b64encode(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())


def mint(
    secret: str | bytes,
    ttl_s: float,
    agent: str | None = None,
    origin: str | None = None,
    *,
    now: float | None = None,
) -> str:
    """A signed browser token valid for ``ttl_s`` seconds from ``now`` (Unix time), optionally bound to one
    ``agent`` and one page ``origin``. ``now`` defaults to the wall clock."""
    if now is None:
        now = time.time()
    if not secret:
        raise AuthError("no token secret configured", code="forbidden", status=503)
    if not 0 < ttl_s <= MAX_TOKEN_TTL_S:
        raise ValueError(f"ttl_s must be in (0, {MAX_TOKEN_TTL_S}], got {ttl_s}")
    claims: dict[str, Any] = {
        "v": TOKEN_VERSION,
        "iat": int(now),
        "exp": int(now + ttl_s),
        "jti": secrets.token_urlsafe(9),
    }
    if agent is not None:
        claims["agent"] = agent
    if origin is not None:
        normalized = normalize_origin(origin)
        if normalized is None:
            raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
        claims["origin"] = normalized
    payload = _b64encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    return f"{payload}.{_signature(secret, payload)}"


def verify(secret: str | bytes, token: str, now: float, origin: str | None = None) -> dict[str, Any]:
    """The claims of a valid ``token``; raises :class:`AuthError` if it is malformed, forged, expired, not
    yet valid, or bound to an origin other than ``origin``."""
    if not secret:
        raise AuthError("browser tokens are not enabled on this server", code="forbidden", status=403)
    if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1 or not token.isascii():
        raise AuthError("malformed token", code="token_invalid")
    payload, signature = token.split(".", 1)
    if not hmac.compare_digest(signature.encode("ascii", "replace"), _signature(secret, payload).encode()):
        raise AuthError("bad token signature", code="token_invalid")
    try:
        claims = json.loads(_b64decode(payload))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise AuthError("malformed token", code="token_invalid") from None
    if not isinstance(claims, dict) or claims.get("v") != TOKEN_VERSION:
        raise AuthError("unsupported token version", code="token_invalid")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int) or not isinstance(iat, int):
        raise AuthError("malformed token", code="token_invalid")
    if now >= exp:
        raise AuthError("token expired", code="token_expired")
    if iat > now + _CLOCK_SKEW_S:
        raise AuthError("token not valid yet", code="token_invalid")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
        raise AuthError("malformed token (no id)", code="token_invalid")
    bound = claims.get("origin")
    if bound is not None and (origin is None or normalize_origin(origin) != bound):
        raise AuthError("token is bound to another origin", code="origin_refused", status=403)
    return claims


# -- request checks ----------------------------------------------------------------------------------------


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header (scheme case-insensitive), else None."""
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _loopback_page(client_host: str | None, headers: Mapping[str, str]) -> bool:
    """A loopback client that names us by a loopback host, from no page or a loopback page."""
    if not is_loopback_address(client_host) or not host_is_loopback(headers.get("host")):
        return False
    origin = headers.get("origin")
    if origin is None:
        return True
    normalized = normalize_origin(origin)
    return normalized is not None and host_is_loopback(urlsplit(normalized).netloc)


def check_operator(api_token: str | None, client_host: str | None, headers: Mapping[str, str]) -> str:
    """Authorize one operator API request; returns how (``"token"`` or ``"loopback"``) or raises
    :class:`AuthError` (401 without/with a wrong token, 403 when only loopback may use the API)."""
    presented = bearer_token(headers)
    if api_token:
        if presented is None:
            raise AuthError("missing bearer token", code="unauthorized", status=401)
        if not hmac.compare_digest(presented.encode("utf-8"), api_token.encode("utf-8")):
            raise AuthError("wrong bearer token", code="unauthorized", status=401)
        return "token"
    if _loopback_page(client_host, headers):
        return "loopback"
    raise AuthError(
        "the operator API answers only on loopback when no api_token is configured",
        code="forbidden",
        status=403,
    )


@dataclass(frozen=True)
class BrowserGrant:
    """Why a browser caller was let in: ``mode`` is ``"token"`` or ``"open"`` (loopback development)."""

    mode: Literal["token", "open"]
    claims: dict[str, Any]

    @property
    def agent(self) -> str | None:
        """The agent the token is restricted to, if any."""
        agent = self.claims.get("agent")
        return agent if isinstance(agent, str) else None


def check_browser(
    *,
    secret: str | bytes | None,
    token: str | None,
    client_host: str | None,
    headers: Mapping[str, str],
    allowed_origins: list[str] | tuple[str, ...],
    open_on_loopback: bool,
    agent: str,
    now: float,
) -> BrowserGrant:
    """Authorize one ``/ws/browser`` connection for ``agent``, or raise :class:`AuthError`."""
    origin = headers.get("origin")
    if not origin_allowed(origin, host_header=headers.get("host"), allowed=allowed_origins):
        raise AuthError(f"origin {origin!r} is not allowed", code="origin_refused", status=403)
    if token:
        claims = verify(secret or b"", token, now, origin)
        restricted = claims.get("agent")
        if restricted is not None and restricted != agent:
            raise AuthError(f"this token is for agent {restricted!r}", code="forbidden", status=403)
        return BrowserGrant("token", claims)
    if open_on_loopback and _loopback_page(client_host, headers):
        return BrowserGrant("open", {})
    raise AuthError("a caller token is required (POST /api/tokens)", code="unauthorized", status=401)


# -- single use --------------------------------------------------------------------------------------------


class SpentTokens(Protocol):
    """Where the ids of spent tokens are kept (:class:`voice.store.CallStore`)."""

    def claim_token(self, jti: str, exp: int, now: float) -> bool:
        """Record ``jti`` as spent until ``exp``; False if it was already spent."""
        ...


def spend(grant: BrowserGrant, spent: SpentTokens, now: float) -> None:
    """Spend the token behind ``grant`` to start one call, or raise :class:`AuthError` (``token_used``) if
    it already started one. Open-mode grants (no token) have nothing to spend."""
    if grant.mode != "token":
        return
    jti, exp = grant.claims.get("jti"), grant.claims.get("exp")
    if not isinstance(jti, str) or not isinstance(exp, int):
        raise AuthError("malformed token (no id)", code="token_invalid")
    if not spent.claim_token(jti, exp, now):
        raise AuthError(
            "this token has already been used to start a call; get a new one (POST /api/tokens)",
            code="token_used",
            status=401,
        )
