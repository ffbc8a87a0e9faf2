"""RealtimeConnection against misbehaving WebSocket servers on 127.0.0.1, and upstream_target."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import pytest
from openai.types.realtime import ResponseAudioDeltaEvent, SessionCreatedEvent
from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from tests.conftest import free_port
from tests.realtime.samples import REAL_SAMPLES
from voice.config import Settings
from voice.errors import ConfigError, UpstreamAuthError, UpstreamClosedError, UpstreamConnectError
from voice.realtime.builders import input_audio_append, response_create
from voice.realtime.client import (
    MaskPool,
    RealtimeConnection,
    encode_event,
    masked_frame,
    safe_url,
    upstream_target,
)
from voice.realtime.events import MalformedServerEvent, UnknownServerEvent

Handler = Callable[[ServerConnection], Awaitable[None]]
ProcessRequest = Callable[[ServerConnection, Request], Response | None]

SESSION_CREATED = json.dumps(REAL_SAMPLES["session.created"])
DELTA = json.dumps(REAL_SAMPLES["response.output_audio.delta"])
SECRET = "sk-test-SECRET-never-logged"


@asynccontextmanager
async def ws_server(
    handler: Handler, process_request: ProcessRequest | None = None, compression: str | None = "deflate"
) -> AsyncIterator[str]:
    async with serve(
        handler, "127.0.0.1", 0, process_request=process_request, compression=compression
    ) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"


async def test_misbehaving_stream_never_ends_early() -> None:
    received: list[str] = []
    headers_seen: dict[str, str] = {}

    def remember(connection: ServerConnection, request: Request) -> None:
        headers_seen.update(request.headers.raw_items())

    async def handler(ws: ServerConnection) -> None:
        await ws.send(SESSION_CREATED)
        received.append(str(await ws.recv()))
        received.append(str(await ws.recv()))
        await ws.send('{"type":"response.brand_new_event","event_id":"event_x","data":[1,2]}')
        await ws.send('{"type":"response.brand_new_event","event_id":"event_y"}')
        await ws.send("this is not json")
        await ws.send("[1,2,3]")
        await ws.send('{"no_type":true}')
        await ws.send('{"type":"response.output_audio.delta","delta":5}')
        await ws.send(DELTA.encode())  # a binary frame holding a valid event
        await ws.send(b"\x00\xff\x10 binary garbage")
        await ws.send(DELTA)
        await ws.close(1000, "bye")

    with capture_logs() as logs:
        async with ws_server(handler, remember) as url:
            conn = await RealtimeConnection.open(
                url, headers={"Authorization": f"Bearer {SECRET}"}, call_id="call_test"
            )
            async with conn:
                await conn.send(response_create(instructions="héllo"))
                await conn.send(input_audio_append(b"\x00\x01"))
                events = [event async for event in conn]
    assert headers_seen.get("Authorization") == f"Bearer {SECRET}"
    assert "OpenAI-Beta" not in headers_seen
    # Sent as compact JSON text, UTF-8 kept as is.
    first = json.loads(received[0])
    assert first["type"] == "response.create" and first["response"] == {"instructions": "héllo"}
    assert ", " not in received[0] and ": " not in received[0] and "héllo" in received[0]
    assert json.loads(received[1])["audio"] == "AAE="

    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "SessionCreatedEvent",
        "UnknownServerEvent",
        "UnknownServerEvent",
        "MalformedServerEvent",
        "MalformedServerEvent",
        "MalformedServerEvent",
        "MalformedServerEvent",
        "ResponseAudioDeltaEvent",
        "MalformedServerEvent",
        "ResponseAudioDeltaEvent",
    ]
    unknown = events[1]
    assert isinstance(unknown, UnknownServerEvent) and unknown.data["data"] == [1, 2]
    assert conn.closed_error is not None
    assert (conn.closed_error.code, conn.closed_error.reason) == (1000, "bye")
    assert (conn.unknown_events, conn.malformed_events) == (2, 5)

    # Logged with the connection's bound context; unknown types once per type; never the key.
    assert all(
        entry.get("call_id") == "call_test" for entry in logs if entry["event"].startswith("realtime.")
    )
    assert [e["type"] for e in logs if e["event"] == "realtime.unknown_event"] == ["response.brand_new_event"]
    assert len([e for e in logs if e["event"] == "realtime.malformed_event"]) == 5
    assert [e["size"] for e in logs if e["event"] == "realtime.binary_frame"] == [len(DELTA)]
    assert SECRET not in repr(logs)
    assert "model=" not in repr(logs)  # the URL is logged without its query string


async def test_abrupt_close_without_close_frame() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(SESSION_CREATED)
        await ws.send(DELTA)
        await asyncio.sleep(0.05)
        ws.transport.abort()  # TCP reset: no close frame

    async with ws_server(handler) as url, await RealtimeConnection.open(url) as conn:
        assert isinstance(await conn.recv(), SessionCreatedEvent)
        assert isinstance(await conn.recv(), ResponseAudioDeltaEvent)
        with pytest.raises(UpstreamClosedError) as info:
            await conn.recv()
        assert info.value.code == 1006 and info.value.reason == ""
        with pytest.raises(UpstreamClosedError):
            await conn.recv()  # stays closed
        with pytest.raises(UpstreamClosedError):
            await conn.send(response_create())
        assert [e async for e in conn] == []  # iteration simply ends


async def test_iteration_ends_on_abrupt_close() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(SESSION_CREATED)
        ws.transport.abort()

    async with ws_server(handler) as url, await RealtimeConnection.open(url) as conn:
        events = [e async for e in conn]
    assert [type(e) for e in events] == [SessionCreatedEvent]
    assert conn.closed_error is not None and conn.closed_error.code == 1006


async def test_send_after_server_close() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.close(1011, "internal error")

    async with ws_server(handler) as url, await RealtimeConnection.open(url) as conn:
        with pytest.raises(UpstreamClosedError) as info:
            await conn.recv()
        assert (info.value.code, info.value.reason) == (1011, "internal error")
        with pytest.raises(UpstreamClosedError):
            await conn.send(response_create())


async def test_message_larger_than_max_size() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "response.output_audio.delta", "delta": "A" * 5000}))
        await ws.wait_closed()

    async with ws_server(handler) as url, await RealtimeConnection.open(url, max_size=1000) as conn:
        with pytest.raises(UpstreamClosedError) as info:
            await conn.recv()
    assert info.value.code == 1009


def _refuse(status: HTTPStatus, body: str) -> ProcessRequest:
    def process_request(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(status, body)

    return process_request


async def _never(ws: ServerConnection) -> None:
    raise AssertionError("the handshake should have been refused")


@pytest.mark.parametrize("status", [HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN])
async def test_handshake_auth_refusal_with_json_body(status: HTTPStatus) -> None:
    body = json.dumps(
        {"error": {"message": "Incorrect API key provided: sk-te***ged.", "type": "invalid_request_error",
                   "code": "invalid_api_key", "param": None}}
    )  # fmt: skip
    async with ws_server(_never, _refuse(status, body)) as url:
        with pytest.raises(UpstreamAuthError) as info:
            await RealtimeConnection.open(url, headers={"Authorization": f"Bearer {SECRET}"})
    err = info.value
    assert isinstance(err, UpstreamConnectError)  # callers may catch the family
    assert err.status == status.value
    assert "Incorrect API key provided: sk-te***ged." in str(err)
    assert SECRET not in str(err)


async def test_handshake_auth_refusal_with_plain_body() -> None:
    async with ws_server(_never, _refuse(HTTPStatus.UNAUTHORIZED, "go away")) as url:
        with pytest.raises(UpstreamAuthError, match="go away"):
            await RealtimeConnection.open(url)


@pytest.mark.parametrize(
    ("status", "body", "text"),
    [
        (HTTPStatus.BAD_REQUEST, '{"error":{"code":"OpperationNotSupported","message":"The realtime '
         'operation does not work with the specified model."}}', "does not work with the specified model"),
        (HTTPStatus.NOT_FOUND, "Not Found", "Not Found"),
        (HTTPStatus.INTERNAL_SERVER_ERROR, "", "HTTP 500"),
        (HTTPStatus.TOO_MANY_REQUESTS, '{"message":"slow down"}', "slow down"),
    ],
)  # fmt: skip
async def test_handshake_other_status(status: HTTPStatus, body: str, text: str) -> None:
    async with ws_server(_never, _refuse(status, body)) as url:
        with pytest.raises(UpstreamConnectError) as info:
            await RealtimeConnection.open(url)
    assert not isinstance(info.value, UpstreamAuthError)
    assert info.value.status == status.value
    assert text in str(info.value)


async def test_connection_refused() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(UpstreamConnectError) as info:
        await RealtimeConnection.open(f"ws://127.0.0.1:{port}/v1/realtime")
    assert info.value.status is None
    assert "cannot connect" in str(info.value)


async def test_handshake_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client gives up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(UpstreamConnectError, match=r"timed out after 0\.3 s"):
            await RealtimeConnection.open(f"ws://127.0.0.1:{port}/", open_timeout=0.3)
        server.close()


@pytest.mark.parametrize(
    ("reply", "status"),
    [(b"garbage\r\n\r\n", None), (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 200)],
)
async def test_not_a_websocket_server(reply: bytes, status: int | None) -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(UpstreamConnectError) as info:
            await RealtimeConnection.open(f"ws://127.0.0.1:{port}/", open_timeout=2)
        server.close()
    assert info.value.status == status


@pytest.mark.parametrize("url", ["http://127.0.0.1/v1/realtime", "not a url", "ws://[::1/x"])
async def test_invalid_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        await RealtimeConnection.open(url)


# OpenAI refuses a bad key or model after the upgrade: an error event then close 3000 / 4000.


def _refusal_handler(code: str, close_code: int) -> Handler:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(
            json.dumps(
                {"type": "error", "event_id": "event_1",
                 "error": {"type": "invalid_request_error", "code": code, "message": f"refused: {code}",
                           "param": None, "event_id": None}}
            )
        )  # fmt: skip
        await ws.close(close_code, f"invalid_request_error.{code}")

    return handler


async def test_wait_for_session_auth_refusal() -> None:
    async with (
        ws_server(_refusal_handler("invalid_api_key", 3000)) as url,
        await RealtimeConnection.open(url) as conn,
    ):
        with pytest.raises(UpstreamAuthError, match="refused: invalid_api_key"):
            await conn.wait_for_session()


async def test_wait_for_session_model_refusal() -> None:
    async with (
        ws_server(_refusal_handler("invalid_model", 4000)) as url,
        await RealtimeConnection.open(url) as conn,
    ):
        with pytest.raises(UpstreamConnectError) as info:
            await conn.wait_for_session()
    assert not isinstance(info.value, UpstreamAuthError)
    assert "refused: invalid_model" in str(info.value) and "close 4000" in str(info.value)


async def test_wait_for_session_ok_and_timeout() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send('{"type":"something.early"}')
        await ws.send(SESSION_CREATED)
        await ws.wait_closed()

    async with ws_server(handler) as url, await RealtimeConnection.open(url) as conn:
        event = await conn.wait_for_session(limit_s=5)
        assert event.session.type == "realtime"

    async def mute(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with ws_server(mute) as url, await RealtimeConnection.open(url) as conn:
        with pytest.raises(UpstreamConnectError, match=r"no session\.created"):
            await conn.wait_for_session(limit_s=0.2)


async def test_malformed_events_are_yielded_not_raised() -> None:
    async def handler(ws: ServerConnection) -> None:
        for _ in range(30):
            await ws.send("{")
        await ws.close()

    with capture_logs() as logs:
        async with ws_server(handler) as url, await RealtimeConnection.open(url) as conn:
            events = [e async for e in conn]
    assert len(events) == 30 and all(isinstance(e, MalformedServerEvent) for e in events)
    # Log floods are capped: the first 20 are logged.
    assert len([e for e in logs if e["event"] == "realtime.malformed_event"]) == 20


# upstream_target --------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "VOICE_OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "VOICE_AZURE_API_KEY",
                 "VOICE_UPSTREAM_URL", "VOICE_AZURE_ENDPOINT", "VOICE_AZURE_DEPLOYMENT", "VOICE_CONFIG",
                 "VOICE_HOST", "VOICE_PORT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def settings(**kwargs: Any) -> Settings:
    return Settings(**kwargs)


@pytest.mark.usefixtures("clean_env")
def test_target_openai() -> None:
    url, headers = upstream_target(settings(openai_api_key="sk-abc"), "gpt-realtime")
    assert url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert headers == {"Authorization": "Bearer sk-abc"}


@pytest.mark.usefixtures("clean_env")
def test_target_azure_ga() -> None:
    s = settings(
        azure_endpoint="https://my-res.openai.azure.com/",
        AZURE_OPENAI_API_KEY="az-key",
        openai_api_key="sk-ignored",
    )
    url, headers = upstream_target(s, "gpt-realtime")
    assert url == "wss://my-res.openai.azure.com/openai/v1/realtime?model=gpt-realtime"
    assert headers == {"api-key": "az-key"}
    s = settings(
        azure_endpoint="https://my-res.openai.azure.com", AZURE_OPENAI_API_KEY="k", azure_deployment="my rt"
    )
    assert upstream_target(s, "gpt-realtime")[0].endswith("/openai/v1/realtime?model=my%20rt")
    with pytest.raises(ConfigError, match="AZURE_OPENAI_API_KEY"):
        upstream_target(settings(azure_endpoint="https://my-res.openai.azure.com"), "gpt-realtime")


@pytest.mark.usefixtures("clean_env")
def test_target_custom_url() -> None:
    url, headers = upstream_target(settings(upstream_url="ws://127.0.0.1:9000/v1/realtime"), "gpt-realtime")
    assert (url, headers) == ("ws://127.0.0.1:9000/v1/realtime?model=gpt-realtime", {})
    # The URL's own model / call_id wins.
    url, _ = upstream_target(
        settings(upstream_url="wss://proxy.example/v1/realtime?call_id=rtc_1"), "gpt-realtime"
    )
    assert url == "wss://proxy.example/v1/realtime?call_id=rtc_1"
    url, headers = upstream_target(
        settings(upstream_url="wss://proxy.example/rt?x=1", openai_api_key="sk-k"), "gpt-realtime-mini"
    )
    assert url == "wss://proxy.example/rt?x=1&model=gpt-realtime-mini"
    assert headers == {"Authorization": "Bearer sk-k"}
    # The key goes to a loopback ws:// URL, never to a remote one in clear text.
    assert upstream_target(settings(upstream_url="ws://localhost:1/x", openai_api_key="sk-k"), "m")[1]
    with pytest.raises(ConfigError, match="unencrypted"):
        upstream_target(settings(upstream_url="ws://proxy.example/x", openai_api_key="sk-k"), "m")
    with pytest.raises(ConfigError, match="ws:// or wss://"):
        upstream_target(settings(upstream_url="https://api.openai.com/v1/realtime"), "m")


@pytest.mark.usefixtures("clean_env")
def test_target_local_engine_default() -> None:
    url, headers = upstream_target(settings(), "gpt-realtime")
    assert (url, headers) == ("ws://127.0.0.1:8080/v1/realtime?model=gpt-realtime", {})
    assert upstream_target(settings(host="0.0.0.0", port=9), "m")[0] == "ws://127.0.0.1:9/v1/realtime?model=m"
    assert upstream_target(settings(host="::", port=9), "m")[0] == "ws://[::1]:9/v1/realtime?model=m"
    with pytest.raises(ConfigError):
        upstream_target(settings(), "")


def test_safe_url() -> None:
    assert safe_url("wss://user:pw@api.openai.com:443/v1/realtime?model=x&api-key=k#f") == (
        "wss://api.openai.com:443/v1/realtime"
    )
    assert safe_url("ws://[::1]:80/x?k=v") == "ws://[::1]:80/x"


@pytest.mark.parametrize(
    "event",
    [
        input_audio_append(b"\x00\x01\xff" * 100),
        input_audio_append("AAE=", event_id="event_abc"),
        input_audio_append('AA"E=', event_id="event_q"),  # not base64: escaped by json.dumps
        {"type": "input_audio_buffer.append", "event_id": "event_\u00e9", "audio": "AAE="},
        {"type": "input_audio_buffer.append", "event_id": "e\\1", "audio": "AA\nE="},
        {"type": "input_audio_buffer.append", "audio": "AAE="},
        response_create(instructions="héllo"),
    ],
)
def test_encoded_events_are_the_same_json_whatever_the_path(event: dict[str, Any]) -> None:
    text = encode_event(event)
    assert json.loads(text) == event
    assert ", " not in text and '": ' not in text


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_send_nowait_writes_in_order_with_send_and_declines_once_closed(
    compression: str | None,
) -> None:
    """With permessage-deflate the protocol object encodes the frame; without it (the local engine) the frame
    is written directly, masked with a pooled key: the server reads both the same."""
    received: list[str] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await ws.send(SESSION_CREATED)
        for _ in range(5):
            received.append(str(await ws.recv()))
        done.set()
        await ws.close(1000, "bye")

    async with ws_server(handler, compression=compression) as url:
        conn = await RealtimeConnection.open(url)
        async with conn:
            await conn.wait_for_session()
            assert conn.send_nowait(input_audio_append(b"\x01", event_id="event_1"))
            await conn.send(input_audio_append(b"\x02", event_id="event_2"))
            assert conn.send_nowait(input_audio_append(b"\x03", event_id="event_3"))
            assert conn.send_nowait(input_audio_append(b"\x04", event_id="event_4"))
            await conn.send(response_create())
            await asyncio.wait_for(done.wait(), 5)
            with pytest.raises(UpstreamClosedError):
                await conn.recv()
            assert not conn.send_nowait(input_audio_append(b"\x05"))  # closed: nothing written
    ids = [json.loads(text).get("event_id") for text in received]
    assert ids[:4] == ["event_1", "event_2", "event_3", "event_4"]
    assert json.loads(received[4])["type"] == "response.create"


def test_masked_frame_matches_rfc_6455_and_every_length_form() -> None:
    # RFC 6455 section 5.7: a single-frame masked text message "Hello".
    assert masked_frame(1, b"Hello", bytes.fromhex("37fa213d")) == bytes.fromhex("818537fa213d7f9f4d5158")
    assert masked_frame(2, b"", bytes(4)) == bytes.fromhex("8280") + bytes(4)
    mask = b"\x01\x02\x03\x04"
    medium = masked_frame(1, b"a" * 300, mask)
    assert medium[:4] == bytes([0x81, 0xFE]) + (300).to_bytes(2, "big") and medium[4:8] == mask
    large = masked_frame(1, b"a" * 70000, mask)
    assert large[:10] == bytes([0x81, 0xFF]) + (70000).to_bytes(8, "big") and len(large) == 14 + 70000
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(large[14:30])) == b"a" * 16


def test_mask_pool_gives_fresh_four_byte_keys_and_refills() -> None:
    pool = MaskPool(keys_per_refill=4)
    keys = [pool.take() for _ in range(12)]  # three refills
    assert all(len(k) == 4 for k in keys)
    assert len(set(keys)) >= 10  # random: a repeat among 12 keys of 32 bits is all but impossible
