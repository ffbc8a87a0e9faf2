"""Field checks for client event payloads, raising :class:`RealtimeError` worded as OpenAI words them.

The Realtime API answers a bad field with an ``error`` event of type ``invalid_request_error`` whose
``param`` is the dotted path of the field and whose message follows a few fixed patterns (protocols.md
§A.5, §A.6 "Errors"): ``Invalid type for 'X': expected ..., but got ... instead.`` (code ``invalid_type``),
``Invalid value: 'v'. Supported values are: ...`` (``invalid_value``), ``Missing required parameter: 'X'.``
(``missing_required_parameter``) and range errors (``integer_below_min_value`` and friends).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from voice.errors import RealtimeError

__all__ = [
    "expect_bool",
    "expect_choice",
    "expect_int",
    "expect_list",
    "expect_number",
    "expect_object",
    "expect_str",
    "missing",
]

_JSON_KINDS: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a decimal",
    str: "a string",
    list: "an array",
    dict: "an object",
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    for python_type, name in _JSON_KINDS.items():
        if type(value) is python_type:
            return name
    return "an object"


def wrong_type(param: str, expected: str, value: Any) -> RealtimeError:
    return RealtimeError(
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
        code="invalid_type",
        param=param,
    )


def missing(param: str) -> RealtimeError:
    return RealtimeError(
        f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
    )


def _supported(values: Sequence[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def expect_choice(param: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise wrong_type(param, "one of " + ", ".join(choices), value)
    if value not in choices:
        raise RealtimeError(
            f"Invalid value: '{value}'. Supported values are: {_supported(choices)}.",
            code="invalid_value",
            param=param,
        )
    return value


def expect_str(param: str, value: Any) -> str:
    if not isinstance(value, str):
        raise wrong_type(param, "a string", value)
    return value


def expect_bool(param: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise wrong_type(param, "a boolean", value)
    return value


def expect_object(param: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise wrong_type(param, "an object", value)
    return dict(value)


def expect_list(param: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise wrong_type(param, "an array", value)
    return value


def expect_int(param: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    number: int
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise wrong_type(param, "an integer", value)
    _check_range(param, number, number, "integer", minimum, maximum)
    return number


def expect_number(
    param: str, value: Any, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise wrong_type(param, "a decimal", value)
    number = float(value)
    _check_range(param, number, value, "decimal", minimum, maximum)
    return number


def _check_range(
    param: str, number: float, shown: Any, word: str, minimum: float | None, maximum: float | None
) -> None:
    """OpenAI's ``{word}_below_min_value`` / ``{word}_above_max_value`` error when ``number`` is out of range
    (``shown`` is the value as the client sent it)."""
    if minimum is not None and number < minimum:
        raise RealtimeError(
            f"Invalid '{param}': {word} below minimum value. "
            f"Expected a value >= {minimum}, but got {shown} instead.",
            code=f"{word}_below_min_value",
            param=param,
        )
    if maximum is not None and number > maximum:
        raise RealtimeError(
            f"Invalid '{param}': {word} above maximum value. "
            f"Expected a value <= {maximum}, but got {shown} instead.",
            code=f"{word}_above_max_value",
            param=param,
        )
