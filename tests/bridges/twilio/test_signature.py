"""``X-Twilio-Signature`` checks (bridges/twilio/signature.py, web.py; protocols.md §E.4).

Valid signatures are computed with the real ``twilio.request_validator.RequestValidator``.
"""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect
from twilio.request_validator import RequestValidator, add_port  # type: ignore[import-untyped, unused-ignore]

from bridges.twilio.settings import STATUS_PATH, STREAM_PATH, VOICE_PATH, TwilioSettings
from bridges.twilio.signature import (
    HMAC_SHA1,
    HMAC_SHA256,
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    check_webhook,
    check_websocket,
    compute_signature,
    signed_url,
    stream_url,
    websocket_url_variants,
)
from bridges.twilio.web import forbidden, twiml_response, verify_webhook, verify_websocket

TOKEN = "12345678901234567890123456789012"
SHARED = "whsec_shared_key_secret"
URL = "https://voice.example.com/twilio/voice"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}


def _sig(url: str, params: dict[str, str], secret: str = TOKEN, algorithm: str = HMAC_SHA1) -> str:
    signature: str = RequestValidator(secret).compute_signature(url, params, algorithm)
    return signature


def test_valid_sha1_webhook() -> None:
    headers = {SIGNATURE_HEADER: _sig(URL, PARAMS)}
    check = check_webhook(URL, PARAMS, headers, auth_token=TOKEN)
    assert check.ok and check.reason == "ok" and check.algorithm == HMAC_SHA1 and check.url == URL


def test_header_lookup_is_case_insensitive() -> None:
    headers = {"x-twilio-signature": _sig(URL, PARAMS)}
    assert check_webhook(URL, PARAMS, headers, auth_token=TOKEN).ok


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_signature"),
        ({SIGNATURE_HEADER: ""}, "missing_signature"),
        ({SIGNATURE_HEADER: "bm90IGEgc2lnbmF0dXJl"}, "bad_signature"),
        ({SIGNATURE_HEADER: _sig(URL, PARAMS, secret="another-token")}, "bad_signature"),
        ({SIGNATURE_HEADER: _sig(URL + "?x=1", PARAMS)}, "bad_signature"),
        ({SIGNATURE_HEADER: _sig(URL, {**PARAMS, "Digits": "9"})}, "bad_signature"),
        (
            {SIGNATURE_HEADER: _sig(URL, PARAMS), SIGNATURE_SETTINGS_HEADER: "key=k1,algorithm=HMAC_MD5"},
            "unsupported_algorithm",
        ),
    ],
)
def test_refused_webhooks(headers: dict[str, str], reason: str) -> None:
    check = check_webhook(URL, PARAMS, headers, auth_token=TOKEN)
    assert not check.ok and check.reason == reason


def test_no_secret_configured_refuses_everything() -> None:
    check = check_webhook(URL, PARAMS, {SIGNATURE_HEADER: _sig(URL, PARAMS)}, auth_token=None)
    assert not check.ok and check.reason == "no_secret"


def test_sha256_variant_with_shared_key() -> None:
    headers = {
        SIGNATURE_HEADER: _sig(URL, PARAMS, secret=SHARED, algorithm=HMAC_SHA256),
        SIGNATURE_SETTINGS_HEADER: "key=webhooks_sharedkey_abc,algorithm=HMAC_SHA256",
    }
    check = check_webhook(URL, PARAMS, headers, auth_token=TOKEN, shared_key=SHARED)
    assert check.ok and check.algorithm == HMAC_SHA256
    # Without the shared key the auth token is tried, which did not sign it.
    assert check_webhook(URL, PARAMS, headers, auth_token=TOKEN).reason == "bad_signature"
    # The same SHA-256 signature without the settings header is read as SHA-1 and refused.
    alone = {SIGNATURE_HEADER: headers[SIGNATURE_HEADER]}
    assert check_webhook(URL, PARAMS, alone, auth_token=TOKEN, shared_key=SHARED).reason == "bad_signature"


def test_sha256_signed_with_the_auth_token_when_no_shared_key() -> None:
    headers = {
        SIGNATURE_HEADER: _sig(URL, PARAMS, algorithm=HMAC_SHA256),
        SIGNATURE_SETTINGS_HEADER: "algorithm=HMAC_SHA256",
    }
    assert check_webhook(URL, PARAMS, headers, auth_token=TOKEN).ok


def test_repeated_form_keys_are_signed_sorted() -> None:
    class Multi(dict[str, str]):
        def getlist(self, key: str) -> list[str]:
            return {"StatusCallbackEvent": ["ringing", "answered"]}.get(key, [self[key]])

    params = Multi({"CallSid": "CA1", "StatusCallbackEvent": "answered"})
    signature = RequestValidator(TOKEN).compute_signature(URL, params)
    assert signature == compute_signature(URL, params, TOKEN)
    assert check_webhook(URL, params, {SIGNATURE_HEADER: signature}, auth_token=TOKEN).ok


def test_url_with_explicit_port_matches_either_way() -> None:
    signature = _sig("https://voice.example.com/twilio/voice", PARAMS)
    headers = {SIGNATURE_HEADER: signature}
    assert check_webhook("https://voice.example.com:443/twilio/voice", PARAMS, headers, auth_token=TOKEN).ok


# WebSocket upgrade (no body params) -----------------------------------------------------------------------

WSS = "wss://voice.example.com/twilio/stream"


def test_websocket_upgrade_signed_over_wss_url() -> None:
    headers = {SIGNATURE_HEADER: compute_signature(WSS, {}, TOKEN)}
    check = check_websocket(WSS, headers, auth_token=TOKEN)
    assert check.ok and check.url == WSS


def test_wss_add_port_quirk() -> None:
    # RequestValidator.add_port only special-cases https, so a wss URL gets ":80" ...
    assert add_port(urlparse(WSS)) == "wss://voice.example.com:80/twilio/stream"
    # ... but the port-less variant is also tried, so a signature over the wss URL still validates ...
    signature = compute_signature(WSS, {}, TOKEN)
    assert RequestValidator(TOKEN).validate(WSS, {}, signature)
    # ... and one computed over the ":80" form too (that is the validator's doing, not ours).
    assert check_websocket(WSS, {SIGNATURE_HEADER: compute_signature(add_port(urlparse(WSS)), {}, TOKEN)},
                           auth_token=TOKEN).ok  # fmt: skip


def test_websocket_upgrade_signed_over_https_form_is_tolerated() -> None:
    signature = compute_signature("https://voice.example.com/twilio/stream", {}, TOKEN)
    check = check_websocket(WSS, {SIGNATURE_HEADER: signature}, auth_token=TOKEN)
    assert check.ok and check.url == "https://voice.example.com/twilio/stream"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {SIGNATURE_HEADER: compute_signature("wss://voice.example.com/other", {}, TOKEN)},
        {SIGNATURE_HEADER: compute_signature("wss://evil.example.com/twilio/stream", {}, TOKEN)},
        {SIGNATURE_HEADER: compute_signature(WSS, {}, "wrong-token")},
        {SIGNATURE_HEADER: compute_signature(WSS, {"a": "b"}, TOKEN)},
    ],
)
def test_websocket_upgrade_refused(headers: dict[str, str]) -> None:
    assert not check_websocket(WSS, headers, auth_token=TOKEN).ok


def test_url_helpers() -> None:
    assert signed_url("https://voice.example.com/", "/twilio/voice") == URL
    assert signed_url("https://voice.example.com/pre", "twilio/voice", "agent=a%20b") == (
        "https://voice.example.com/pre/twilio/voice?agent=a%20b"
    )
    assert (
        stream_url("https://voice.example.com/pre", "/twilio/stream")
        == "wss://voice.example.com/pre/twilio/stream"
    )
    assert stream_url("http://127.0.0.1:8080", "/twilio/stream") == "ws://127.0.0.1:8080/twilio/stream"
    assert websocket_url_variants(WSS) == (WSS, "https://voice.example.com/twilio/stream")
    assert websocket_url_variants("ws://h/p") == ("ws://h/p", "http://h/p")
    assert websocket_url_variants("https://h/p") == ("wss://h/p", "https://h/p")
    assert websocket_url_variants("nonsense") == ("nonsense",)


# Starlette helpers (in-process test client, no network) -------------------------------------------------


def _app(settings: TwilioSettings) -> Starlette:
    async def voice(request: Request) -> Response:
        check, form = await verify_webhook(request, settings, path=VOICE_PATH)
        if not check.ok:
            return forbidden(check)
        return twiml_response(f"<Response><Say>{form['From']}</Say></Response>")

    async def status(request: Request) -> Response:
        check, _ = await verify_webhook(request, settings)
        return PlainTextResponse("ok") if check.ok else forbidden(check)

    async def stream(websocket: WebSocket) -> None:
        if not verify_websocket(websocket, settings).ok:
            await websocket.close(code=1008)
            return
        await websocket.accept()
        await websocket.send_text("welcome")
        await websocket.close()

    return Starlette(
        routes=[
            Route(VOICE_PATH, voice, methods=["POST"]),
            Route(STATUS_PATH, status, methods=["POST"]),
            WebSocketRoute(STREAM_PATH, stream),
        ]
    )


@pytest.fixture
def public_settings() -> TwilioSettings:
    return TwilioSettings(account_sid="AC1", auth_token=TOKEN, public_url="https://voice.example.com")


def test_verify_webhook_against_public_url(public_settings: TwilioSettings) -> None:
    client = TestClient(_app(public_settings))
    good = {SIGNATURE_HEADER: _sig(URL + "?agent=sales", PARAMS)}
    answer = client.post(VOICE_PATH + "?agent=sales", data=PARAMS, headers=good)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/xml")
    assert "+12349013030" in answer.text
    assert client.post(VOICE_PATH, data=PARAMS).status_code == 403
    bad = {SIGNATURE_HEADER: _sig("http://testserver/twilio/voice", PARAMS)}  # the URL as seen, not public
    refused = client.post(VOICE_PATH, data=PARAMS, headers=bad)
    assert refused.status_code == 403 and "bad_signature" in refused.text
    status_sig = {SIGNATURE_HEADER: _sig("https://voice.example.com/twilio/status", {"CallSid": "CA1"})}
    assert client.post(STATUS_PATH, data={"CallSid": "CA1"}, headers=status_sig).status_code == 200


def test_verify_webhook_without_public_url_uses_the_request_url() -> None:
    client = TestClient(_app(TwilioSettings(auth_token=TOKEN)))
    headers = {SIGNATURE_HEADER: _sig("http://testserver/twilio/voice", PARAMS)}
    assert client.post(VOICE_PATH, data=PARAMS, headers=headers).status_code == 200


def test_verify_websocket(public_settings: TwilioSettings) -> None:
    client = TestClient(_app(public_settings))
    headers = {SIGNATURE_HEADER: compute_signature(WSS, {}, TOKEN)}
    with client.websocket_connect(STREAM_PATH, headers=headers) as ws:
        assert ws.receive_text() == "welcome"
    with pytest.raises(WebSocketDisconnect) as info, client.websocket_connect(STREAM_PATH) as ws:
        ws.receive_text()
    assert info.value.code == 1008


def test_oversized_webhook_body_is_refused_unread(public_settings: TwilioSettings) -> None:
    client = TestClient(_app(public_settings))
    big = {"CallSid": "CA1", "Junk": "x" * 70_000}
    headers = {SIGNATURE_HEADER: _sig(URL, big)}
    answer = client.post(VOICE_PATH, data=big, headers=headers)
    assert answer.status_code == 403 and "too_large" in answer.text
