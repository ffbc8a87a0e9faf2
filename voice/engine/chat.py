"""The local engine's chat mode: a :class:`~voice.engine.responder.Responder` backed by any
OpenAI-compatible chat-completions endpoint (a local LLM server such as llama.cpp, vLLM or Ollama, or a hosted
one).

The Realtime conversation maps onto the chat-completions request body as the OpenAI API reference describes
it (``POST /v1/chat/completions``: ``messages`` with ``system`` / ``user`` / ``assistant`` (``tool_calls``) /
``tool`` (``tool_call_id``) roles, ``tools`` of ``{"type": "function", "function": {...}}``); the reply's
``choices[0].message`` maps back onto :class:`~voice.engine.responder.Say` and
:class:`~voice.engine.responder.CallTool` actions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import httpx

from voice.engine.responder import CallTool, ResponseRequest, Say, Turn
from voice.errors import UpstreamAuthError, UpstreamConnectError, UpstreamError
from voice.logs import get_logger

__all__ = ["CHAT_FALLBACK", "INAUDIBLE", "ChatCompletionsResponder", "chat_messages", "chat_tools"]

_log = get_logger(component="engine.chat")


CHAT_FALLBACK: Final = "Sorry, I didn't get that. Could you say it again?"
"""Said when the chat model's reply cannot be used (a tool call with invalid arguments)."""

INAUDIBLE: Final = "[inaudible]"
"""The content of a caller message that has no transcript (recognition off or nothing recognized)."""

_MAX_ERROR_CHARS: Final = 500


class ChatCompletionsResponder:
    """Forwards the conversation to an OpenAI-compatible chat-completions endpoint (non-streaming).

    The request (``POST {base_url}/chat/completions``) is built from the :class:`ResponseRequest`:

    - a ``system`` message with the session instructions, followed by the per-response instructions after a
      blank line (left out when both are empty);
    - the turns in order: ``user`` / ``assistant`` / ``system`` messages as such (an empty caller message is
      :data:`INAUDIBLE`); consecutive ``function_call`` turns as one ``assistant`` message with
      ``tool_calls`` (merged into the assistant message just before them, if any), each immediately
      followed by its ``tool`` message (``tool_call_id``; the Realtime conversation may hold a caller turn
      between a call and its output, chat-completions may not); a call without output gets a ``tool``
      message saying so; an output without its call becomes a ``system`` note;
    - the session's function tools as chat ``tools`` (left out when there are none).

    The reply's ``content`` becomes a :class:`Say` and each of its ``tool_calls`` a :class:`CallTool`
    (``arguments`` JSON-decoded; a call with invalid arguments is dropped and logged, and ``fallback`` is
    said if nothing else is). An empty reply is an empty response.

    HTTP errors raise :class:`~voice.errors.UpstreamConnectError` (``status`` set; ``UpstreamAuthError``
    for 401/403), timeouts and invalid replies :class:`~voice.errors.UpstreamError`: all carry the status and
    the server's message, and the engine turns them into a failed response. ``api_key`` is sent as a Bearer
    token and never logged. Pass ``http`` to reuse a client (its connection pool); otherwise each request
    uses a short-lived client, so nothing needs closing.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        http: httpx.AsyncClient | None = None,
        *,
        fallback: str = CHAT_FALLBACK,
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._api_key = api_key
        self._timeout = httpx.Timeout(timeout_s)
        self._timeout_s = timeout_s
        self._http = http
        self._fallback = fallback

    @property
    def url(self) -> str:
        return self._url

    @property
    def model(self) -> str:
        return self._model

    def __repr__(self) -> str:  # never show the key
        return f"ChatCompletionsResponder(url={self._url!r}, model={self._model!r})"

    async def respond(self, request: ResponseRequest) -> list[Say | CallTool]:
        """One chat completion for ``request``, as actions."""
        body = self.request_body(request)
        started = time.monotonic()
        data = await self._post(body)
        actions = self.parse_reply(data)
        _log.debug(
            "chat completion",
            url=self._url,
            model=self._model,
            messages=len(body["messages"]),
            actions=len(actions),
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )
        return actions

    # -- request ------------------------------------------------------------------------------------------

    def request_body(self, request: ResponseRequest) -> dict[str, Any]:
        """The JSON body of the chat-completions request for ``request``."""
        body: dict[str, Any] = {"model": self._model, "messages": chat_messages(request)}
        tools = chat_tools(request.tools)
        if tools:
            body["tools"] = tools
        body["stream"] = False
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _post(self, body: dict[str, Any]) -> Any:
        try:
            if self._http is not None:
                reply = await self._http.post(
                    self._url, json=body, headers=self._headers(), timeout=self._timeout
                )
            else:
                async with httpx.AsyncClient(timeout=self._timeout) as client:
                    reply = await client.post(self._url, json=body, headers=self._headers())
        except httpx.TimeoutException as exc:
            raise UpstreamError(
                f"chat completions at {self._url} timed out after {self._timeout_s:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamConnectError(f"chat completions at {self._url} unreachable: {exc}") from exc
        if reply.status_code >= 400:
            message = _error_message(reply)
            text = f"chat completions at {self._url} returned HTTP {reply.status_code}: {message}"
            _log.warning("chat completion failed", url=self._url, status=reply.status_code, error=message)
            error_type = UpstreamAuthError if reply.status_code in (401, 403) else UpstreamConnectError
            raise error_type(text, status=reply.status_code)
        try:
            return reply.json()
        except ValueError as exc:
            raise UpstreamError(
                f"chat completions at {self._url} returned a reply that is not JSON: {reply.text[:200]!r}"
            ) from exc

    # -- reply --------------------------------------------------------------------------------------------

    def parse_reply(self, data: Any) -> list[Say | CallTool]:
        """Actions from a chat-completions reply body; :class:`~voice.errors.UpstreamError` if malformed."""
        try:
            message = data["choices"][0]["message"]
            if not isinstance(message, dict):
                raise TypeError("message is not an object")
        except (KeyError, IndexError, TypeError) as exc:
            raise UpstreamError(
                f"chat completions at {self._url} returned an invalid reply: {exc!r}"
            ) from exc
        actions: list[Say | CallTool] = []
        text = _content_text(message.get("content"))
        if text:
            actions.append(Say(text))
        calls = message.get("tool_calls")
        dropped = 0
        for call in calls if isinstance(calls, list) else []:
            parsed = _tool_call(call)
            if parsed is None:
                dropped += 1
                function = call.get("function") if isinstance(call, dict) else None
                name = function.get("name") if isinstance(function, dict) else None
                _log.warning("chat model made an unusable tool call", tool=name)
                continue
            actions.append(parsed)
        if dropped and not any(isinstance(action, Say) for action in actions):
            actions.insert(0, Say(self._fallback))
        return actions


def chat_tools(tools: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Realtime session tools as chat-completions ``tools`` (function tools only)."""
    converted: list[dict[str, Any]] = []
    for tool in tools:
        if tool.get("type", "function") != "function":
            continue
        if isinstance(tool.get("function"), Mapping):  # already in chat form
            converted.append(dict(tool))
            continue
        function: dict[str, Any] = {"name": tool.get("name", "")}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
        converted.append({"type": "function", "function": function})
    return converted


def chat_messages(request: ResponseRequest) -> list[dict[str, Any]]:
    """The chat-completions ``messages`` for ``request`` (see :class:`ChatCompletionsResponder`)."""
    system = "\n\n".join(part for part in (request.instructions, request.response_instructions) if part)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    turns = request.turns
    outputs = {t.call_id: t.text for t in turns if t.role == "function_call_output" and t.call_id}
    called = {t.call_id for t in turns if t.role == "function_call" and t.call_id}
    index = 0
    while index < len(turns):
        turn = turns[index]
        if turn.role == "function_call":
            group: list[Turn] = []
            while index < len(turns) and turns[index].role == "function_call":
                group.append(turns[index])
                index += 1
            _append_tool_calls(messages, group, outputs)
            continue
        index += 1
        if turn.role == "function_call_output":
            if turn.call_id not in called:
                messages.append({"role": "system", "content": f"Result of an earlier tool call: {turn.text}"})
            continue
        text = turn.text if turn.text or turn.role != "user" else INAUDIBLE
        messages.append({"role": turn.role, "content": text})
    return messages


def _append_tool_calls(
    messages: list[dict[str, Any]], group: Sequence[Turn], outputs: Mapping[str, str]
) -> None:
    tool_calls: list[dict[str, Any]] = [
        {
            "id": turn.call_id or f"call_{turn.name}",
            "type": "function",
            "function": {"name": turn.name or "", "arguments": turn.arguments or "{}"},
        }
        for turn in group
    ]
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant" and "tool_calls" not in last:
        last["tool_calls"] = tool_calls
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": tool_calls})
    for call in tool_calls:
        output = outputs.get(call["id"])
        messages.append(
            {
                "role": "tool",
                "tool_call_id": call["id"],
                "content": "No result yet." if output is None else output,
            }
        )


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):  # content parts
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(parts).strip()
    return ""


def _tool_call(call: Any) -> CallTool | None:
    """A :class:`CallTool` from one chat ``tool_calls`` entry, or ``None`` when it is unusable."""
    if not isinstance(call, dict):
        return None
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        return None
    raw = function.get("arguments")
    if isinstance(raw, dict):  # some servers send an object instead of a JSON string
        return CallTool(function["name"], raw)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return CallTool(function["name"], {})
    if not isinstance(raw, str):
        return None
    try:
        arguments = json.loads(raw)
    except ValueError:
        return None
    return CallTool(function["name"], arguments) if isinstance(arguments, dict) else None


def _error_message(reply: httpx.Response) -> str:
    """The server's error message: ``error.message`` / ``error`` / ``detail`` / ``message`` of a JSON body,
    else the start of the body."""
    try:
        data = reply.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:_MAX_ERROR_CHARS]
        for key in ("error", "detail", "message"):
            if isinstance(data.get(key), str):
                return str(data[key])[:_MAX_ERROR_CHARS]
    text = reply.text.strip()
    return text[:_MAX_ERROR_CHARS] if text else reply.reason_phrase
