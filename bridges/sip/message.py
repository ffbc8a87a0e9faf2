"""SIP messages: parser, serializer, stream framer and typed header accessors (RFC 3261 §7, §18.3, §20, §25).

Sans-I/O: bytes in, :class:`SipRequest` / :class:`SipResponse` out, and back. Nothing here reads a socket or
a clock.

- :func:`parse_message` parses one datagram (UDP: §18.3, bytes past ``Content-Length`` are discarded).
- :class:`SipStreamFramer` frames messages on a stream (TCP/TLS) by ``Content-Length`` (§18.3): it takes
  chunks of any size, handles partial reads and pipelining and skips CRLF keep-alives (RFC 5626 §3.5.1).
- ``msg.to_bytes()`` serializes; a canonical message (full header names, ``Name: value``, CRLF line ends,
  correct ``Content-Length``) serializes back byte for byte. Compact names (§7.3.3) are kept as written and
  understood by every accessor; folded lines (§7.3.1) are unfolded to one space.
- Typed accessors: :class:`Via`, :class:`NameAddr` (From/To/Contact/Route with tags), :class:`CSeq`,
  :class:`SipUri` (§19.1), ``Call-ID``, ``Max-Forwards``, ``Content-Length``.
- :func:`make_response` builds a response to a request as §8.2.6 says.

The pieces live in their own modules and are re-exported here, so callers import from this one:
:mod:`bridges.sip.syntax` (tokens, comma lists, :class:`Params`, :class:`SipParseError`),
:mod:`bridges.sip.uri` (:class:`SipUri`, :class:`NameAddr`) and :mod:`bridges.sip.headers`
(:class:`Headers`, compact forms, :class:`Via`, :class:`CSeq`).

Errors. Anything the peer can send ends in :class:`SipParseError` (a
:class:`~voice.errors.RemoteProtocolError`); never another exception. The error says whether a reply is
possible (:attr:`SipParseError.can_reply`: the message was a request and its ``Via``, ``From``, ``To``,
``Call-ID`` and ``CSeq`` could be parsed) and :func:`error_response` builds that reply (400 or 505, 513
for a message over the size limit); otherwise the message is dropped (§16.3 / §18.3 for responses).
:class:`SipFramingError` means a stream lost its framing (unreadable ``Content-Length``): reply if possible,
then close the connection. Building a message with CR/LF in a header raises
:class:`~voice.errors.LocalProtocolError` (header injection).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from bridges.sip.headers import (
    COMPACT_FORMS,
    CSeq,
    Headers,
    Via,
    canonical_name,
    parse_cseq,
    parse_via,
    parse_via_list,
)
from bridges.sip.syntax import (
    CONTROL_RE,
    DIGITS_RE,
    TOKEN_RE,
    Params,
    ReplyContext,
    SipParseError,
    split_list,
)
from bridges.sip.uri import (
    NameAddr,
    OtherUri,
    SipUri,
    Uri,
    parse_name_addr,
    parse_name_addr_list,
    parse_uri,
)
from voice.errors import LocalProtocolError

__all__ = [
    "COMPACT_FORMS",
    "DEFAULT_LIMITS",
    "MAGIC_COOKIE",
    "CSeq",
    "Headers",
    "NameAddr",
    "OtherUri",
    "Params",
    "ReplyContext",
    "SipFramingError",
    "SipLimits",
    "SipMessage",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "SipStreamFramer",
    "SipUri",
    "Uri",
    "Via",
    "build_request",
    "canonical_name",
    "error_response",
    "generate_branch",
    "generate_tag",
    "make_response",
    "parse_cseq",
    "parse_message",
    "parse_name_addr",
    "parse_name_addr_list",
    "parse_uri",
    "parse_via",
    "parse_via_list",
    "reason_phrase",
    "split_list",
]

MAGIC_COOKIE: Final = "z9hG4bK"
"""Prefix of an RFC 3261 branch parameter (§8.1.1.7)."""
_SIP_VERSION: Final = "SIP/2.0"

_REASONS: Final[dict[int, str]] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


def reason_phrase(status_code: int) -> str:
    """The RFC 3261 §21 reason phrase for ``status_code`` (a class default for unknown codes)."""
    if status_code in _REASONS:
        return _REASONS[status_code]
    classes = {1: "Trying", 2: "OK", 3: "Redirect", 4: "Client Error", 5: "Server Error", 6: "Global Failure"}
    return classes.get(status_code // 100, "Unknown")


class SipFramingError(SipParseError):
    """A stream transport lost its message framing (§18.3): reply if :attr:`can_reply`, then close."""


@dataclass(frozen=True, slots=True)
class SipLimits:
    """Bounds on what the parser accepts; beyond them the message is refused (513) rather than parsed."""

    max_message_size: int = 65_536
    max_headers: int = 128


DEFAULT_LIMITS: Final = SipLimits()


# Messages ------------------------------------------------------------------------------------------------


class _MessageAccessors:
    """Typed accessors shared by requests and responses.

    Each parses its header on access and raises :class:`SipParseError` if it is malformed (or, for
    mandatory headers, missing). :func:`parse_message` has already validated Via, From, To, Call-ID, CSeq,
    Max-Forwards and Content-Length, so those do not raise on a parsed message.
    """

    __slots__ = ()
    headers: Headers
    body: bytes

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"missing {name} header")
        return value

    @property
    def vias(self) -> list[Via]:
        """Every ``Via`` value in order, from separate lines and comma-joined ones (§20.42)."""
        return [parse_via(part) for part in self.headers.get_list("Via")]

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise SipParseError("missing Via header")
        return vias[0]

    @property
    def from_(self) -> NameAddr:
        return parse_name_addr(self._required("From"))

    @property
    def to(self) -> NameAddr:
        return parse_name_addr(self._required("To"))

    @property
    def call_id(self) -> str:
        value = self._required("Call-ID").strip()
        if not _valid_call_id(value):
            raise SipParseError(f"bad Call-ID: {value[:64]!r}")
        return value

    @property
    def cseq(self) -> CSeq:
        return parse_cseq(self._required("CSeq"))

    @property
    def contacts(self) -> list[NameAddr]:
        """Every ``Contact`` (§20.10); empty for none and for ``Contact: *``."""
        values = self.headers.get_list("Contact")
        if values == ["*"]:
            return []
        return [parse_name_addr(value) for value in values]

    @property
    def contact(self) -> NameAddr | None:
        contacts = self.contacts
        return contacts[0] if contacts else None

    @property
    def record_route(self) -> list[NameAddr]:
        return [parse_name_addr(value) for value in self.headers.get_list("Record-Route")]

    @property
    def route(self) -> list[NameAddr]:
        return [parse_name_addr(value) for value in self.headers.get_list("Route")]

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        if value is None:
            return None
        value = value.strip()
        if not DIGITS_RE.fullmatch(value) or len(value) > 3 or int(value) > 255:
            raise SipParseError(f"bad Max-Forwards: {value[:16]!r}")
        return int(value)

    @property
    def content_type(self) -> str | None:
        """The media type of the body, lower-cased, without parameters (``application/sdp``)."""
        value = self.headers.get("Content-Type")
        return value.split(";", 1)[0].strip().lower() if value is not None else None

    @property
    def content_length(self) -> int | None:
        values = self.headers.get_all("Content-Length")
        if not values:
            return None
        numbers = {v.strip() for v in values}
        if len(numbers) != 1:
            raise SipParseError("conflicting Content-Length headers")
        value = numbers.pop()
        if not DIGITS_RE.fullmatch(value) or len(value) > 9:
            raise SipParseError(f"bad Content-Length: {value[:16]!r}")
        return int(value)

    def _serialize(self, start_line: str) -> bytes:
        headers = self.headers
        length = str(len(self.body))
        current = headers.get_all("Content-Length")
        if current != [length]:
            headers = headers.set("Content-Length", length)
        lines = [start_line, *(f"{name}: {value}" for name, value in headers)]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        return head + self.body

    def to_bytes(self) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        return self.to_bytes()


@dataclass(frozen=True, slots=True, eq=True)
class SipRequest(_MessageAccessors):
    """A SIP request (§7.1). ``uri`` is the Request-URI as written (see :attr:`request_uri`)."""

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def request_uri(self) -> Uri:
        return parse_uri(self.uri)

    def to_bytes(self) -> bytes:
        """Serialize (§7): ``Content-Length`` is set to the body length (added if missing)."""
        return self._serialize(f"{self.method} {self.uri} {_SIP_VERSION}")

    def with_headers(self, headers: Headers) -> SipRequest:
        return SipRequest(self.method, self.uri, headers, self.body)


@dataclass(frozen=True, slots=True, eq=True)
class SipResponse(_MessageAccessors):
    """A SIP response (§7.2)."""

    status_code: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def to_bytes(self) -> bytes:
        """Serialize (§7): ``Content-Length`` is set to the body length (added if missing)."""
        if not 100 <= self.status_code <= 699:
            raise LocalProtocolError(f"status code out of range: {self.status_code}")
        if "\r" in self.reason or "\n" in self.reason:
            raise LocalProtocolError("CR or LF in a reason phrase")
        return self._serialize(f"{_SIP_VERSION} {self.status_code} {self.reason}")

    @property
    def is_provisional(self) -> bool:
        return self.status_code < 200

    @property
    def is_final(self) -> bool:
        return self.status_code >= 200

    def with_headers(self, headers: Headers) -> SipResponse:
        return SipResponse(self.status_code, self.reason, headers, self.body)


SipMessage: TypeAlias = SipRequest | SipResponse


# Parsing -------------------------------------------------------------------------------------------------

_REQUEST_LINE_RE: Final = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+) (\S+) ([A-Za-z]+/[0-9.]+)")
_STATUS_LINE_RE: Final = re.compile(r"(SIP/[0-9]+\.[0-9]+) ([0-9]{3})(?: (.*))?", re.IGNORECASE)


def _split_head(data: bytes) -> tuple[bytes, bytes, bool]:
    """Split a message at the blank line: ``(head, rest, found)``; tolerates bare LF line ends."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf < 0 and lf < 0:
        return data, b"", False
    if lf < 0 or 0 <= crlf < lf:
        return data[:crlf], data[crlf + 4 :], True
    return data[:lf], data[lf + 2 :], True


def _header_lines(head: str, limits: SipLimits) -> tuple[str, list[tuple[str, str]]]:
    """Start line and unfolded ``(name, value)`` fields of a message head (§7.3.1)."""
    lines = re.split(r"\r?\n", head)
    start_line = lines[0]
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if not fields:
                raise SipParseError("continuation line before the first header")
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not TOKEN_RE.fullmatch(name):
            raise SipParseError(f"malformed header line: {line[:64]!r}")
        fields.append((name, value.strip(" \t")))
        if len(fields) > limits.max_headers:
            raise SipParseError(f"more than {limits.max_headers} headers", status_code=513)
    for name, value in fields:
        if "\x00" in value or "\r" in value:
            raise SipParseError(f"control character in header {name!r}")
    return start_line, fields


def _reply_context(start_line: str, fields: list[tuple[str, str]]) -> ReplyContext | None:
    """What a reply to a bad request copies, if the message is a request and those headers parse."""
    if start_line.upper().startswith("SIP/"):
        return None  # a response: never answered
    try:
        headers = Headers(fields, _trusted=True)
        vias = headers.get_list("Via")
        if not vias:
            return None
        for via in vias:
            parse_via(via)
        from_, to, call_id, cseq = (headers.get(n) for n in ("From", "To", "Call-ID", "CSeq"))
        if from_ is None or to is None or call_id is None or cseq is None:
            return None
        for value in (from_, to, call_id, cseq):
            if CONTROL_RE.search(value):
                return None
        parse_name_addr(from_)
        parse_name_addr(to)
        parse_cseq(cseq)
        if not _valid_call_id(call_id):
            return None
    except SipParseError:
        return None
    return ReplyContext(tuple(vias), from_, to, call_id.strip(), cseq)


def _valid_call_id(value: str) -> bool:
    """``Call-ID: word ["@" word]`` (§25.1): non-empty, no whitespace or control characters."""
    value = value.strip()
    return bool(value) and not any(c.isspace() for c in value) and not CONTROL_RE.search(value)


def _lenient_context(head: str) -> ReplyContext | None:
    """The reply context of a head that failed to parse: every ``name: value`` line, no other checks."""
    lines = re.split(r"\r?\n", head)
    fields = [(n.strip(), v.strip()) for n, colon, v in (line.partition(":") for line in lines[1:]) if colon]
    return _reply_context(lines[0], fields)


def _validate(message: SipMessage) -> None:
    """Check the headers every message must carry (§8.1.1, §20): raises :class:`SipParseError`."""
    if not message.vias:
        raise SipParseError("missing Via header")
    message.from_  # noqa: B018 - parse for validation
    message.to  # noqa: B018
    message.call_id  # noqa: B018
    cseq = message.cseq
    message.max_forwards  # noqa: B018
    message.content_length  # noqa: B018
    if isinstance(message, SipRequest):
        if cseq.method != message.method:
            raise SipParseError(f"CSeq method {cseq.method} does not match the request method")
        message.request_uri  # noqa: B018


def _parse(data: bytes, limits: SipLimits, *, stream: bool) -> SipMessage:
    head_bytes, rest, found = _split_head(data)
    head = head_bytes.decode("utf-8", "surrogateescape")
    try:
        start_line, fields = _header_lines(head, limits)
    except SipParseError as exc:
        # Even a broken head may let us answer: retry leniently for the reply context only.
        raise SipParseError(exc.detail, status_code=exc.status_code, reply=_lenient_context(head)) from None
    reply = _reply_context(start_line, fields)
    try:
        if len(data) > limits.max_message_size:
            raise SipParseError(f"message larger than {limits.max_message_size} bytes", status_code=513)
        if not found:
            raise SipParseError("no blank line after the headers")
        message = _build(start_line, fields, rest, stream=stream)
        _validate(message)
    except SipParseError as exc:
        raise SipParseError(exc.detail, status_code=exc.status_code, reply=reply) from None
    return message


def _build(start_line: str, fields: list[tuple[str, str]], rest: bytes, *, stream: bool) -> SipMessage:
    headers = Headers(fields, _trusted=True)
    length_values = headers.get_all("Content-Length")
    if length_values:
        values = {v.strip() for v in length_values}
        value = values.pop()
        if values or not DIGITS_RE.fullmatch(value) or len(value) > 9:
            raise SipParseError("bad Content-Length")
        length = int(value)
        if length > len(rest):
            raise SipParseError(f"body shorter than Content-Length ({len(rest)} < {length})")
        body = rest[:length]  # §18.3: bytes past the body are discarded
    else:
        body = b"" if stream else rest
    if CONTROL_RE.search(start_line) or "\r" in start_line:
        raise SipParseError(f"control character in the start line: {start_line[:64]!r}")
    status = _STATUS_LINE_RE.fullmatch(start_line)
    if status:
        if status[1].upper() != _SIP_VERSION:
            raise SipParseError(f"unsupported version {status[1]}")
        code = int(status[2])
        if not 100 <= code <= 699:
            raise SipParseError(f"bad status code {code}")
        return SipResponse(code, status[3] or "", headers, body)
    request = _REQUEST_LINE_RE.fullmatch(start_line)
    if not request:
        raise SipParseError(f"bad start line: {start_line[:64]!r}")
    if request[3].upper() != _SIP_VERSION:
        raise SipParseError(f"unsupported version {request[3][:16]}", status_code=505)
    return SipRequest(request[1], request[2], headers, body)


def parse_message(data: bytes, *, limits: SipLimits = DEFAULT_LIMITS) -> SipMessage:
    """Parse one SIP message from a datagram (§7, §18.3).

    Leading CRLFs are ignored (§7.5). Without ``Content-Length`` the body is the rest of the datagram;
    with it, bytes past the body are discarded and a short body is an error. Raises
    :class:`SipParseError` and nothing else on any input.
    """
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError("empty message")
    return _parse(data, limits, stream=False)


class SipStreamFramer:
    """Frames SIP messages on a byte stream by ``Content-Length`` (§18.3).

    ``feed()`` chunks as they arrive, then call ``next_message()`` until it returns None::

        framer.feed(chunk)
        while (message := framer.next_message()) is not None: ...

    ``next_message`` raises :class:`SipParseError` for a malformed message it has already consumed (reply
    if ``can_reply``, then carry on calling) and :class:`SipFramingError` when the stream cannot be framed
    any more (a bad ``Content-Length``, or a head or body over the size limit): every later call raises it
    again, and the connection should be closed. A missing ``Content-Length`` is read as 0. CRLF
    keep-alives between messages are skipped and counted in :attr:`keepalives` (RFC 5626 §3.5.1: answer
    each double CRLF ping with one CRLF).
    """

    def __init__(self, limits: SipLimits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buffer = bytearray()
        self._failed: SipFramingError | None = None
        self._framed: tuple[int, int] | None = None
        self._scanned = 0
        self.keepalives = 0
        """Double-CRLF pings seen so far."""

    @property
    def buffered(self) -> int:
        """Bytes received and not yet framed into a message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._failed is None:
            self._buffer += data

    def next_message(self) -> SipMessage | None:
        """The next complete message, or None until more bytes arrive."""
        if self._failed is not None:
            raise self._failed
        self._skip_keepalives()
        if not self._buffer:
            return None
        if self._framed is None:
            self._framed = self._frame()
            if self._framed is None:
                return None
        head_len, length = self._framed
        if len(self._buffer) < head_len + length:
            return None
        data = bytes(self._buffer[: head_len + length])
        del self._buffer[: head_len + length]
        self._framed = None
        self._scanned = 0
        return _parse(data, self._limits, stream=True)

    def _frame(self) -> tuple[int, int] | None:
        """``(head length, body length)`` of the message at the front, once its head is complete.

        The search for the blank line resumes where the last one stopped, so many small reads of a
        large head cost linear time.
        """
        start = max(0, self._scanned - 3)
        ends = [(self._buffer.find(sep, start), len(sep)) for sep in (b"\r\n\r\n", b"\n\n")]
        found = [(pos, size) for pos, size in ends if pos >= 0]
        if not found:
            self._scanned = len(self._buffer)
            if len(self._buffer) > self._limits.max_message_size:
                self._fail(SipFramingError("message head larger than the size limit", status_code=513))
            return None
        pos, size = min(found)
        head = bytes(self._buffer[:pos])
        length = self._content_length(head)
        if pos + size + length > self._limits.max_message_size:
            self._fail(
                SipFramingError(
                    "message larger than the size limit", status_code=513, reply=self._context(head)
                )
            )
        return pos + size, length

    def _skip_keepalives(self) -> None:
        if self._framed is not None:
            return
        while self._buffer[:2] == b"\r\n" or self._buffer[:1] == b"\n":
            self._scanned = 0
            if self._buffer[:4] == b"\r\n\r\n":
                self.keepalives += 1
                del self._buffer[:4]
            elif self._buffer[:2] == b"\r\n":
                if len(self._buffer) < 4 and b"\r\n\r\n".startswith(bytes(self._buffer)):
                    return  # wait: this may be the start of a ping
                del self._buffer[:2]
            else:
                del self._buffer[:1]

    def _context(self, head: bytes) -> ReplyContext | None:
        return _lenient_context(head.decode("utf-8", "surrogateescape"))

    def _content_length(self, head: bytes) -> int:
        values: set[str] = set()
        for line in re.split(rb"\r?\n", head)[1:]:
            name, colon, value = line.partition(b":")
            if colon and name.strip().lower() in (b"content-length", b"l"):
                values.add(value.strip().decode("latin-1"))
        if not values:
            return 0
        value = values.pop()
        if values or not DIGITS_RE.fullmatch(value) or len(value) > 9:
            self._fail(SipFramingError("bad Content-Length on a stream", reply=self._context(head)))
        return int(value)

    def _fail(self, error: SipFramingError) -> None:
        self._failed = error
        self._buffer.clear()
        raise error


# Building ------------------------------------------------------------------------------------------------


def generate_tag() -> str:
    """A fresh random ``tag`` (§19.3: at least 32 bits of randomness)."""
    return secrets.token_hex(6)


def generate_branch() -> str:
    """A fresh ``branch`` with the RFC 3261 magic cookie (§8.1.1.7)."""
    return MAGIC_COOKIE + secrets.token_hex(10)


_DIALOG_METHODS: Final = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})


def make_response(
    request: SipRequest,
    status_code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> SipResponse:
    """Build a response to ``request`` as RFC 3261 §8.2.6 says.

    Copies every ``Via`` (in order), ``From``, ``To``, ``Call-ID`` and ``CSeq``; adds ``to_tag`` to ``To``
    when it has none (a fresh random tag if ``to_tag`` is None, except for 100: §8.2.6.2; pass the
    dialog's tag for every response of a dialog); copies ``Timestamp`` into a 100 (§8.2.6.1) and
    ``Record-Route`` into dialog-creating 101-299 responses (§12.1.1). ``headers`` are appended, then
    ``Content-Type`` (if given) and ``Content-Length``.
    """
    out: list[tuple[str, str]] = [("Via", via) for via in request.headers.get_all("Via")]
    to_value = request.headers.get("To") or ""
    if status_code > 100 and "tag" not in request.to.params:
        to_value = str(request.to.with_tag(to_tag or generate_tag()))
    out += [
        ("From", request.headers.get("From") or ""),
        ("To", to_value),
        ("Call-ID", request.headers.get("Call-ID") or ""),
        ("CSeq", request.headers.get("CSeq") or ""),
    ]
    if status_code == 100 and (stamp := request.headers.get("Timestamp")) is not None:
        out.append(("Timestamp", stamp))
    if 100 < status_code < 300 and request.method in _DIALOG_METHODS:
        out += [("Record-Route", value) for value in request.headers.get_all("Record-Route")]
    out += list(headers)
    if content_type is not None:
        out.append(("Content-Type", content_type))
    out.append(("Content-Length", str(len(body))))
    return SipResponse(status_code, reason or reason_phrase(status_code), Headers(out), body)


def error_response(error: SipParseError, *, to_tag: str | None = None) -> SipResponse | None:
    """The reply to a request that failed to parse, or None when none is possible (drop it).

    The reason phrase names the problem (§21.4.1: "SHOULD identify the syntax problem in more detail").
    """
    ctx = error.reply
    if ctx is None:
        return None
    to_value = ctx.to
    try:
        to = parse_name_addr(ctx.to)
        if to.tag is None:
            to_value = str(to.with_tag(to_tag or generate_tag()))
    except SipParseError:
        pass
    detail = "".join(c if " " <= c <= "~" else "?" for c in error.detail)[:80]
    out = [("Via", via) for via in ctx.vias]
    out += [("From", ctx.from_), ("To", to_value), ("Call-ID", ctx.call_id), ("CSeq", ctx.cseq)]
    out.append(("Content-Length", "0"))
    return SipResponse(error.status_code, f"{reason_phrase(error.status_code)} ({detail})", Headers(out))


def build_request(
    method: str,
    uri: Uri | str,
    *,
    via: Via,
    from_: NameAddr,
    to: NameAddr,
    call_id: str,
    cseq: int,
    contact: NameAddr | None = None,
    max_forwards: int = 70,
    route: Iterable[NameAddr | str] = (),
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> SipRequest:
    """Build an out-of-dialog request with the mandatory headers of §8.1.1 in the usual order, ending with
    ``Content-Type`` (if given) and ``Content-Length``."""
    out: list[tuple[str, str]] = [("Via", str(via)), ("Max-Forwards", str(max_forwards))]
    out += [("Route", str(r)) for r in route]
    out += [("From", str(from_)), ("To", str(to)), ("Call-ID", call_id), ("CSeq", f"{cseq} {method}")]
    if contact is not None:
        out.append(("Contact", str(contact)))
    out += list(headers)
    if content_type is not None:
        out.append(("Content-Type", content_type))
    out.append(("Content-Length", str(len(body))))
    return SipRequest(method, str(uri), Headers(out), body)
