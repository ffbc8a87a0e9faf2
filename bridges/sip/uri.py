"""SIP and other URIs (RFC 3261 §19.1) and name-addrs (§20.10, §25.1: From, To, Contact, Route...).

Sans-I/O: text in, frozen values out (``str()`` writes them back). Malformed input raises
:class:`~bridges.sip.syntax.SipParseError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from bridges.sip.syntax import CONTROL_RE, DIGITS_RE, Params, SipParseError, split_list

__all__ = [
    "NameAddr",
    "OtherUri",
    "SipUri",
    "Uri",
    "parse_host_port",
    "parse_name_addr",
    "parse_name_addr_list",
    "parse_uri",
]

_HOST_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-_.]*[A-Za-z0-9_])?\.?|\[[0-9A-Fa-f:.]+\]")
_USER_RE: Final = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+")
_PASSWORD_RE: Final = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,%]*")
_URI_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_OPAQUE_RE: Final = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")  # RFC 3986 characters


@dataclass(frozen=True, slots=True)
class SipUri:
    """A ``sip:`` or ``sips:`` URI (RFC 3261 §19.1): ``sip:user:password@host:port;params?headers``."""

    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    scheme: str = "sip"
    params: Params = field(default_factory=Params)
    headers: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(str(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{n}={v}" for n, v in self.headers))
        return "".join(out)

    @property
    def transport(self) -> str | None:
        """The ``transport`` URI parameter, lower-cased (§19.1.1)."""
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def loose_route(self) -> bool:
        """Whether the URI carries ``lr`` (a loose router, §16.12, §19.1.1)."""
        return "lr" in self.params

    @property
    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def with_params(self, params: Params) -> SipUri:
        return SipUri(self.host, self.user, self.password, self.port, self.scheme, params, self.headers)


@dataclass(frozen=True, slots=True)
class OtherUri:
    """An absolute URI of another scheme (``tel:``, ``urn:``...) kept as written (§19.1, RFC 3966)."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


Uri: TypeAlias = SipUri | OtherUri


def parse_host_port(text: str, where: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
    if not _HOST_RE.fullmatch(host):
        raise SipParseError(f"bad host in {where}: {text[:64]!r}")
    if not rest:
        return host, None
    port_text = rest[1:]
    if not rest.startswith(":") or not DIGITS_RE.fullmatch(port_text) or len(port_text) > 5:
        raise SipParseError(f"bad port in {where}: {text[:64]!r}")
    port = int(port_text)
    if port > 65535:
        raise SipParseError(f"port out of range in {where}: {port}")
    return host, port


def parse_uri(text: str) -> Uri:
    """Parse a URI: a :class:`SipUri` for ``sip``/``sips`` (§19.1.1), an :class:`OtherUri` otherwise.

    Raises :class:`SipParseError` for anything that is not an absolute URI.
    """
    text = text.strip()
    if CONTROL_RE.search(text):
        raise SipParseError(f"control character in URI {text[:64]!r}")
    scheme, colon, rest = text.partition(":")
    if not colon or not _URI_SCHEME_RE.fullmatch(scheme) or not rest or any(c.isspace() for c in rest):
        raise SipParseError(f"bad URI: {text[:64]!r}")
    lowered = scheme.lower()
    if lowered not in ("sip", "sips"):
        if not _OPAQUE_RE.fullmatch(rest):
            raise SipParseError(f"bad URI: {text[:64]!r}")
        return OtherUri(scheme, rest)
    headers: tuple[tuple[str, str], ...] = ()
    rest, question, header_text = rest.partition("?")
    if question:
        pairs = []
        for pair in header_text.split("&"):
            name, _, value = pair.partition("=")
            if not name:
                raise SipParseError(f"bad URI header in {text[:64]!r}")
            pairs.append((name, value))
        headers = tuple(pairs)
    user: str | None = None
    password: str | None = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user, colon, pw = userinfo.partition(":")
        if not _USER_RE.fullmatch(user) or not _PASSWORD_RE.fullmatch(pw):
            raise SipParseError(f"bad user part in URI {text[:64]!r}")
        password = pw if colon else None
    host_port, semicolon, param_text = rest.partition(";")
    host, port = parse_host_port(host_port, "URI")
    params = Params.parse(param_text) if semicolon else Params()
    return SipUri(host, user, password, port, lowered, params, headers)


# Name-addr (From, To, Contact, Route, Record-Route, Refer-To) ----------------------------------------------


def _unquote(value: str) -> str:
    """The content of a quoted-string (§25.1), or ``value`` unchanged if it is not quoted."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class NameAddr:
    """``"Display" <uri>;params`` (§20.10, §25.1 name-addr / addr-spec with header parameters)."""

    uri: Uri
    display_name: str | None = None
    params: Params = field(default_factory=Params)

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (§19.3)."""
        return self.params.get("tag")

    @property
    def sip_uri(self) -> SipUri:
        """The URI as a :class:`SipUri`; raises :class:`SipParseError` for another scheme."""
        if not isinstance(self.uri, SipUri):
            raise SipParseError(f"not a SIP URI: {self.uri}")
        return self.uri

    def with_tag(self, tag: str) -> NameAddr:
        return NameAddr(self.uri, self.display_name, self.params.set("tag", tag))

    def __str__(self) -> str:
        if self.display_name is None:
            head = f"<{self.uri}>"
        elif _TOKEN_LIST_RE.fullmatch(self.display_name):
            head = f"{self.display_name} <{self.uri}>"
        else:
            head = f"{_quote(self.display_name)} <{self.uri}>"
        return head + str(self.params)


_TOKEN_LIST_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+(?: [A-Za-z0-9\-.!%*_+`'~]+)*")


def parse_name_addr(text: str) -> NameAddr:
    """Parse one name-addr or addr-spec with header parameters (§20.10, §20.20, §20.39).

    In the addr-spec form (no ``<>``), parameters after the URI belong to the header, not to the URI.
    """
    text = text.strip()
    if CONTROL_RE.search(text):
        raise SipParseError(f"control character in address {text[:64]!r}")
    display: str | None = None
    if text.startswith('"'):
        match = re.match(r'"((?:[^"\\]|\\.)*)"\s*', text)
        if not match:
            raise SipParseError(f"unterminated display name: {text[:64]!r}")
        display = _unquote('"' + match.group(1) + '"')
        text = text[match.end() :]
        if not text.startswith("<"):
            raise SipParseError("a quoted display name must be followed by <uri>")
    if "<" in text.split(";", 1)[0] or text.startswith("<"):
        lt = text.find("<")
        if display is None:
            # Unquoted display names should be tokens (§25.1); peers send other text too: accept it.
            words = " ".join(text[:lt].split())
            if '"' in words:
                raise SipParseError(f"bad display name: {words[:64]!r}")
            display = words or None
        gt = text.find(">", lt)
        if gt < 0:
            raise SipParseError(f"missing '>' in {text[:64]!r}")
        uri = parse_uri(text[lt + 1 : gt])
        rest = text[gt + 1 :].strip()
    else:
        uri_text, semicolon, rest = text.partition(";")
        if not uri_text:
            raise SipParseError("empty address")
        uri = parse_uri(uri_text)
        rest = semicolon + rest
    if rest and not rest.startswith(";"):
        raise SipParseError(f"unexpected text after address: {rest[:64]!r}")
    return NameAddr(uri, display, Params.parse(rest) if rest else Params())


def parse_name_addr_list(value: str) -> list[NameAddr]:
    """Parse a comma-separated list of name-addrs (Contact, Route, Record-Route)."""
    return [parse_name_addr(part) for part in split_list(value)]
