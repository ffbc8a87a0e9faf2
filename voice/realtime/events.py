"""OpenAI Realtime (GA) events: server events parsed into the SDK's typed models, client events validated.

Server events (protocols.md §A.6) become the SDK's own GA models (``openai/types/realtime/*.py``): the table
:data:`SERVER_EVENT_MODELS` maps each ``type`` string to its model class and is built from the
``RealtimeServerEvent`` union (``realtime_server_event.py``), which also still names the beta-era
``conversation.item.created`` (protocols.md §A.7; accept it as well as ``conversation.item.added``).
:func:`parse_server_event` never raises on remote input: a type we do not know becomes
:class:`UnknownServerEvent` and anything unparseable becomes :class:`MalformedServerEvent`, so one new server
event can never end a call.

Hot path: audio deltas are by far the most frequent events. OpenAI writes ``type`` as the first key of every
event (visible in any capture: ``{"type":"response.output_audio.delta","event_id":…}``), so when the raw text
starts that way the model is chosen from the prefix and pydantic-core parses and validates the JSON in one
pass (``model_validate_json``: about 1.4 µs for a 20 ms delta on the development machine, against 3.3 µs for
``json.loads`` + ``model_validate`` and 19 µs for the SDK's ``construct``). Anything else takes the general
path (``json.loads``, then the table), which gives the same result.

Client events (protocols.md §A.5): :func:`parse_client_event` is for the local engine. It validates a raw
client message against the 11 GA client events and raises :class:`voice.errors.RealtimeError` with the
fields OpenAI's server puts in its ``error`` event (see :mod:`voice.realtime.validate`). The builders for the
events this service sends live in :mod:`voice.realtime.builders` and are re-exported here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, TypeAlias, Union, cast, get_args

import pydantic
from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent

from voice.errors import RealtimeError
from voice.realtime.builders import (
    function_call_output_item,
    input_audio_append,
    input_audio_clear,
    input_audio_commit,
    item_create,
    item_delete,
    item_retrieve,
    item_truncate,
    message_item,
    output_audio_clear,
    response_cancel,
    response_create,
    session_update,
)
from voice.realtime.ids import new_event_id, new_id
from voice.realtime.validate import Validator, join_values, json_kind, model_validator

__all__ = [
    "CLIENT_EVENT_TYPES",
    "SERVER_EVENT_MODELS",
    "MalformedServerEvent",
    "ServerEvent",
    "UnknownServerEvent",
    "function_call_output_item",
    "input_audio_append",
    "input_audio_clear",
    "input_audio_commit",
    "item_create",
    "item_delete",
    "item_retrieve",
    "item_truncate",
    "message_item",
    "new_event_id",
    "new_id",
    "output_audio_clear",
    "parse_client_event",
    "parse_server_event",
    "response_cancel",
    "response_create",
    "session_update",
]

RAW_PREVIEW_CHARS = 200
"""How much of a malformed message :class:`MalformedServerEvent` keeps (it may end up in a log)."""


@dataclass(frozen=True)
class UnknownServerEvent:
    """A well-formed server event whose ``type`` this SDK version does not know (a newer server)."""

    type: str
    data: dict[str, Any] = field(repr=False)

    @property
    def event_id(self) -> str | None:
        value = self.data.get("event_id")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class MalformedServerEvent:
    """A server message that is not a valid event: bad JSON, not an object, no ``type``, or wrong fields.

    ``raw`` is the start of the message only (:data:`RAW_PREVIEW_CHARS`), so that logging it is safe.
    """

    raw: str
    reason: str


ServerEvent: TypeAlias = Union[RealtimeServerEvent, UnknownServerEvent, MalformedServerEvent]  # noqa: UP007
"""What :func:`parse_server_event` returns: an SDK GA model, or one of the two fallbacks."""


def _literal_type(model: type[pydantic.BaseModel]) -> str:
    annotation = model.model_fields["type"].annotation
    (value,) = get_args(annotation)
    if not isinstance(value, str):
        raise TypeError(f"{model.__name__}.type is not a string literal")
    return value


def _union_members(union: Any) -> tuple[type[pydantic.BaseModel], ...]:
    """The model classes of an SDK ``Annotated[Union[...], PropertyInfo(discriminator="type")]``."""
    inner = get_args(union)[0]
    members: tuple[type[pydantic.BaseModel], ...] = get_args(inner)
    return members


SERVER_EVENT_MODELS: dict[str, type[pydantic.BaseModel]] = {
    _literal_type(model): model for model in _union_members(RealtimeServerEvent)
}
"""Server event ``type`` -> SDK GA model (46 types, ``conversation.item.created`` included)."""

_PREFIX_STR = re.compile(r'\{\s*"type"\s*:\s*"([A-Za-z0-9_.]+)"')
_PREFIX_BYTES = re.compile(rb'\{\s*"type"\s*:\s*"([A-Za-z0-9_.]+)"')


def _preview(raw: str | bytes) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if len(text) <= RAW_PREVIEW_CHARS:
        return text
    return f"{text[:RAW_PREVIEW_CHARS]}...<{len(text)} chars>"


def _validation_reason(event_type: str, err: pydantic.ValidationError) -> str:
    first = err.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(part) for part in first["loc"]) or "(event)"
    more = err.error_count() - 1
    suffix = f" (and {more} more)" if more > 0 else ""
    return f"invalid {event_type!r} event: {loc}: {first['msg']}{suffix}"


def parse_server_event(raw: str | bytes) -> ServerEvent:
    """Parse one server message into an SDK GA model, an :class:`UnknownServerEvent` or a
    :class:`MalformedServerEvent`.

    Never raises on remote input (protocols.md §A.6: "most errors are recoverable and the session will stay
    open", and neither must an event we cannot read end the call).
    """
    if isinstance(raw, bytes):
        prefix = _PREFIX_BYTES.match(raw)
        event_type = prefix.group(1).decode("ascii") if prefix else None
    else:
        prefix_str = _PREFIX_STR.match(raw)
        event_type = prefix_str.group(1) if prefix_str else None
    model = SERVER_EVENT_MODELS.get(event_type) if event_type else None
    if model is not None:
        try:
            return cast(ServerEvent, model.model_validate_json(raw))
        except (pydantic.ValidationError, ValueError, RecursionError):
            pass  # the general path below says what is wrong
    return _parse_server_event_slow(raw)


def _parse_server_event_slow(raw: str | bytes) -> ServerEvent:
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return MalformedServerEvent(_preview(raw), f"not JSON: {exc}")
    except RecursionError:
        return MalformedServerEvent(_preview(raw), "JSON nested too deeply to parse")
    if not isinstance(data, dict):
        return MalformedServerEvent(_preview(raw), f"not a JSON object but {json_kind(data)}")
    event_type = data.get("type")
    if not isinstance(event_type, str):
        reason = "no 'type'" if event_type is None else f"'type' is {json_kind(event_type)}, not a string"
        return MalformedServerEvent(_preview(raw), reason)
    model = SERVER_EVENT_MODELS.get(event_type)
    if model is None:
        return UnknownServerEvent(event_type, data)
    try:
        return cast(ServerEvent, model.model_validate(data))
    except pydantic.ValidationError as exc:
        return MalformedServerEvent(_preview(raw), _validation_reason(event_type, exc))
    except RecursionError:
        return MalformedServerEvent(_preview(raw), f"invalid {event_type!r} event: nested too deeply")


# --------------------------------------------------------------------------------------------------
# Client events (for the local engine)


CLIENT_EVENT_MODELS: dict[str, type[pydantic.BaseModel]] = {
    _literal_type(model): model for model in _union_members(RealtimeClientEvent)
}
"""Client event ``type`` -> SDK GA model: the 11 GA client events (``realtime_client_event.py``)."""

CLIENT_EVENT_TYPES: tuple[str, ...] = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
)
"""The 11 GA client event types, in the order OpenAI's server lists them in its ``invalid_value`` error
(``output_audio_buffer.clear``, WebRTC/SIP only, last)."""

assert set(CLIENT_EVENT_TYPES) == set(CLIENT_EVENT_MODELS), "SDK client event union changed"

_CLIENT_VALIDATORS: dict[str, Validator] = {}


def _client_validator(event_type: str) -> Validator:
    validator = _CLIENT_VALIDATORS.get(event_type)
    if validator is None:
        validator = _CLIENT_VALIDATORS[event_type] = model_validator(CLIENT_EVENT_MODELS[event_type])
    return validator


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_client_event(raw: str | bytes, *, max_bytes: int | None = None) -> dict[str, Any]:
    """Validate one client message; return it as a plain dict (integral decimals in int fields become ints).

    Raises :class:`RealtimeError` with OpenAI's ``type``/``code``/``message``/``param`` and the event's own
    ``event_id`` when it has a string one:

    - larger than ``max_bytes`` (UTF-8 bytes): code ``message_too_large``, param ``None`` (our own code:
      OpenAI documents only the 15 MiB limit of one append, see :mod:`voice.realtime.validate`);
    - not JSON: code ``invalid_json``, "Invalid event: failed to parse JSON value. …" (OpenAI's wording);
    - not a JSON object: code ``invalid_type``, param ``None``;
    - no ``type``: ``missing_required_parameter`` on ``type``; an unknown ``type``: ``invalid_value`` on
      ``type`` naming the 11 supported values;
    - anything wrong inside: see :mod:`voice.realtime.validate`.
    """
    if max_bytes is not None:
        if isinstance(raw, bytes):
            size = len(raw)
        else:
            # A str's UTF-8 size is at least its length and at most 4x; encode only when it matters.
            size = len(raw) if len(raw) * 4 <= max_bytes else len(raw.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise RealtimeError(
                f"Invalid event: the message is {size} bytes, larger than the maximum of {max_bytes} bytes.",
                code="message_too_large",
            )
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise RealtimeError(
            f"Invalid event: failed to parse JSON value. {detail[:200]}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise RealtimeError(
            f"Invalid event: expected a JSON object, but got {json_kind(data)} instead.", code="invalid_type"
        )
    event_id = data.get("event_id")
    event_id = event_id if isinstance(event_id, str) else None
    event_type = data.get("type")
    try:
        if event_type is None:
            raise RealtimeError(
                "Missing required parameter: 'type'.", code="missing_required_parameter", param="type"
            )
        if not isinstance(event_type, str):
            raise RealtimeError(
                f"Invalid type for 'type': expected a string, but got {json_kind(event_type)} instead.",
                code="invalid_type",
                param="type",
            )
        if event_type not in CLIENT_EVENT_MODELS:
            supported = join_values(CLIENT_EVENT_TYPES)
            raise RealtimeError(
                f"Invalid value: '{event_type[:100]}'. Supported values are: {supported}.",
                code="invalid_value",
                param="type",
            )
        return _client_validator(event_type)(data)
    except RealtimeError as err:
        err.event_id = event_id
        raise
