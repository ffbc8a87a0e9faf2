"""SIP header fields (RFC 3261 §7.3, §20): names and compact forms, the :class:`Headers` list, and the typed
``Via`` and ``CSeq`` values.

Sans-I/O. Parsing a malformed value raises :class:`~bridges.sip.syntax.SipParseError`; building a header
with CR/LF/NUL in it raises :class:`~voice.errors.LocalProtocolError` (header injection).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from bridges.sip.syntax import CONTROL_RE, DIGITS_RE, TOKEN_RE, Params, SipParseError, split_list
from bridges.sip.uri import parse_host_port
from voice.errors import LocalProtocolError

__all__ = [
    "COMPACT_FORMS",
    "CSeq",
    "Headers",
    "Via",
    "canonical_name",
    "header_key",
    "parse_cseq",
    "parse_via",
    "parse_via_list",
]

COMPACT_FORMS: Final[dict[str, str]] = {
    # RFC 3261 §7.3.3 and §20
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    # Extensions registered with IANA
    "o": "Event",  # RFC 6665
    "u": "Allow-Events",  # RFC 6665
    "r": "Refer-To",  # RFC 3515
    "b": "Referred-By",  # RFC 3892
    "x": "Session-Expires",  # RFC 4028
    "a": "Accept-Contact",  # RFC 3841
    "j": "Reject-Contact",  # RFC 3841
    "d": "Request-Disposition",  # RFC 3841
    "y": "Identity",  # RFC 8224
}
"""Compact header names and their full forms."""

_KNOWN_NAMES: Final = (  # noqa: SIM905 - one word per header name
    "Accept Accept-Encoding Accept-Language Alert-Info Allow Authentication-Info Authorization Call-ID "
    "Call-Info Contact Content-Disposition Content-Encoding Content-Language Content-Length Content-Type "
    "CSeq Date Error-Info Expires From In-Reply-To Max-Forwards MIME-Version Min-Expires Organization "
    "Priority Proxy-Authenticate Proxy-Authorization Proxy-Require Record-Route Reply-To Require "
    "Retry-After Route Server Subject Supported Timestamp To Unsupported User-Agent Via Warning "
    "WWW-Authenticate Event Allow-Events Refer-To Referred-By Session-Expires Min-SE RSeq RAck Reason "
    "Replaces P-Asserted-Identity P-Preferred-Identity Privacy Path Service-Route Accept-Contact "
    "Reject-Contact Request-Disposition Identity Subscription-State"
).split()
_CANONICAL: Final[dict[str, str]] = {name.lower(): name for name in _KNOWN_NAMES}
_COMPACT_KEYS: Final[dict[str, str]] = {short: full.lower() for short, full in COMPACT_FORMS.items()}
_MAX_CSEQ: Final = 2**31 - 1  # §8.1.1.5: the sequence number MUST be less than 2**31


def canonical_name(name: str) -> str:
    """The full, conventionally capitalised form of a header name (``"v"`` -> ``"Via"``, ``"call-id"``
    -> ``"Call-ID"``); unknown names are returned unchanged."""
    return _CANONICAL.get(header_key(name), name)


def header_key(name: str) -> str:
    lowered = name.strip().lower()
    return _COMPACT_KEYS.get(lowered, lowered)


# Via -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Via:
    """One ``Via`` value (§20.42, §18.2.1): ``SIP/2.0/UDP host:port;branch=...;received=...;rport``."""

    transport: str
    host: str
    port: int | None = None
    params: Params = field(default_factory=Params)
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The ``rport`` value (RFC 3581) if it carries one."""
        value = self.params.get("rport")
        return int(value) if value is not None and DIGITS_RE.fullmatch(value) else None

    @property
    def wants_rport(self) -> bool:
        """Whether the ``rport`` parameter is present (RFC 3581 §4: reply to the source port)."""
        return "rport" in self.params

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def with_params(self, params: Params) -> Via:
        return Via(self.transport, self.host, self.port, params, self.protocol)

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{self.params}"


_VIA_RE: Final = re.compile(
    r"(?P<name>[A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*(?P<version>[A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*"
    r"(?P<transport>[A-Za-z0-9\-.!%*_+`'~]+)\s+(?P<sent_by>[^;\s]+)\s*(?P<params>;.*)?",
    re.DOTALL,
)


def parse_via(text: str) -> Via:
    """Parse one ``Via`` value (§20.42); the transport is upper-cased."""
    if CONTROL_RE.search(text):
        raise SipParseError(f"control character in Via {text[:64]!r}")
    match = _VIA_RE.fullmatch(text.strip())
    if not match:
        raise SipParseError(f"bad Via: {text[:64]!r}")
    host, port = parse_host_port(match["sent_by"], "Via")
    params = Params.parse(match["params"]) if match["params"] else Params()
    branch = params.get("branch")
    if "branch" in params and not branch:
        raise SipParseError("empty Via branch")
    protocol = f"{match['name'].upper()}/{match['version']}"
    return Via(match["transport"].upper(), host, port, params, protocol)


def parse_via_list(value: str) -> list[Via]:
    """Parse a comma-joined ``Via`` header value."""
    return [parse_via(part) for part in split_list(value)]


# CSeq ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CSeq:
    """``CSeq: 314159 INVITE`` (§20.16)."""

    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    """Parse a ``CSeq`` value; the number must be below 2**31 (§8.1.1.5)."""
    parts = re.split(r"[ \t]+", text.strip(" \t"))
    if len(parts) != 2 or not DIGITS_RE.fullmatch(parts[0]) or not TOKEN_RE.fullmatch(parts[1]):
        raise SipParseError(f"bad CSeq: {text[:64]!r}")
    if len(parts[0]) > 10 or int(parts[0]) > _MAX_CSEQ:
        raise SipParseError(f"CSeq number out of range: {parts[0][:16]}")
    return CSeq(int(parts[0]), parts[1])


# Headers -------------------------------------------------------------------------------------------------


def _check_header(name: str, value: str) -> None:
    if not TOKEN_RE.fullmatch(name):
        raise LocalProtocolError(f"bad SIP header name {name!r}")
    if "\r" in value or "\n" in value or "\x00" in value:
        raise LocalProtocolError(f"CR, LF or NUL in the value of SIP header {name!r}")


class Headers:
    """An immutable, ordered list of ``(name, value)`` header fields.

    Look-ups are case-insensitive and understand compact forms (``get("Via")`` finds ``v:`` lines). Names
    are kept as written so a parsed message serializes back as it came. Changes return a new object.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = (), *, _trusted: bool = False) -> None:
        materialized = tuple(items)
        if not _trusted:
            for name, value in materialized:
                _check_header(name, value)
        self._items: tuple[tuple[str, str], ...] = materialized

    @property
    def items(self) -> tuple[tuple[str, str], ...]:
        return self._items

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"

    def get(self, name: str) -> str | None:
        """The value of the first field called ``name``, or None."""
        key = header_key(name)
        for item_name, value in self._items:
            if header_key(item_name) == key:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """The values of every field called ``name``, one per header line, in order."""
        key = header_key(name)
        return [value for item_name, value in self._items if header_key(item_name) == key]

    def get_list(self, name: str) -> list[str]:
        """Every element of a comma-list header, across all of its lines (§7.3.1)."""
        return [part for value in self.get_all(name) for part in split_list(value)]

    def add(self, name: str, value: str) -> Headers:
        """A copy with ``name: value`` appended."""
        _check_header(name, value)
        return Headers((*self._items, (name, value)), _trusted=True)

    def prepend(self, name: str, value: str) -> Headers:
        """A copy with ``name: value`` first (e.g. a new top ``Via``)."""
        _check_header(name, value)
        return Headers(((name, value), *self._items), _trusted=True)

    def set(self, name: str, value: str) -> Headers:
        """A copy with one ``name`` field holding ``value``: the first one replaced, others removed;
        appended if there was none."""
        _check_header(name, value)
        key = header_key(name)
        out: list[tuple[str, str]] = []
        replaced = False
        for item_name, item_value in self._items:
            if header_key(item_name) != key:
                out.append((item_name, item_value))
            elif not replaced:
                out.append((item_name, value))
                replaced = True
        if not replaced:
            out.append((name, value))
        return Headers(out, _trusted=True)

    def remove(self, name: str) -> Headers:
        key = header_key(name)
        return Headers(((n, v) for n, v in self._items if header_key(n) != key), _trusted=True)
