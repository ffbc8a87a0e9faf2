"""Opening the call's Realtime upstream, reconnecting with backoff, and restoring the conversation.

- :class:`UpstreamOpener`: ``await opener(model)`` opens a WebSocket to the upstream chosen from the
  settings (:func:`voice.realtime.client.upstream_target`: a custom URL, Azure, OpenAI, or the local engine
  served by this process) and returns it once ``session.created`` was received (protocols.md §A.1, §A.6).
  For the local engine, :meth:`UpstreamOpener.for_agent` adds the ``agent`` query parameter so that the
  engine plays that agent's script.
- :class:`Backoff` and :func:`open_with_retry`: exponential backoff with jitter for (re)connecting.
  Authentication and configuration errors are not retried (they will not get better).
- :func:`restore_items`: the conversation items that re-create a call's context in a fresh session (after a
  dropped connection, or to hand a long call over before the session-length limit): caller turns, what the
  caller heard of the agent's turns (assistant ``output_text``; assistant audio items cannot be created,
  §A.5), DTMF notes, tool calls and their outputs. The runner sends ``session.update`` (the instructions and
  tools) first, then these as ``conversation.item.create`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

from voice.call.transcript import TranscriptEvent
from voice.config import Settings
from voice.errors import ConfigError, UpstreamAuthError, UpstreamError
from voice.logs import get_logger
from voice.realtime.builders import function_call_output_item, item_create, message_item
from voice.realtime.client import DEFAULT_OPEN_TIMEOUT, RealtimeConnection, is_loopback, upstream_target

__all__ = [
    "DEFAULT_BACKOFF",
    "MAX_RESTORED_ITEMS",
    "Backoff",
    "OpenUpstream",
    "UpstreamOpener",
    "is_retriable",
    "open_with_retry",
    "restore_events",
    "restore_items",
]

OpenUpstream = Callable[[str], Awaitable[RealtimeConnection]]
"""``model`` -> an open connection whose ``session.created`` has been received."""

MAX_RESTORED_ITEMS: Final = 200
"""At most this many of the latest items are re-created (older context is dropped, as truncation would)."""


class UpstreamOpener:
    """Opens Realtime connections as the settings say (see the module docstring).

    ``agent``: the profile whose script a local engine should play (sent as ``?agent=`` only to the local
    engine: when no key, Azure endpoint or custom URL is configured, or a custom URL on a loopback host).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        agent: str | None = None,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT,
        session_timeout_s: float = DEFAULT_OPEN_TIMEOUT,
        max_size: int | None = None,
    ) -> None:
        self.settings = settings
        self.agent = agent
        self.open_timeout_s = open_timeout_s
        self.session_timeout_s = session_timeout_s
        self.max_size = max_size

    @property
    def is_local_engine(self) -> bool:
        """The upstream is the local engine (this process's or one on a loopback custom URL)."""
        s = self.settings
        if s.upstream_url:
            try:
                return is_loopback(urlsplit(s.upstream_url).hostname)
            except ValueError:
                return False
        return not s.azure_endpoint and s.openai_api_key is None

    def for_agent(self, agent: str) -> UpstreamOpener:
        """The same opener, naming ``agent`` to a local engine."""
        return UpstreamOpener(
            self.settings,
            agent=agent,
            open_timeout_s=self.open_timeout_s,
            session_timeout_s=self.session_timeout_s,
            max_size=self.max_size,
        )

    def target(self, model: str) -> tuple[str, dict[str, str]]:
        """The URL and headers a connection for ``model`` uses."""
        url, headers = upstream_target(self.settings, model)
        if self.agent and self.is_local_engine:
            parts = urlsplit(url)
            query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "agent"]
            query.append(("agent", self.agent))
            url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))
        return url, headers

    async def __call__(self, model: str, **bind: Any) -> RealtimeConnection:
        """Open a connection for ``model`` and wait for ``session.created``; ``bind`` adds log context."""
        url, headers = self.target(model)
        kwargs: dict[str, Any] = {"headers": headers, "open_timeout": self.open_timeout_s}
        if self.max_size is not None:
            kwargs["max_size"] = self.max_size
        conn = await RealtimeConnection.open(url, **kwargs, **bind)
        try:
            await conn.wait_for_session(self.session_timeout_s)
        except BaseException:
            await _close_quietly(conn)
            raise
        return conn


async def _close_quietly(conn: RealtimeConnection) -> None:
    with contextlib.suppress(Exception):  # the connection is being abandoned anyway
        await conn.close()


# Backoff -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``base_s * factor**n`` capped at ``max_s``, +/- ``jitter`` (a share), for at
    most ``attempts`` tries in total (the first try has no delay)."""

    attempts: int = 5
    base_s: float = 0.25
    factor: float = 2.0
    max_s: float = 4.0
    jitter: float = 0.2

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The wait before each try: 0 for the first, then growing."""
        r = rng or random.Random()
        for n in range(self.attempts):
            if n == 0:
                yield 0.0
                continue
            delay = min(self.max_s, self.base_s * self.factor ** (n - 1))
            yield max(0.0, delay * (1 + self.jitter * (2 * r.random() - 1)))


DEFAULT_BACKOFF: Final = Backoff()
"""Five tries over about two seconds (0, 0.25, 0.5, 1, 2 s apart)."""


def is_retriable(exc: BaseException) -> bool:
    """Whether another try may succeed: refused credentials and bad configuration never do."""
    return isinstance(exc, UpstreamError) and not isinstance(exc, UpstreamAuthError)


async def open_with_retry(
    open_upstream: OpenUpstream,
    model: str,
    *,
    backoff: Backoff = DEFAULT_BACKOFF,
    log: structlog.stdlib.BoundLogger | None = None,
    on_failure: Callable[[BaseException], None] | None = None,
) -> RealtimeConnection:
    """Open an upstream connection, retrying retriable failures (:func:`is_retriable`) with ``backoff``.

    ``on_failure`` is called with each failed attempt's error (e.g. to count it). The last error is raised
    when every attempt failed; a non-retriable one at once. Other exceptions (``OSError``...) from a custom
    ``open_upstream`` are treated as retriable upstream failures.
    """
    logger = log or get_logger(component="upstream")
    last: BaseException | None = None
    for attempt, delay in enumerate(backoff.delays(), start=1):
        if delay:
            await asyncio.sleep(delay)
        try:
            return await open_upstream(model)
        except ConfigError:
            raise
        except UpstreamAuthError as exc:
            logger.error("upstream.auth_refused", error=str(exc))
            if on_failure is not None:
                on_failure(exc)
            raise
        except (UpstreamError, OSError, TimeoutError) as exc:
            last = exc
            if on_failure is not None:
                on_failure(exc)
            logger.warning("upstream.open_failed", attempt=attempt, of=backoff.attempts, error=str(exc))
    assert last is not None
    raise last


# Conversation restore -----------------------------------------------------------------------------------


def _dtmf_text(digits: str) -> str:
    return f"Caller pressed {digits}" if len(digits) == 1 else f"Caller entered {digits}"


def restore_items(
    events: Iterable[TranscriptEvent], *, max_items: int = MAX_RESTORED_ITEMS
) -> list[dict[str, Any]]:
    """Conversation items re-creating a call's context from its transcript (oldest first).

    Caller turns -> user messages; agent turns -> assistant ``output_text`` with what the caller *heard*
    (the event's ``text``); DTMF keys from the caller -> user notes ("Caller pressed 5"); tool calls ->
    ``function_call`` items and their results -> ``function_call_output`` (only when the call is included,
    which the API requires). Empty turns, barge-ins, errors and system events are left out. Only the last
    ``max_items`` items are kept, never starting with an orphan tool output.
    """
    items: list[dict[str, Any]] = []
    for ev in events:
        if ev.kind == "caller" and ev.text.strip():
            items.append(message_item("user", ev.text))
        elif ev.kind == "agent" and ev.text.strip():
            content = [{"type": "output_text", "text": ev.text}]
            items.append({"type": "message", "role": "assistant", "content": content})
        elif ev.kind == "dtmf" and ev.data.get("direction", "in") == "in":
            digits = str(ev.data.get("digits") or ev.text)
            if digits:
                items.append(message_item("user", _dtmf_text(digits)))
        elif ev.kind == "tool_call":
            call_id = ev.data.get("call_id")
            name = ev.data.get("name") or ev.text
            if call_id and name:
                arguments = ev.data.get("arguments")
                items.append(
                    {
                        "type": "function_call",
                        "call_id": str(call_id),
                        "name": str(name),
                        "arguments": arguments if isinstance(arguments, str) else "{}",
                    }
                )
        elif ev.kind == "tool_result":
            call_id = ev.data.get("call_id")
            output = ev.data.get("output")
            if call_id and isinstance(output, str):
                items.append(function_call_output_item(str(call_id), output))
    items = items[-max_items:] if max_items > 0 else []
    called = {i["call_id"] for i in items if i.get("type") == "function_call"}
    return [i for i in items if i.get("type") != "function_call_output" or i["call_id"] in called]


def restore_events(
    events: Iterable[TranscriptEvent], *, max_items: int = MAX_RESTORED_ITEMS
) -> list[dict[str, Any]]:
    """``conversation.item.create`` events for :func:`restore_items`, in order."""
    return [item_create(item) for item in restore_items(events, max_items=max_items)]
