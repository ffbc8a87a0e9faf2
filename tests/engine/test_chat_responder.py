"""ChatCompletionsResponder against a real OpenAI-compatible chat-completions server on loopback.

The server is a small Starlette app served by uvicorn in a background thread. The request's ``model`` picks
its behaviour, and it records every request it receives (path, headers, JSON body) for the assertions.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from voice.engine import responder as responder_module
from voice.engine.chat import INAUDIBLE, ChatCompletionsResponder, chat_messages, chat_tools
from voice.engine.responder import CallTool, ResponseRequest, Say, Turn
from voice.errors import UpstreamAuthError, UpstreamConnectError, UpstreamError

API_KEY = "sk-test-0123456789"


def completion(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "test",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


BOOK_CALL = {
    "id": "call_77",
    "type": "function",
    "function": {"name": "book_table", "arguments": '{"party_size": 4, "time": "19:00", "name": "Anna"}'},
}
HOURS_CALL = {
    "id": "call_78",
    "type": "function",
    "function": {"name": "check_availability", "arguments": ""},
}


async def _completions(request: Request) -> Response:
    body = await request.json()
    server: ChatServer = request.app.state.server
    server.received.append(Received(request.url.path, dict(request.headers), body))
    model = body.get("model")
    if model == "text":
        return JSONResponse(completion({"content": "We open at noon."}))
    if model == "tools":
        return JSONResponse(
            completion({"content": "Let me book that.", "tool_calls": [BOOK_CALL, HOURS_CALL]})
        )
    if model == "only-tools":
        return JSONResponse(completion({"content": None, "tool_calls": [BOOK_CALL]}))
    if model == "bad-arguments":
        bad = {"id": "call_9", "type": "function", "function": {"name": "book_table", "arguments": "{party"}}
        return JSONResponse(completion({"content": None, "tool_calls": [bad]}))
    if model == "empty":
        return JSONResponse(completion({"content": ""}))
    if model == "error-500":
        return JSONResponse({"error": {"message": "model crashed", "type": "server_error"}}, status_code=500)
    if model == "error-401":
        return JSONResponse({"error": {"message": "invalid api key", "type": "auth"}}, status_code=401)
    if model == "error-plain":
        return PlainTextResponse("upstream overloaded", status_code=503)
    if model == "not-json":
        return PlainTextResponse("hello")
    if model == "no-choices":
        return JSONResponse({"choices": []})
    if model == "slow":
        await asyncio.sleep(2.0)
        return JSONResponse(completion({"content": "too late"}))
    return JSONResponse({"error": {"message": f"unknown model {model}"}}, status_code=404)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class ChatServer:
    base_url: str
    received: list[Received] = field(default_factory=list)

    def last(self) -> Received:
        return self.received[-1]


@pytest.fixture(scope="module")
def chat_server() -> Iterator[ChatServer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    state = ChatServer(base_url=f"http://127.0.0.1:{port}/v1")
    app = Starlette(routes=[Route("/v1/chat/completions", _completions, methods=["POST"])])
    app.state.server = state
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("chat server did not start")
        time.sleep(0.02)
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "book_table",
        "description": "Book a table.",
        "parameters": {
            "type": "object",
            "properties": {"party_size": {"type": "integer"}, "time": {"type": "string"}},
            "required": ["party_size", "time"],
        },
    },
    {
        "type": "function",
        "name": "end_call",
        "description": "",
        "parameters": {"type": "object", "properties": {}},
    },
    {"type": "mcp", "server_label": "docs", "server_url": "https://example.com/mcp"},
]


def conversation(response_instructions: str | None = None) -> ResponseRequest:
    return ResponseRequest(
        instructions="You are a restaurant host.",
        tools=TOOLS,
        turns=[
            Turn(role="assistant", text="Hello, Luigi's."),
            Turn(role="user", text="Table for four at seven, please."),
            Turn(role="assistant", text="Sure."),
            Turn(
                role="function_call",
                name="book_table",
                call_id="call_1",
                arguments='{"party_size":4,"time":"19:00"}',
            ),
            Turn(role="user", text=""),
            Turn(role="function_call_output", call_id="call_1", text='{"confirmation":"LT-1234"}'),
            Turn(role="system", text="Caller pressed 0"),
        ],
        response_instructions=response_instructions,
    )


EXPECTED_MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a restaurant host.\n\nSay: sorry for the wait."},
    {"role": "assistant", "content": "Hello, Luigi's."},
    {"role": "user", "content": "Table for four at seven, please."},
    {
        "role": "assistant",
        "content": "Sure.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "book_table", "arguments": '{"party_size":4,"time":"19:00"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"confirmation":"LT-1234"}'},
    {"role": "user", "content": INAUDIBLE},
    {"role": "system", "content": "Caller pressed 0"},
]

EXPECTED_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "book_table",
            "description": "Book a table.",
            "parameters": {
                "type": "object",
                "properties": {"party_size": {"type": "integer"}, "time": {"type": "string"}},
                "required": ["party_size", "time"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "end_call", "parameters": {"type": "object", "properties": {}}},
    },
]


async def test_request_body_and_auth_header(chat_server: ChatServer) -> None:
    responder = ChatCompletionsResponder(chat_server.base_url + "/", "text", api_key=API_KEY)
    actions = await responder.respond(conversation("Say: sorry for the wait."))
    assert actions == [Say("We open at noon.")]

    received = chat_server.last()
    assert received.path == "/v1/chat/completions"
    assert received.headers["authorization"] == f"Bearer {API_KEY}"
    assert received.headers["content-type"] == "application/json"
    assert received.body == {
        "model": "text",
        "messages": EXPECTED_MESSAGES,
        "tools": EXPECTED_TOOLS,
        "stream": False,
    }


async def test_no_auth_header_without_key_and_no_tools_key_without_tools(chat_server: ChatServer) -> None:
    responder = ChatCompletionsResponder(chat_server.base_url, "text")
    request = ResponseRequest(instructions="", tools=[], turns=[Turn(role="user", text="hi")])
    assert await responder.respond(request) == [Say("We open at noon.")]
    received = chat_server.last()
    assert "authorization" not in received.headers
    assert received.body == {
        "model": "text",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    }


async def test_reply_tool_calls(chat_server: ChatServer) -> None:
    responder = ChatCompletionsResponder(chat_server.base_url, "tools", api_key=API_KEY)
    actions = await responder.respond(conversation())
    assert actions == [
        Say("Let me book that."),
        CallTool("book_table", {"party_size": 4, "time": "19:00", "name": "Anna"}),
        CallTool("check_availability", {}),
    ]
    assert chat_server.last().body["messages"][0] == {
        "role": "system",
        "content": "You are a restaurant host.",
    }

    only = ChatCompletionsResponder(chat_server.base_url, "only-tools")
    assert await only.respond(conversation()) == [
        CallTool("book_table", {"party_size": 4, "time": "19:00", "name": "Anna"})
    ]


async def test_invalid_tool_arguments_say_the_fallback(chat_server: ChatServer) -> None:
    responder = ChatCompletionsResponder(chat_server.base_url, "bad-arguments", fallback="Sorry, say again?")
    assert await responder.respond(conversation()) == [Say("Sorry, say again?")]


async def test_empty_reply_is_an_empty_response(chat_server: ChatServer) -> None:
    assert await ChatCompletionsResponder(chat_server.base_url, "empty").respond(conversation()) == []


async def test_http_500_is_upstream_error_with_status_and_message(
    chat_server: ChatServer, capsys: pytest.CaptureFixture[str]
) -> None:
    responder = ChatCompletionsResponder(chat_server.base_url, "error-500", api_key=API_KEY)
    with pytest.raises(UpstreamError) as caught:
        await responder.respond(conversation())
    error = caught.value
    assert isinstance(error, UpstreamConnectError)
    assert error.status == 500
    assert "500" in str(error) and "model crashed" in str(error)
    assert API_KEY not in str(error)
    captured = capsys.readouterr()
    assert API_KEY not in captured.out + captured.err


async def test_http_401_is_auth_error(chat_server: ChatServer) -> None:
    responder = ChatCompletionsResponder(chat_server.base_url, "error-401", api_key="wrong")
    with pytest.raises(UpstreamAuthError, match="invalid api key") as caught:
        await responder.respond(conversation())
    assert caught.value.status == 401


async def test_plain_text_error_body(chat_server: ChatServer) -> None:
    responder = ChatCompletionsResponder(chat_server.base_url, "error-plain")
    with pytest.raises(UpstreamError, match=r"HTTP 503: upstream overloaded"):
        await responder.respond(conversation())


@pytest.mark.parametrize("model", ["not-json", "no-choices"])
async def test_malformed_reply_is_upstream_error(chat_server: ChatServer, model: str) -> None:
    with pytest.raises(UpstreamError, match="chat completions"):
        await ChatCompletionsResponder(chat_server.base_url, model).respond(conversation())


async def test_timeout_is_upstream_error(chat_server: ChatServer) -> None:
    responder = ChatCompletionsResponder(chat_server.base_url, "slow", timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(UpstreamError, match="timed out") as caught:
        await responder.respond(conversation())
    assert time.monotonic() - started < 1.5
    assert not isinstance(caught.value, UpstreamConnectError)


async def test_unreachable_server_is_connect_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens on the port any more
    responder = ChatCompletionsResponder(f"http://127.0.0.1:{port}/v1", "text", timeout_s=2)
    with pytest.raises(UpstreamConnectError, match="unreachable"):
        await responder.respond(conversation())


async def test_shared_client_is_used_and_left_open(chat_server: ChatServer) -> None:
    async with httpx.AsyncClient() as client:
        responder = ChatCompletionsResponder(chat_server.base_url, "text", http=client, api_key=API_KEY)
        assert await responder.respond(conversation()) == [Say("We open at noon.")]
        assert await responder.respond(conversation()) == [Say("We open at noon.")]
        assert not client.is_closed
    assert chat_server.last().headers["authorization"] == f"Bearer {API_KEY}"


# -- pure mapping -------------------------------------------------------------------------------------------


def test_chat_messages_multiple_calls_pending_and_orphan_outputs() -> None:
    request = ResponseRequest(
        instructions="",
        tools=[],
        turns=[
            Turn(role="user", text="book and check"),
            Turn(role="function_call", name="a", call_id="c1", arguments='{"x":1}'),
            Turn(role="function_call", name="b", call_id="c2"),
            Turn(role="function_call_output", call_id="c2", text="B"),
            Turn(role="function_call_output", call_id="zz", text="stray"),
        ],
    )
    assert chat_messages(request) == [
        {"role": "user", "content": "book and check"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "a", "arguments": '{"x":1}'}},
                {"id": "c2", "type": "function", "function": {"name": "b", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "No result yet."},
        {"role": "tool", "tool_call_id": "c2", "content": "B"},
        {"role": "system", "content": "Result of an earlier tool call: stray"},
    ]


def test_chat_tools_pass_chat_form_through() -> None:
    chat_form = {"type": "function", "function": {"name": "x", "parameters": {"type": "object"}}}
    assert chat_tools([chat_form]) == [chat_form]


def test_parse_reply_variants() -> None:
    responder = ChatCompletionsResponder("http://127.0.0.1:9/v1", "m", fallback="again?")
    parts = completion({"content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]})
    assert responder.parse_reply(parts) == [Say("Hi there")]
    as_object = completion(
        {
            "content": None,
            "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}],
        }
    )
    assert responder.parse_reply(as_object) == [CallTool("f", {"a": 1})]
    not_object = completion(
        {
            "content": "ok",
            "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
        }
    )
    assert responder.parse_reply(not_object) == [Say("ok")]
    nameless = completion({"content": None, "tool_calls": [{"id": "1", "function": "f"}]})
    assert responder.parse_reply(nameless) == [Say("again?")]
    with pytest.raises(UpstreamError):
        responder.parse_reply({"choices": [{"message": "text"}]})


def test_reexported_from_responder_module() -> None:
    assert responder_module.ChatCompletionsResponder is ChatCompletionsResponder
    responder = ChatCompletionsResponder("http://h/v1", "m", api_key=API_KEY)
    assert API_KEY not in repr(responder)
    assert json.dumps(responder.request_body(ResponseRequest("", [], []))) == (
        '{"model": "m", "messages": [], "stream": false}'
    )
