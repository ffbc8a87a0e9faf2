"""The shared grammar of SIP text (RFC 3261 §7.3.1, §25.1): tokens, comma lists, ``;name=value`` parameters,
and the parse error every SIP parser here raises.

Sans-I/O and the bottom layer of the message stack: :mod:`bridges.sip.uri`, :mod:`bridges.sip.headers` and
:mod:`bridges.sip.message` build on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from voice.errors import RemoteProtocolError

__all__ = [
    "CONTROL_RE",
    "DIGITS_RE",
    "TOKEN_RE",
    "Params",
    "ReplyContext",
    "SipParseError",
    "split_list",
]

TOKEN_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
DIGITS_RE: Final = re.compile(r"[0-9]+")
CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""A token (§25.1), a run of digits, and the control characters no header value may hold."""


# Errors --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """The headers of a bad request that a reply copies (§8.2.6): raw values, top ``Via`` first."""

    vias: tuple[str, ...]
    from_: str
    to: str
    call_id: str
    cseq: str


class SipParseError(RemoteProtocolError):
    """A SIP message (or header) from the peer could not be parsed (RFC 3261 §21.4.1 400 Bad Request).

    ``status_code`` is the reply the error calls for (400, 505 Version Not Supported, 513 Message Too
    Large); ``reply`` holds what a reply copies when one is possible (:attr:`can_reply`); pass the error to
    :func:`error_response` to build it. Without a reply context the message is dropped.
    """

    def __init__(self, detail: str, *, status_code: int = 400, reply: ReplyContext | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code
        self.reply = reply

    @property
    def can_reply(self) -> bool:
        """Whether a response can be sent (a request with parseable Via/From/To/Call-ID/CSeq)."""
        return self.reply is not None


# Header lists and parameters -----------------------------------------------------------------------------


def split_list(value: str, sep: str = ",") -> list[str]:
    """Split a header value on ``sep`` outside quoted strings and ``<...>`` (§7.3.1 comma lists).

    Empty elements are dropped; each element is stripped of surrounding whitespace.
    """
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    angle = 0
    for ch in value:
        if quoted:
            current.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
            continue
        if ch == '"':
            quoted = True
        elif ch == "<":
            angle += 1
        elif ch == ">" and angle:
            angle -= 1
        elif ch == sep and not angle:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if quoted:
        raise SipParseError(f"unterminated quoted string in {value[:64]!r}")
    parts.append("".join(current).strip())
    return [part for part in parts if part]


@dataclass(frozen=True, slots=True)
class Params:
    """An ordered list of ``;name[=value]`` parameters; names compare case-insensitively (§7.3.1)."""

    items: tuple[tuple[str, str | None], ...] = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower()
        for item_name, value in self.items:
            if item_name.lower() == key:
                return value
        return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(n.lower() == name.lower() for n, _ in self.items)

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def set(self, name: str, value: str | None) -> Params:
        """A copy with ``name`` set to ``value`` (replaced in place, or appended)."""
        key = name.lower()
        if name in self:
            return Params(tuple((n, value if n.lower() == key else v) for n, v in self.items))
        return Params((*self.items, (name, value)))

    def remove(self, name: str) -> Params:
        key = name.lower()
        return Params(tuple((n, v) for n, v in self.items if n.lower() != key))

    def __str__(self) -> str:
        return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in self.items)

    @classmethod
    def parse(cls, text: str) -> Params:
        """Parse ``;a=1;b;c="x y"`` (the leading ``;`` optional)."""
        items: list[tuple[str, str | None]] = []
        for part in split_list(text, ";"):
            name, eq, value = part.partition("=")
            name = name.strip()
            if not name or not TOKEN_RE.fullmatch(name):
                raise SipParseError(f"bad parameter name in {text[:64]!r}")
            if CONTROL_RE.search(value):
                raise SipParseError(f"control character in parameter {name!r}")
            items.append((name, value.strip() if eq else None))
        return cls(tuple(items))
