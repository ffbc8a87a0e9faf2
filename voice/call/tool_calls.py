"""Tool calls of the call core (DESIGN.md "Tools"): the model's ``function_call`` items, the built-ins
(``end_call``, ``transfer_call``, ``send_dtmf``), ``function_call_output`` for every result and the hang-up /
transfer that waits for the agent's last words.

These are functions of :class:`voice.call.core.CallCore` (its state, passed as ``core``), split out of the
core's module; the core calls them and :data:`voice.call.upstream_events.UPSTREAM_HANDLERS` routes
``response.function_call_arguments.done`` to :func:`on_function_call`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel

from bridges.base import FRAME_MS
from voice.call.actions import Action, Hangup, Metric, RunTool, SendDtmf, TranscriptEntry, Transfer
from voice.call.tools import (
    BUILTIN_TOOLS,
    EndCallArgs,
    SendDtmfArgs,
    TransferCallArgs,
    error_output,
    parse_builtin_arguments,
)
from voice.realtime.builders import function_call_output_item

if TYPE_CHECKING:
    from voice.call.core import CallCore

__all__ = [
    "BUILTIN_HANDLERS",
    "AfterAudio",
    "after_audio_check",
    "on_function_call",
    "tool_result",
]


@dataclass(slots=True)
class AfterAudio:
    """A built-in that acts once the agent's audio has been heard (end_call, transfer_call)."""

    kind: Literal["hangup", "transfer"]
    value: str  # the hangup reason or the transfer target
    since_ms: int


def on_function_call(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    call_id, name, raw = event.call_id, event.name, event.arguments
    if call_id in core._seen_calls:
        return [Metric("tool.duplicate_call")]
    core._seen_calls.add(call_id)
    actions: list[Action] = [
        TranscriptEntry("tool_call", name, {"name": name, "call_id": call_id, "arguments": raw}, now_ms)
    ]
    try:
        arguments = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        return actions + tool_error(core, call_id, f"arguments are not valid JSON: {exc}", now_ms)
    if not isinstance(arguments, dict):
        return actions + tool_error(core, call_id, "arguments must be a JSON object", now_ms)
    builtin = BUILTIN_HANDLERS.get(name)
    if builtin is None:
        core._pending_tools[call_id] = name
        return [*actions, RunTool(call_id, name, arguments)]
    parsed = parse_builtin_arguments(name, arguments)
    if isinstance(parsed, str):
        return actions + tool_error(core, call_id, parsed, now_ms)
    return actions + builtin(core, call_id, parsed, now_ms)


def tool_output(
    core: CallCore,
    call_id: str,
    output: str,
    now_ms: int,
    *,
    error: str | None = None,
    respond: bool = True,
) -> list[Action]:
    actions: list[Action] = [
        core._create_item(function_call_output_item(call_id, output)),
        TranscriptEntry(
            "tool_result", error or output, {"call_id": call_id, "output": output, "error": error}, now_ms
        ),
    ]
    return actions + (core._request_response(now_ms) if respond else [])


def tool_error(core: CallCore, call_id: str, message: str, now_ms: int) -> list[Action]:
    return tool_output(core, call_id, error_output(message), now_ms, error=message)


def tool_result(core: CallCore, call_id: str, output: str, now_ms: int, error: str | None) -> list[Action]:
    if core._pending_tools.pop(call_id, None) is None:
        return [Metric("tool.unexpected_result")]
    if error is None:
        error = _error_of(output)
    return tool_output(core, call_id, output, now_ms, error=error)


def builtin_end_call(core: CallCore, call_id: str, args: BaseModel, now_ms: int) -> list[Action]:
    assert isinstance(args, EndCallArgs)
    core._after_audio.append(AfterAudio("hangup", args.reason or "agent ended the call", now_ms))
    output = {
        "ok": True,
        "status": "The call ends once your reply has been heard. Keep it to a short goodbye.",
    }
    return tool_output(core, call_id, json.dumps(output), now_ms)


def builtin_transfer_call(core: CallCore, call_id: str, args: BaseModel, now_ms: int) -> list[Action]:
    assert isinstance(args, TransferCallArgs)
    target = args.target or core.default_transfer_target
    if not core.can_transfer:
        return tool_error(core, call_id, "this line cannot be transferred", now_ms)
    if not target:
        return tool_error(core, call_id, "no transfer target given and no default is configured", now_ms)
    core._after_audio.append(AfterAudio("transfer", target, now_ms))
    output = {"ok": True, "status": "transferring after your reply", "target": target}
    return tool_output(core, call_id, json.dumps(output), now_ms)


def builtin_send_dtmf(core: CallCore, call_id: str, args: BaseModel, now_ms: int) -> list[Action]:
    assert isinstance(args, SendDtmfArgs)
    digits = args.digits
    actions: list[Action] = [
        SendDtmf(digits),
        TranscriptEntry("dtmf", digits, {"digits": digits, "direction": "out"}, now_ms),
    ]
    return actions + tool_output(core, call_id, json.dumps({"ok": True, "sent": digits}), now_ms)


def after_audio_check(core: CallCore, now_ms: int) -> list[Action]:
    """end_call / transfer_call once the agent's last words have been played (or the timeout passed)."""
    if not core._after_audio or core._hung_up:
        return []
    quiet = (
        core.playout.drained
        and not core._active
        and not core._want_response
        and not core._outstanding_creates
        and not core.window.active
        and (core._last_frame_ms is None or now_ms - core._last_frame_ms >= FRAME_MS)
    )
    actions: list[Action] = []
    for op in list(core._after_audio):
        if not quiet and now_ms - op.since_ms < core.end_call_timeout_ms:
            continue
        core._after_audio.remove(op)
        if op.kind == "transfer":
            actions += [
                Transfer(op.value),
                TranscriptEntry("system", f"transferred to {op.value}", {}, now_ms),
            ]
        else:
            core._hung_up = True
            core._after_audio.clear()
            actions += [
                Hangup(op.value),
                TranscriptEntry("system", f"agent hung up: {op.value}", {}, now_ms),
            ]
            break
    return actions


def _error_of(output: str) -> str | None:
    """The ``error`` of a tool output shaped ``{"error": ...}`` (what ``ToolRegistry.invoke`` returns)."""
    if not output.startswith("{"):
        return None
    try:
        decoded = json.loads(output)
    except ValueError:
        return None
    err = decoded.get("error") if isinstance(decoded, dict) else None
    return str(err) if err is not None else None


BUILTIN_HANDLERS: Final[dict[str, Callable[[CallCore, str, BaseModel, int], list[Action]]]] = {
    "end_call": builtin_end_call,
    "transfer_call": builtin_transfer_call,
    "send_dtmf": builtin_send_dtmf,
}
assert set(BUILTIN_HANDLERS) == set(BUILTIN_TOOLS)
