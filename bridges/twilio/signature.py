"""Validation of ``X-Twilio-Signature`` on webhooks and on the Media Streams upgrade (protocols.md §E.4).

Twilio signs each request with ``base64(HMAC(secret, url + sorted form params))``: HMAC-SHA1 with the account
auth token, or HMAC-SHA256 with a Webhooks SharedKey secret when the request carries
``X-Twilio-Webhooks-Signature-Settings: key=…,algorithm=HMAC_SHA256`` (read with
``twilio.request_validator.get_signature_algorithm``). The check itself is
``twilio.request_validator.RequestValidator.validate``.

``url`` must be exactly the URL Twilio called, as Twilio saw it: derive it from the public base URL in
settings (``VOICE_PUBLIC_URL``) plus the request's path and query (:func:`signed_url`), never from the
``Host``/scheme a proxy handed us (a TLS-terminating proxy turns ``https`` into ``http``).

**The WebSocket upgrade** (:func:`check_websocket`) carries the signature too, with no body params: the URL is
the ``wss://`` stream URL from the TwiML. Quirk (§E.4): ``RequestValidator`` also tries the URL "with the
port", and its ``add_port`` appends ``:80`` to ``wss://`` URLs (it only special-cases ``https``); the
port-less form still matches, so a correct signature is accepted. As a tolerance for Twilio's edge we also
accept the same host and path signed as ``https://``; the HMAC still requires our secret.

Results are :class:`SignatureCheck` values (``ok`` and a ``reason`` for the log), never exceptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from twilio.request_validator import (  # type: ignore[import-untyped, unused-ignore]
    HMAC_SHA1,
    HMAC_SHA256,
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)

__all__ = [
    "HMAC_SHA1",
    "HMAC_SHA256",
    "SIGNATURE_HEADER",
    "SIGNATURE_SETTINGS_HEADER",
    "CheckReason",
    "SignatureCheck",
    "check_signature",
    "check_webhook",
    "check_websocket",
    "compute_signature",
    "signed_url",
    "stream_url",
    "websocket_url_variants",
]

CheckReason: TypeAlias = Literal[
    "ok", "missing_signature", "no_secret", "unsupported_algorithm", "bad_signature", "too_large"
]

SUPPORTED_ALGORITHMS: Final = (HMAC_SHA1, HMAC_SHA256)


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """The outcome of a signature check: ``reason`` is ``ok`` or why the request was refused (for the log).

    ``algorithm`` is what the request announced (``HMAC_SHA1`` when it announced nothing); ``url`` is the
    URL the signature was checked against (the one that matched when ``ok``).
    """

    ok: bool
    reason: CheckReason
    algorithm: str
    url: str


def signed_url(public_url: str, path: str, query: str = "") -> str:
    """The URL Twilio requested and signed: public base URL + request path (+ ``?query`` if any)."""
    base = public_url.rstrip("/")
    if not path.startswith("/"):
        path = "/" + path
    return base + path + (f"?{query}" if query else "")


def stream_url(public_url: str, path: str) -> str:
    """The ``wss://`` URL of ``path`` (``ws://`` when the public URL is plain ``http``), as put in TwiML."""
    url = signed_url(public_url, path)
    scheme, rest = url.split("://", 1)
    return ("wss" if scheme.lower() == "https" else "ws") + "://" + rest


def websocket_url_variants(url: str) -> tuple[str, ...]:
    """``url`` (``wss://…``) and the same host and path as ``https://`` (see the module docstring)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return (url,)
    scheme = scheme.lower()
    if scheme == "wss":
        return (url, "https://" + rest)
    if scheme == "ws":
        return (url, "http://" + rest)
    if scheme == "https":
        return ("wss://" + rest, url)
    if scheme == "http":
        return ("ws://" + rest, url)
    return (url,)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def compute_signature(
    url: str, params: Mapping[str, Any] | None, secret: str, algorithm: str = HMAC_SHA1
) -> str:
    """The signature Twilio puts in ``X-Twilio-Signature`` (for tests and test doubles)."""
    signature: str = RequestValidator(secret).compute_signature(url, params or {}, algorithm)
    return signature


def check_signature(
    urls: tuple[str, ...],
    params: Mapping[str, Any] | str | None,
    headers: Mapping[str, str],
    *,
    auth_token: str | None,
    shared_key: str | None = None,
) -> SignatureCheck:
    """Check ``X-Twilio-Signature`` in ``headers`` against each candidate URL (see :func:`check_webhook`)."""
    algorithm = str(get_signature_algorithm(_header(headers, SIGNATURE_SETTINGS_HEADER) or ""))
    first = urls[0] if urls else ""
    signature = _header(headers, SIGNATURE_HEADER)
    if not signature:
        return SignatureCheck(False, "missing_signature", algorithm, first)
    if algorithm.upper() not in SUPPORTED_ALGORITHMS:
        return SignatureCheck(False, "unsupported_algorithm", algorithm, first)
    secret = shared_key if algorithm.upper() == HMAC_SHA256 and shared_key else auth_token
    if not secret:
        return SignatureCheck(False, "no_secret", algorithm, first)
    validator = RequestValidator(secret)
    for url in urls:
        if validator.validate(url, params if params is not None else {}, signature, algorithm=algorithm):
            return SignatureCheck(True, "ok", algorithm, url)
    return SignatureCheck(False, "bad_signature", algorithm, first)


def check_webhook(
    url: str,
    params: Mapping[str, Any] | str | None,
    headers: Mapping[str, str],
    *,
    auth_token: str | None,
    shared_key: str | None = None,
) -> SignatureCheck:
    """Check a webhook (``/twilio/voice``, ``/twilio/status``): ``url`` from :func:`signed_url`, ``params``
    the form fields (a multi-dict such as Starlette's ``FormData`` keeps repeated keys), ``headers`` the
    request headers. HMAC-SHA256 requests use ``shared_key`` (the auth token when it is ``None``)."""
    return check_signature((url,), params, headers, auth_token=auth_token, shared_key=shared_key)


def check_websocket(
    url: str,
    headers: Mapping[str, str],
    *,
    auth_token: str | None,
    shared_key: str | None = None,
) -> SignatureCheck:
    """Check the Media Streams upgrade request: ``url`` is the ``wss://`` stream URL (see the docstring)."""
    return check_signature(
        websocket_url_variants(url), {}, headers, auth_token=auth_token, shared_key=shared_key
    )
