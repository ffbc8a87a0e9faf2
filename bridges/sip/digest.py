"""Digest access authentication for SIP (RFC 3261 §22.4, RFC 7616, RFC 2617, RFC 8760): client and server.

Sans-I/O and clock-free: times are arguments, random values (cnonce) can be passed in.

Client: parse a ``WWW-Authenticate`` (401) or ``Proxy-Authenticate`` (407) challenge with
:func:`parse_challenge` (or pick the best of several with :func:`pick_challenge`), then :func:`authorize`
computes the ``Authorization`` / ``Proxy-Authorization`` value (``qop=auth`` with ``nc`` and ``cnonce``,
``auth-int``, or the RFC 2069 form when the challenge has no ``qop``). Algorithms: MD5, SHA-256, SHA-512-256
and their ``-sess`` variants (RFC 7616 §3.4.2); ``userhash`` (§3.4.4).

Server: :class:`DigestServer` issues challenges with stateless nonces (an HMAC of their issue time, so any
server process with the same secret can check them), verifies credentials in constant time, reports an
expired nonce as ``stale`` (answer with a new challenge with ``stale=true``, §3.3) and refuses a nonce
count that does not grow (replay).

Malformed headers raise :class:`DigestError` (a :class:`~voice.errors.RemoteProtocolError`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from voice.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ALGORITHMS",
    "AUTH_HEADERS",
    "DigestChallenge",
    "DigestCredentials",
    "DigestError",
    "DigestServer",
    "VerifyResult",
    "authorize",
    "compute_ha1",
    "compute_response",
    "parse_challenge",
    "parse_credentials",
    "pick_challenge",
]


class DigestError(RemoteProtocolError):
    """A challenge or credentials header is malformed or asks for something unsupported."""


def _hasher(name: str) -> Callable[[bytes], str] | None:
    try:
        hashlib.new(name, b"")
    except ValueError:  # pragma: no cover - depends on the OpenSSL build
        return None
    return lambda data: hashlib.new(name, data).hexdigest()


_BASE: Final[dict[str, Callable[[bytes], str] | None]] = {
    "MD5": _hasher("md5"),
    "SHA-256": _hasher("sha256"),
    "SHA-512-256": _hasher("sha512_256"),
}
ALGORITHMS: Final[tuple[str, ...]] = tuple(
    name for base, fn in _BASE.items() if fn is not None for name in (base, f"{base}-SESS")
)
"""Supported ``algorithm`` values (RFC 7616 §3.4.2), upper-case."""

AUTH_HEADERS: Final[dict[int, tuple[str, str]]] = {
    401: ("WWW-Authenticate", "Authorization"),
    407: ("Proxy-Authenticate", "Proxy-Authorization"),
}
"""Challenge and credentials header names by status code (RFC 3261 §22.2, §22.3)."""

_PREFERENCE: Final = ("SHA-512-256", "SHA-256", "MD5")


def _hash_for(algorithm: str) -> Callable[[bytes], str]:
    base = algorithm.upper().removesuffix("-SESS")
    fn = _BASE.get(base)
    if fn is None:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}")
    return fn


# Auth-param lists (RFC 7235 §2.1, RFC 3261 §25.1) --------------------------------------------------------

_PARAM_RE: Final = re.compile(
    r'\s*([A-Za-z0-9\-_.!%*+`\'~]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*(?:,|$)', re.DOTALL
)


def _parse_params(scheme_and_params: str) -> tuple[str, dict[str, str]]:
    text = scheme_and_params.strip()
    head = re.match(r"([A-Za-z0-9\-_.!%*+`'~]+)(?:\s+|$)", text)
    if not head:
        raise DigestError(f"bad authentication header: {text[:64]!r}")
    scheme, rest = head[1], text[head.end() :]
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        match = _PARAM_RE.match(rest, pos)
        if not match or match.end() == pos:
            raise DigestError(f"bad auth-param in {rest[:64]!r}")
        name, value = match[1].lower(), match[2]
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if name in params:
            raise DigestError(f"repeated auth-param {name!r}")
        params[name] = value
        pos = match.end()
    return scheme, params


def _quote(value: str) -> str:
    if any(c in value for c in "\r\n"):
        raise LocalProtocolError("CR or LF in a digest parameter")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Challenges ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """A ``Digest`` challenge (RFC 7616 §3.3)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None
    userhash: bool = False
    charset: str | None = None

    def to_header(self) -> str:
        """The value of a ``WWW-Authenticate`` / ``Proxy-Authenticate`` header."""
        parts = [f"realm={_quote(self.realm)}"]
        if self.domain is not None:
            parts.append(f"domain={_quote(self.domain)}")
        parts.append(f"nonce={_quote(self.nonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        if self.charset is not None:
            parts.append(f"charset={self.charset}")
        if self.userhash:
            parts.append("userhash=true")
        return "Digest " + ", ".join(parts)

    @property
    def supported(self) -> bool:
        """Whether we can answer it (a known algorithm and ``auth``, ``auth-int`` or no qop)."""
        return self.algorithm.upper() in ALGORITHMS and (
            not self.qop or bool({"auth", "auth-int"} & set(self.qop))
        )


def parse_challenge(value: str) -> DigestChallenge:
    """Parse a ``WWW-Authenticate`` / ``Proxy-Authenticate`` value with the ``Digest`` scheme."""
    scheme, params = _parse_params(value)
    if scheme.lower() != "digest":
        raise DigestError(f"not a Digest challenge: {scheme[:32]!r}")
    if "realm" not in params or "nonce" not in params:
        raise DigestError("a Digest challenge needs realm and nonce")
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    return DigestChallenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=params.get("algorithm", "MD5"),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
        domain=params.get("domain"),
        userhash=params.get("userhash", "").lower() == "true",
        charset=params.get("charset"),
    )


def pick_challenge(values: Iterable[str]) -> DigestChallenge:
    """The challenge to answer among several header values: the strongest supported algorithm (RFC 8760
    §2.4 lets a server offer several); values that do not parse or are not Digest are skipped."""
    usable: list[DigestChallenge] = []
    for value in values:
        try:
            challenge = parse_challenge(value)
        except DigestError:
            continue
        if challenge.supported:
            usable.append(challenge)
    if not usable:
        raise DigestError("no supported Digest challenge")

    def rank(challenge: DigestChallenge) -> int:
        base = challenge.algorithm.upper().removesuffix("-SESS")
        return _PREFERENCE.index(base) if base in _PREFERENCE else len(_PREFERENCE)

    return min(usable, key=rank)


# Credentials ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """``Authorization`` / ``Proxy-Authorization`` credentials (RFC 7616 §3.4)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: int | None = None
    userhash: bool = False

    def to_header(self) -> str:
        """The header value, in the parameter order of the RFC 7616 §3.9.1 example."""
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"uri={_quote(self.uri)}",
        ]
        if self.algorithm is not None:
            parts.append(f"algorithm={self.algorithm}")
        parts.append(f"nonce={_quote(self.nonce)}")
        if self.qop is not None:
            parts.append(f"nc={(self.nc or 0):08x}")
            parts.append(f"cnonce={_quote(self.cnonce or '')}")
            parts.append(f"qop={self.qop}")
        parts.append(f"response={_quote(self.response)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.userhash:
            parts.append("userhash=true")
        return "Digest " + ", ".join(parts)


def parse_credentials(value: str) -> DigestCredentials:
    """Parse an ``Authorization`` / ``Proxy-Authorization`` value with the ``Digest`` scheme."""
    scheme, params = _parse_params(value)
    if scheme.lower() != "digest":
        raise DigestError(f"not Digest credentials: {scheme[:32]!r}")
    missing = [n for n in ("username", "realm", "nonce", "uri", "response") if n not in params]
    if missing:
        raise DigestError(f"Digest credentials without {', '.join(missing)}")
    nc_text = params.get("nc")
    if nc_text is not None and not re.fullmatch(r"[0-9A-Fa-f]{8}", nc_text):
        raise DigestError(f"bad nonce count {nc_text[:16]!r}")
    qop = params.get("qop")
    if qop is not None and (nc_text is None or "cnonce" not in params):
        raise DigestError("qop without nc and cnonce")
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=params.get("algorithm"),
        cnonce=params.get("cnonce"),
        opaque=params.get("opaque"),
        qop=qop.lower() if qop is not None else None,
        nc=int(nc_text, 16) if nc_text is not None else None,
        userhash=params.get("userhash", "").lower() == "true",
    )


# Computation (RFC 7616 §3.4.1-§3.4.3) --------------------------------------------------------------------


def compute_ha1(
    algorithm: str, username: str, realm: str, password: str, *, nonce: str = "", cnonce: str = ""
) -> str:
    """``A1`` hashed: ``H(username:realm:password)``, and for ``-sess`` ``H(that:nonce:cnonce)``."""
    h = _hash_for(algorithm)
    ha1 = h(f"{username}:{realm}:{password}".encode())
    return _session_ha1(algorithm, ha1, nonce, cnonce)


def _session_ha1(algorithm: str, ha1: str, nonce: str, cnonce: str) -> str:
    if algorithm.upper().endswith("-SESS"):
        return _hash_for(algorithm)(f"{ha1}:{nonce}:{cnonce}".encode())
    return ha1


def compute_response(
    *,
    algorithm: str,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: int = 1,
    cnonce: str = "",
    body: bytes = b"",
) -> str:
    """The ``response`` value (RFC 7616 §3.4.1; RFC 2069 form when ``qop`` is None).

    ``ha1`` is the (session) ``H(A1)`` from :func:`compute_ha1`.
    """
    h = _hash_for(algorithm)
    a2 = f"{method}:{uri}"
    if qop == "auth-int":
        a2 += ":" + h(body)
    ha2 = h(a2.encode())
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}".encode())
    return h(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}".encode())


def authorize(
    challenge: DigestChallenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str | None = None,
    nc: int = 1,
    body: bytes = b"",
) -> DigestCredentials:
    """Answer ``challenge`` for a request ``method uri`` (RFC 3261 §22.2, RFC 7616 §3.4).

    Uses ``qop=auth`` when offered (else ``auth-int``, else the RFC 2069 form); ``cnonce`` defaults to a
    fresh random value. Raises :class:`DigestError` for an unsupported algorithm or qop.
    """
    if not challenge.supported:
        raise DigestError(
            f"cannot answer a challenge with algorithm {challenge.algorithm} qop {challenge.qop}"
        )
    qop: str | None = None
    if challenge.qop:
        qop = "auth" if "auth" in challenge.qop else "auth-int"
    cnonce_value = cnonce if cnonce is not None else secrets.token_urlsafe(16)
    ha1 = compute_ha1(
        challenge.algorithm, username, challenge.realm, password, nonce=challenge.nonce, cnonce=cnonce_value
    )
    response = compute_response(
        algorithm=challenge.algorithm,
        ha1=ha1,
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc,
        cnonce=cnonce_value,
        body=body,
    )
    shown_user = username
    if challenge.userhash:
        shown_user = _hash_for(challenge.algorithm)(f"{username}:{challenge.realm}".encode())
    return DigestCredentials(
        username=shown_user,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        cnonce=cnonce_value if qop is not None else None,
        opaque=challenge.opaque,
        qop=qop,
        nc=nc if qop is not None else None,
        userhash=challenge.userhash,
    )


# Server side ---------------------------------------------------------------------------------------------

VerifyResult: TypeAlias = Literal["ok", "stale", "invalid"]


class DigestServer:
    """Issues Digest challenges and verifies credentials for one realm (RFC 7616 §3.3, §3.5).

    Nonces are ``base64url(issue time | HMAC(secret, issue time | realm))``: no per-nonce state is needed to
    check them, only the highest nonce count seen per nonce (bounded, for replay protection).
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
        qop: tuple[str, ...] = ("auth",),
        nonce_ttl_s: float = 300.0,
        opaque: str | None = None,
        max_tracked_nonces: int = 4096,
    ) -> None:
        unknown = [a for a in algorithms if a.upper() not in ALGORITHMS]
        if unknown or not algorithms or len(secret) < 16:
            raise LocalProtocolError(f"digest server: bad algorithms {unknown} or a secret under 16 bytes")
        self.realm = realm
        self.algorithms = algorithms
        self.qop = qop
        self.nonce_ttl_s = nonce_ttl_s
        self.opaque = opaque
        self._secret = secret
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._max_tracked = max_tracked_nonces

    def make_nonce(self, now_s: float) -> str:
        stamp = struct.pack("!d", now_s)
        mac = hmac.new(self._secret, stamp + self.realm.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(stamp + mac).decode().rstrip("=")

    def _nonce_status(self, nonce: str, now_s: float) -> VerifyResult:
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return "invalid"
        if len(raw) != 24:
            return "invalid"
        stamp, mac = raw[:8], raw[8:]
        expected = hmac.new(self._secret, stamp + self.realm.encode(), hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, expected):
            return "invalid"
        issued = struct.unpack("!d", stamp)[0]
        if not 0 <= now_s - issued <= self.nonce_ttl_s:
            return "stale"
        return "ok"

    def challenges(self, now_s: float, *, stale: bool = False) -> list[DigestChallenge]:
        """One challenge per algorithm, strongest first (send each as its own header line)."""
        nonce = self.make_nonce(now_s)
        return [
            DigestChallenge(self.realm, nonce, algorithm, self.qop, self.opaque, stale)
            for algorithm in self.algorithms
        ]

    def verify(
        self,
        credentials: DigestCredentials,
        *,
        method: str,
        now_s: float,
        password: str | None = None,
        ha1: str | None = None,
        request_uri: str | None = None,
        body: bytes = b"",
    ) -> VerifyResult:
        """Check credentials for a request ``method`` (and ``request_uri`` if given, RFC 7616 §3.4.6).

        Give the user's ``password`` or their stored ``ha1``: ``H(username:realm:password)`` with the hash of
        the algorithm used, without the ``-sess`` step (``compute_ha1("SHA-256", ...)`` for SHA-256 and
        SHA-256-sess alike). ``userhash`` credentials need the caller to map the hashed name first.
        ``stale`` means a correct answer to an expired nonce: challenge again with ``stale=true``.
        """
        algorithm = (credentials.algorithm or "MD5").upper()
        allowed = {a.upper() for a in self.algorithms}
        if algorithm not in allowed or credentials.realm != self.realm:
            return "invalid"
        if request_uri is not None and credentials.uri != request_uri:
            return "invalid"
        if credentials.qop is not None and credentials.qop not in self.qop:
            return "invalid"
        if self.qop and credentials.qop is None:
            return "invalid"
        if self.opaque is not None and credentials.opaque != self.opaque:
            return "invalid"
        status = self._nonce_status(credentials.nonce, now_s)
        if status == "invalid":
            return "invalid"
        if ha1 is None:
            if password is None:
                raise LocalProtocolError("verify() needs the password or the stored ha1")
            ha1 = _hash_for(algorithm)(f"{credentials.username}:{self.realm}:{password}".encode())
        session_ha1 = _session_ha1(algorithm, ha1, credentials.nonce, credentials.cnonce or "")
        expected = compute_response(
            algorithm=algorithm,
            ha1=session_ha1,
            nonce=credentials.nonce,
            method=method,
            uri=credentials.uri,
            qop=credentials.qop,
            nc=credentials.nc or 0,
            cnonce=credentials.cnonce or "",
            body=body,
        )
        if not hmac.compare_digest(expected.encode(), credentials.response.lower().encode()):
            return "invalid"
        if status == "stale":
            return "stale"
        if credentials.qop is not None and not self._count_ok(credentials.nonce, credentials.nc or 0):
            return "invalid"
        return "ok"

    def _count_ok(self, nonce: str, nc: int) -> bool:
        last = self._seen.get(nonce, 0)
        if nc <= last:
            return False  # a replayed or reused nonce count
        self._seen[nonce] = nc
        self._seen.move_to_end(nonce)
        while len(self._seen) > self._max_tracked:
            self._seen.popitem(last=False)
        return True
