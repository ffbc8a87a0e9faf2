"""Validate Realtime client events the way OpenAI's server does, with OpenAI's error payloads.

The shapes come from the SDK's GA client event models (``openai/types/realtime/realtime_client_event.py``
and the models it names; protocols.md §A.5). Those pydantic models accept unknown keys (``extra="allow"``)
and their union errors do not map onto one OpenAI error, so this module walks the models' type hints itself
(compiled once per model into a small tree of checkers) and reports the first problem as OpenAI's server
words it:

- ``unknown_parameter``: "Unknown parameter: 'session.bogus_field'."
- ``missing_required_parameter``: "Missing required parameter: 'item.type'."
- ``invalid_value``: "Invalid value: 'nope'. Supported values are: 'session.update', …, and
  'response.cancel'."
- ``integer_below_min_value``: "Invalid 'session.audio.input.format.rate': integer below minimum value.
  Expected a value >= 24000, but got 16000 instead." (likewise ``integer_above_max_value``,
  ``decimal_below_min_value``, ``decimal_above_max_value``)
- ``invalid_type``: "Invalid type for 'audio_end_ms': expected an integer, but got a decimal number instead."
- ``string_above_max_length``: "Invalid 'audio': string too long. Expected a string with maximum length N,
  but got a string with length M instead."

``param`` is the dotted path of the offending field without the event itself
(``session.audio.input.format.type``, ``item.content[0].type``, ``audio_end_ms``), as in OpenAI's errors.

Sources for the wording: a live capture of ``wss://api.openai.com/v1/realtime`` (``{"type":"nope"}`` ->
``invalid_value`` on ``type``; ``session.update {bogus_field}`` -> ``unknown_parameter``; ``format.rate:
16000`` -> ``integer_below_min_value``; non-JSON -> ``invalid_json``), a live probe quoted in
antoinedc/MantaUI#1196 (``missing_required_parameter: 'session.audio.output.format.rate'``),
openai/openai-agents-js#315 (``invalid_type`` on ``audio_end_ms``) and OpenAI's HTTP API errors of the same
family ("Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 2.1 instead.";
"Invalid 'input[0].content': string too long. Expected a string with maximum length 10485760, …").

Rules added to the SDK's types, each from OpenAI's documentation or observed server behaviour:

- a union declared with a discriminator (``PropertyInfo(discriminator="type")``) needs that key, as pydantic
  requires it for the SDK models too; conversation items are told apart by ``type`` and then ``role``;
- numeric ranges from the SDK docstrings (:data:`RANGES`): ``speed`` 0.25-1.5, ``threshold`` and
  ``retention_ratio`` 0-1, ``max_output_tokens`` 1-4096, ``audio/pcm`` ``rate`` exactly 24000, non-negative
  ms and indexes;
- ``audio/pcm`` formats need their ``rate`` (the live server answers ``missing_required_parameter:
  'session.audio.output.format.rate'`` without it, antoinedc/MantaUI#1196);
- ``input_audio_buffer.append.audio`` is at most 15 MiB of audio (``input_audio_buffer_append_event.py``),
  i.e. at most :data:`MAX_APPEND_AUDIO_CHARS` base64 characters.

Integral JSON numbers written as decimals (``1500.0``) are accepted for integer fields and returned as ints.
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Union, get_args, get_origin

import pydantic

from voice.errors import RealtimeError

Path = tuple[str | int, ...]

MAX_APPEND_AUDIO_BYTES = 15 * 1024 * 1024
"""Largest audio payload of one ``input_audio_buffer.append`` (15 MiB, input_audio_buffer_append_event.py)."""
MAX_APPEND_AUDIO_CHARS = 4 * math.ceil(MAX_APPEND_AUDIO_BYTES / 3)
""":data:`MAX_APPEND_AUDIO_BYTES` as base64 characters (20 971 520)."""


@dataclass(frozen=True)
class Range:
    """An inclusive numeric range for one field; ``integer`` picks OpenAI's integer vs decimal wording."""

    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False


RANGES: dict[tuple[str, str], Range] = {
    ("RealtimeAudioConfigOutput", "speed"): Range(0.25, 1.5),
    ("ServerVad", "threshold"): Range(0.0, 1.0),
    ("ServerVad", "prefix_padding_ms"): Range(0, None, integer=True),
    ("ServerVad", "silence_duration_ms"): Range(0, None, integer=True),
    ("ServerVad", "idle_timeout_ms"): Range(0, None, integer=True),
    ("RealtimeSessionCreateRequest", "max_output_tokens"): Range(1, 4096, integer=True),
    ("RealtimeResponseCreateParams", "max_output_tokens"): Range(1, 4096, integer=True),
    ("RealtimeTruncationRetentionRatio", "retention_ratio"): Range(0.0, 1.0),
    ("TokenLimits", "post_instructions"): Range(0, None, integer=True),
    ("ConversationItemTruncateEvent", "audio_end_ms"): Range(0, None, integer=True),
    ("ConversationItemTruncateEvent", "content_index"): Range(0, None, integer=True),
    ("AudioPCM", "rate"): Range(24000, 24000, integer=True),
}
"""(SDK model class name, field) -> range, from the SDK docstrings (protocols.md §A.2, §A.4, §C.1)."""

REQUIRED: frozenset[tuple[str, str]] = frozenset({("AudioPCM", "rate")})
"""Fields the SDK types as optional that OpenAI's server requires."""

MAX_LENGTHS: dict[tuple[str, str], int] = {("InputAudioBufferAppendEvent", "audio"): MAX_APPEND_AUDIO_CHARS}
"""(SDK model class name, field) -> maximum string length."""


# --------------------------------------------------------------------------------------------------
# Error helpers (OpenAI's wording)


def format_path(path: Path) -> str:
    """``("item", "content", 0, "type")`` -> ``item.content[0].type``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else part
    return out


def quote(value: Any) -> str:
    """A value as OpenAI quotes it in messages: strings in single quotes, numbers as JSON."""
    if isinstance(value, str):
        return f"'{value}'"
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def join_values(values: Sequence[Any]) -> str:
    """``'a', 'b', and 'c'`` (OpenAI's list style: a comma before the final "and")."""
    quoted = [quote(v) for v in values]
    if len(quoted) <= 1:
        return "".join(quoted)
    if len(quoted) == 2:
        return f"{quoted[0]} and {quoted[1]}"
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


_KIND_PHRASES: Final = {
    "null": "null",
    "boolean": "a boolean",
    "integer": "an integer",
    "number": "a decimal number",
    "string": "a string",
    "object": "an object",
    "array": "an array",
}


def json_kind(value: Any) -> str:
    """The JSON type of a decoded value, as OpenAI names it after "but got"."""
    return _KIND_PHRASES.get(kind_of(value), type(value).__name__)


def missing_error(path: Path) -> RealtimeError:
    param = format_path(path)
    return RealtimeError(
        f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
    )


def unknown_error(path: Path) -> RealtimeError:
    param = format_path(path)
    return RealtimeError(f"Unknown parameter: '{param}'.", code="unknown_parameter", param=param)


def value_error(path: Path, value: Any, supported: Sequence[Any]) -> RealtimeError:
    return RealtimeError(
        f"Invalid value: {quote(value)}. Supported values are: {join_values(supported)}.",
        code="invalid_value",
        param=format_path(path),
    )


def type_error(path: Path, expected: str, value: Any) -> RealtimeError:
    param = format_path(path)
    return RealtimeError(
        f"Invalid type for '{param}': expected {expected}, but got {json_kind(value)} instead.",
        code="invalid_type",
        param=param,
    )


def range_error(path: Path, value: float, rng: Range) -> RealtimeError | None:
    """The out-of-range error for ``value``, or ``None`` when it is inside ``rng``."""
    word = "integer" if rng.integer else "decimal"
    code_word = word
    param = format_path(path)
    if rng.minimum is not None and value < rng.minimum:
        return RealtimeError(
            f"Invalid '{param}': {word} below minimum value. "
            f"Expected a value >= {quote(rng.minimum)}, but got {quote(value)} instead.",
            code=f"{code_word}_below_min_value",
            param=param,
        )
    if rng.maximum is not None and value > rng.maximum:
        return RealtimeError(
            f"Invalid '{param}': {word} above maximum value. "
            f"Expected a value <= {quote(rng.maximum)}, but got {quote(value)} instead.",
            code=f"{code_word}_above_max_value",
            param=param,
        )
    return None


def length_error(path: Path, value: str, maximum: int) -> RealtimeError:
    param = format_path(path)
    return RealtimeError(
        f"Invalid '{param}': string too long. Expected a string with maximum length {maximum}, "
        f"but got a string with length {len(value)} instead.",
        code="string_above_max_length",
        param=param,
    )


# --------------------------------------------------------------------------------------------------
# Checkers compiled from the SDK's type hints


class Checker:
    """Checks one decoded JSON value against one SDK type; returns the (normalized) value or raises."""

    kinds: frozenset[str] = frozenset()
    """JSON kinds this checker can accept: null boolean integer number string object array."""

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, value: Any, path: Path) -> Any:
        raise NotImplementedError


def kind_of(value: Any) -> str:
    """The JSON kind of a decoded value: null boolean integer number string object array (else unknown)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "array"
    return "unknown"


class AnyChecker(Checker):
    kinds = frozenset({"null", "boolean", "integer", "number", "string", "object", "array"})

    def describe(self) -> str:
        return "any value"

    def check(self, value: Any, path: Path) -> Any:
        return value


class NoneChecker(Checker):
    kinds = frozenset({"null"})

    def describe(self) -> str:
        return "null"

    def check(self, value: Any, path: Path) -> Any:
        if value is not None:
            raise type_error(path, self.describe(), value)
        return None


class StrChecker(Checker):
    kinds = frozenset({"string"})

    def __init__(self, max_length: int | None = None) -> None:
        self.max_length = max_length

    def describe(self) -> str:
        return "a string"

    def check(self, value: Any, path: Path) -> Any:
        if not isinstance(value, str):
            raise type_error(path, self.describe(), value)
        if self.max_length is not None and len(value) > self.max_length:
            raise length_error(path, value, self.max_length)
        return value


class BoolChecker(Checker):
    kinds = frozenset({"boolean"})

    def describe(self) -> str:
        return "a boolean"

    def check(self, value: Any, path: Path) -> Any:
        if not isinstance(value, bool):
            raise type_error(path, self.describe(), value)
        return value


class IntChecker(Checker):
    kinds = frozenset({"integer", "number"})

    def describe(self) -> str:
        return "an integer"

    def check(self, value: Any, path: Path) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise type_error(path, self.describe(), value)
        if isinstance(value, float):
            if not value.is_integer():
                raise type_error(path, self.describe(), value)
            return int(value)
        return value


class FloatChecker(Checker):
    kinds = frozenset({"integer", "number"})

    def describe(self) -> str:
        return "a number"

    def check(self, value: Any, path: Path) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise type_error(path, self.describe(), value)
        if isinstance(value, float) and not math.isfinite(value):
            raise type_error(path, self.describe(), value)
        return value


class LiteralChecker(Checker):
    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = values
        self.kinds = frozenset(kind_of(v) for v in values)

    def describe(self) -> str:
        return " or ".join(quote(v) for v in self.values)

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)

    def check(self, value: Any, path: Path) -> Any:
        if self.accepts(value):
            return value
        if kind_of(value) in self.kinds:
            raise value_error(path, value, self.values)
        raise type_error(path, self.describe(), value)


class ListChecker(Checker):
    kinds = frozenset({"array"})

    def __init__(self, item: Checker) -> None:
        self.item = item

    def describe(self) -> str:
        if isinstance(self.item, ModelChecker | DictChecker):
            return "an array of objects"
        if isinstance(self.item, StrChecker):
            return "an array of strings"
        return "an array"

    def check(self, value: Any, path: Path) -> Any:
        if not isinstance(value, list):
            raise type_error(path, self.describe(), value)
        return [self.item.check(v, (*path, i)) for i, v in enumerate(value)]


class DictChecker(Checker):
    kinds = frozenset({"object"})

    def __init__(self, value: Checker) -> None:
        self.value = value

    def describe(self) -> str:
        return "an object"

    def check(self, value: Any, path: Path) -> Any:
        if not isinstance(value, Mapping):
            raise type_error(path, self.describe(), value)
        return {k: self.value.check(v, (*path, k)) for k, v in value.items()}


@dataclass
class Field:
    name: str
    checker: Checker
    required: bool
    range: Range | None


class ModelChecker(Checker):
    """An SDK model: known keys only, required keys present, each value checked."""

    kinds = frozenset({"object"})

    def __init__(self, model: type[pydantic.BaseModel]) -> None:
        self.model = model
        self.fields: dict[str, Field] = {}

    def describe(self) -> str:
        return "an object"

    def literal_values(self, key: str) -> tuple[Any, ...] | None:
        """The literal values field ``key`` accepts, or None if it is not a literal field."""
        f = self.fields.get(key)
        if f is None:
            return None
        checker = f.checker
        if isinstance(checker, UnionChecker):
            lits = [m for m in checker.members if isinstance(m, LiteralChecker)]
            if len(lits) == 1 and all(isinstance(m, LiteralChecker | NoneChecker) for m in checker.members):
                return lits[0].values
            return None
        if isinstance(checker, LiteralChecker):
            return checker.values
        return None

    def check(self, value: Any, path: Path) -> Any:
        if not isinstance(value, Mapping):
            raise type_error(path, self.describe(), value)
        fields = self.fields
        for key in value:
            if key not in fields:
                raise unknown_error((*path, key))
        for name, f in fields.items():
            if f.required and name not in value:
                raise missing_error((*path, name))
        out: dict[str, Any] = {}
        for key, item in value.items():
            f = fields[key]
            rng = f.range
            if rng is not None and kind_of(item) in ("integer", "number"):
                err = range_error((*path, key), item, rng)
                if err is not None:
                    raise err
            out[key] = f.checker.check(item, (*path, key))
        return out


class UnionChecker(Checker):
    """A union; dicts are routed to a model by ``type`` (then ``role``), other values by their JSON kind."""

    def __init__(self, members: list[Checker], discriminator: str | None) -> None:
        self.members = members
        self.discriminator = discriminator
        self.kinds = frozenset().union(*(m.kinds for m in members))

    def describe(self) -> str:
        parts: list[str] = []
        for m in self.members:
            d = m.describe()
            if d not in parts and not isinstance(m, NoneChecker):
                parts.append(d)
        if not parts:
            return "null"
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" or {parts[-1]}"

    def check(self, value: Any, path: Path) -> Any:
        kind = kind_of(value)
        models = [m for m in self.members if isinstance(m, ModelChecker)]
        if kind == "object" and models:
            return self._check_models(models, value, path)
        for m in self.members:
            if isinstance(m, LiteralChecker) and m.accepts(value):
                return value
        for m in self.members:
            if not isinstance(m, LiteralChecker | ModelChecker) and kind in m.kinds:
                return m.check(value, path)
        literals = [v for m in self.members if isinstance(m, LiteralChecker) for v in m.values]
        if literals and kind in {kind_of(v) for v in literals}:
            raise value_error(path, value, literals)
        raise type_error(path, self.describe(), value)

    def _check_models(self, models: list[ModelChecker], value: Mapping[str, Any], path: Path) -> Any:
        candidates = models
        for key in ("type", "role"):
            if len(candidates) == 1:
                break
            tagged = [(m, m.literal_values(key)) for m in candidates]
            if not all(values is not None for _, values in tagged):
                continue
            if key not in value or value[key] is None:
                optional = [m for m, _ in tagged if not m.fields[key].required]
                if not optional or key == self.discriminator:
                    raise missing_error((*path, key))
                candidates = optional
                continue
            tag = value[key]
            matching = [m for m, values in tagged if values is not None and tag in values]
            if not matching:
                supported: list[Any] = []
                for _, values in tagged:
                    for v in values or ():
                        if v not in supported:
                            supported.append(v)
                if not isinstance(tag, str):
                    raise type_error((*path, key), "a string", tag)
                raise value_error((*path, key), tag, supported)
            candidates = matching
        if len(candidates) == 1:
            return candidates[0].check(value, path)
        first: RealtimeError | None = None
        for m in candidates:
            try:
                return m.check(value, path)
            except RealtimeError as err:
                first = first or err
        assert first is not None
        raise first


# --------------------------------------------------------------------------------------------------
# Compilation


_cache: dict[type[pydantic.BaseModel], ModelChecker] = {}


def _discriminator(metadata: Sequence[Any]) -> str | None:
    for meta in metadata:
        disc = getattr(meta, "discriminator", None)
        if isinstance(disc, str):
            return disc
    return None


def compile_type(tp: Any, *, owner: str = "", field: str = "") -> Checker:
    """A checker for one type hint (``owner``/``field`` name the model field it belongs to)."""
    discriminator: str | None = None
    origin = get_origin(tp)
    if origin is typing.Annotated:
        discriminator = _discriminator(tp.__metadata__)
        tp = get_args(tp)[0]
        origin = get_origin(tp)
    if tp is Any or tp is object:
        return AnyChecker()
    if tp is type(None) or tp is None:
        return NoneChecker()
    if tp is str:
        return StrChecker(MAX_LENGTHS.get((owner, field)))
    if tp is bool:
        return BoolChecker()
    if tp is int:
        return IntChecker()
    if tp is float:
        return FloatChecker()
    if origin is Literal:
        return LiteralChecker(get_args(tp))
    if origin in (Union, types.UnionType):
        members = [compile_type(a, owner=owner, field=field) for a in get_args(tp)]
        flat: list[Checker] = []
        for m in members:
            # Optional[Annotated[Union[...]]]: lift the inner union's members, keep its discriminator.
            if isinstance(m, UnionChecker):
                discriminator = discriminator or m.discriminator
                flat.extend(m.members)
            else:
                flat.append(m)
        return UnionChecker(flat, discriminator)
    if origin in (list, typing.List):  # noqa: UP006
        return ListChecker(compile_type(get_args(tp)[0]))
    if origin in (dict, typing.Dict):  # noqa: UP006
        return DictChecker(compile_type(get_args(tp)[1]))
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return compile_model(tp)
    raise TypeError(f"unsupported type in an SDK model: {tp!r}")


def compile_model(model: type[pydantic.BaseModel]) -> ModelChecker:
    """The checker of an SDK model (cached; built before its fields so that recursion terminates)."""
    cached = _cache.get(model)
    if cached is not None:
        return cached
    checker = ModelChecker(model)
    _cache[model] = checker
    name = model.__name__
    for fname, info in model.model_fields.items():
        key = info.alias or fname
        # pydantic moves a field's own Annotated metadata (the SDK's PropertyInfo) into ``info.metadata``.
        field_checker = compile_type(info.annotation, owner=name, field=fname)
        disc = _discriminator(info.metadata)
        if disc is not None and isinstance(field_checker, UnionChecker):
            field_checker.discriminator = disc
        checker.fields[key] = Field(
            name=key,
            checker=field_checker,
            required=info.is_required() or (name, fname) in REQUIRED,
            range=RANGES.get((name, fname)),
        )
    return checker


Validator = Callable[[Mapping[str, Any]], dict[str, Any]]


def model_validator(model: type[pydantic.BaseModel]) -> Validator:
    """A function validating a decoded event against ``model`` (path relative to the event)."""
    checker = compile_model(model)

    def validate(event: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = checker.check(event, ())
        return result

    return validate
