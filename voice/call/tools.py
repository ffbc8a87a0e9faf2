"""Function tools: Python functions with typed arguments become Realtime function tools (DESIGN.md "Tools").

A tool is a sync or async Python function whose arguments are either one pydantic model or plain annotated
parameters (a model is built from them). :func:`tool` (a decorator) or :meth:`ToolRegistry.register` turns it
into a :class:`Tool`; :meth:`ToolRegistry.definitions` gives the Realtime ``session.tools`` entries
(protocols.md §A.2, ``{"type": "function", "name", "description", "parameters"}``) and
:meth:`ToolRegistry.invoke` runs a call from the model's JSON arguments and always returns a string for
``function_call_output`` (§A.5 function round trip): validation errors, exceptions and timeouts become a JSON
``{"error": ...}`` the model can read and recover from; nothing raises.

Parameters schemas follow OpenAI's strict structured-output rules (the Realtime function tool has no
``strict`` flag, but strict-shaped schemas are what the models follow best):

- the root is an object (not ``anyOf``); every object has ``additionalProperties: false`` and lists *all* its
  properties in ``required``; an optional field is required but nullable (``anyOf [..., {"type":"null"}]``);
- ``default`` is not allowed: it is removed and mentioned in the description instead; ``title`` is removed
  (noise); ``allOf`` with one entry is inlined, other ``allOf``, ``not``, ``if``/``then``/``else``,
  ``dependentRequired``/``dependentSchemas`` are refused (:class:`ToolDefinitionError`);
- a ``$ref`` with sibling keywords (e.g. a description) is inlined, as the OpenAI SDK's
  ``to_strict_json_schema`` does; plain ``$ref`` into ``$defs`` is kept.

Built-ins handled by the call core itself (they act on the call, not on the world): ``end_call``,
``transfer_call`` and ``send_dtmf`` (:data:`BUILTIN_TOOLS`, :func:`builtin_definitions`,
:func:`parse_builtin_arguments`).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, overload

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from voice.errors import VoiceError
from voice.logs import get_logger

__all__ = [
    "BUILTIN_TOOLS",
    "DEFAULT_TIMEOUT_S",
    "EndCallArgs",
    "SendDtmfArgs",
    "Tool",
    "ToolDefinitionError",
    "ToolRegistry",
    "TransferCallArgs",
    "builtin_definitions",
    "error_output",
    "make_tool",
    "parse_builtin_arguments",
    "strict_schema",
    "tool",
]

DEFAULT_TIMEOUT_S: Final = 10.0
_log = get_logger(component="tools")


class ToolDefinitionError(VoiceError):
    """A function cannot be declared as a tool (bad signature, name, or a schema strict mode cannot take)."""


def error_output(message: str, **details: Any) -> str:
    """The ``function_call_output`` string for a failed call: ``{"error": message, ...details}``."""
    return json.dumps({"error": message, **details}, ensure_ascii=False, default=str)


# Strict schemas ------------------------------------------------------------------------------------------

_REFUSED: Final = ("not", "if", "then", "else", "dependentRequired", "dependentSchemas")


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of ``model`` made to follow the strict rules in the module docstring."""
    schema = model.model_json_schema()
    if schema.get("type") != "object":
        raise ToolDefinitionError(f"{model.__name__}: a tool's parameters must be a JSON object schema")
    return _strict(schema, root=schema, path=model.__name__)


def _strict(node: Any, *, root: dict[str, Any], path: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise ToolDefinitionError(f"{path}: expected a schema object, got {node!r}")
    for keyword in _REFUSED:
        if keyword in node:
            raise ToolDefinitionError(f"{path}: strict schemas do not support {keyword!r}")
    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) > 1:
        merged = {**_resolve(root, ref), **{k: v for k, v in node.items() if k != "$ref"}}
        return _strict(merged, root=root, path=path)
    out = dict(node)
    out.pop("title", None)
    if "default" in out:
        default = out.pop("default")
        if default is not None:
            note = f"(default: {json.dumps(default, default=str)})"
            out["description"] = f"{out['description']} {note}" if out.get("description") else note
    all_of = out.pop("allOf", None)
    if all_of is not None:
        if not isinstance(all_of, list) or len(all_of) != 1:
            raise ToolDefinitionError(f"{path}: strict schemas do not support 'allOf' with several entries")
        inner = _strict(all_of[0], root=root, path=f"{path}.allOf")
        return _strict({**inner, **out}, root=root, path=path)
    if isinstance(out.get("$defs"), dict):
        out["$defs"] = {k: _strict(v, root=root, path=f"{path}.$defs.{k}") for k, v in out["$defs"].items()}
    props = out.get("properties")
    if out.get("type") == "object" or isinstance(props, dict):
        props = props if isinstance(props, dict) else {}
        out["properties"] = {k: _strict(v, root=root, path=f"{path}.{k}") for k, v in props.items()}
        out["required"] = list(props)
        out["additionalProperties"] = False
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"], root=root, path=f"{path}[]")
    if isinstance(out.get("anyOf"), list):
        out["anyOf"] = [_strict(v, root=root, path=f"{path}.anyOf") for v in out["anyOf"]]
    return out


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise ToolDefinitionError(f"unsupported $ref {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            raise ToolDefinitionError(f"unresolvable $ref {ref!r}")
        node = node[part]
    if not isinstance(node, dict):
        raise ToolDefinitionError(f"$ref {ref!r} does not point at a schema")
    return copy.deepcopy(node)


# Tools ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    """A function tool: its Realtime definition and how to call it.

    ``takes_model``: the function takes the validated model instance as its one argument; otherwise it is
    called with the model's fields as keyword arguments. A ``Tool`` is callable like the function it wraps.
    """

    name: str
    description: str
    arguments: type[BaseModel]
    func: Callable[..., Any]
    timeout_s: float = DEFAULT_TIMEOUT_S
    takes_model: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def definition(self) -> dict[str, Any]:
        """The ``session.tools`` entry (protocols.md §A.2)."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": copy.deepcopy(self.parameters),
        }


_NAME_OK: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _check_name(name: str) -> str:
    if not 1 <= len(name) <= 64 or not set(name) <= _NAME_OK:
        raise ToolDefinitionError(f"invalid tool name {name!r}: 1-64 characters of a-z, A-Z, 0-9, _ and -")
    return name


def _description(func: Callable[..., Any]) -> str:
    doc = inspect.getdoc(func) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


def _arguments_model(func: Callable[..., Any], name: str) -> tuple[type[BaseModel], bool]:
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:  # NameError etc. from unresolvable annotations
        raise ToolDefinitionError(f"tool {name!r}: cannot resolve the annotations: {exc}") from exc
    params = list(inspect.signature(func).parameters.values())
    if len(params) == 1:
        only = hints.get(params[0].name)
        if inspect.isclass(only) and issubclass(only, BaseModel):
            return only, True
    fields: dict[str, Any] = {}
    for param in params:
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise ToolDefinitionError(f"tool {name!r}: *args/**kwargs cannot be tool arguments")
        if param.name not in hints:
            raise ToolDefinitionError(f"tool {name!r}: parameter {param.name!r} needs a type annotation")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints[param.name], default)
    model = pydantic.create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    return typing.cast(type[BaseModel], model), False


def make_tool(
    func: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Tool:
    """Build a :class:`Tool` from a function (see :func:`tool`)."""
    tool_name = _check_name(name or func.__name__)
    if timeout_s <= 0:
        raise ToolDefinitionError(f"tool {tool_name!r}: timeout_s must be positive")
    model, takes_model = _arguments_model(func, tool_name)
    return Tool(
        name=tool_name,
        description=description if description is not None else _description(func),
        arguments=model,
        func=func,
        timeout_s=timeout_s,
        takes_model=takes_model,
        parameters=strict_schema(model),
    )


@overload
def tool(func: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Declare a function tool: ``@tool`` or ``@tool(name=..., description=..., timeout_s=...)``.

    The name defaults to the function's name and the description to the first paragraph of its docstring.
    """
    if func is not None:
        return make_tool(func, name=name, description=description, timeout_s=timeout_s)

    def decorate(f: Callable[..., Any]) -> Tool:
        return make_tool(f, name=name, description=description, timeout_s=timeout_s)

    return decorate


def _serialize(result: Any) -> str:
    if isinstance(result, str):
        return result
    if result is None:
        return json.dumps({"ok": True})
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    return json.dumps(result, ensure_ascii=False, default=str)


def _validation_details(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "(arguments)", "problem": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


class ToolRegistry:
    """The function tools of an agent, in registration order (stable, which keeps the prompt cache warm)."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = (), *, builtins: bool = True) -> None:
        self.builtins = builtins
        self._tools: dict[str, Tool] = {}
        for item in tools:
            self.register(item)

    def register(
        self,
        func: Tool | Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
    ) -> Tool:
        """Add a tool (a :class:`Tool` or a plain function); a duplicate or built-in name is refused."""
        if isinstance(func, Tool):
            t = func
            if name is not None or description is not None or timeout_s is not None:
                t = make_tool(
                    t.func,
                    name=name or t.name,
                    description=description if description is not None else t.description,
                    timeout_s=timeout_s if timeout_s is not None else t.timeout_s,
                )
        else:
            t = make_tool(func, name=name, description=description, timeout_s=timeout_s or DEFAULT_TIMEOUT_S)
        if t.name in self._tools or (self.builtins and t.name in BUILTIN_TOOLS):
            raise ToolDefinitionError(f"a tool named {t.name!r} is already registered")
        self._tools[t.name] = t
        return t

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    @property
    def names(self) -> list[str]:
        """Registered tool names (built-ins first when enabled)."""
        return [*(BUILTIN_TOOLS if self.builtins else ()), *self._tools]

    def definitions(self) -> list[dict[str, Any]]:
        """``session.tools``: the built-ins (when enabled), then the registered tools."""
        defs = builtin_definitions() if self.builtins else []
        return defs + [t.definition() for t in self._tools.values()]

    def session_tools(self, declared: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
        """:meth:`definitions` plus ``declared`` definitions (e.g. a profile's TOML ``[[tools]]``) whose
        names are not implemented here; an implemented tool's own schema wins over a declared one."""
        defs = self.definitions()
        seen = {d["name"] for d in defs}
        for d in declared:
            if d.get("name") not in seen:
                defs.append(dict(d))
                seen.add(d.get("name"))
        return defs

    async def invoke(self, name: str, arguments: str | Mapping[str, Any]) -> str:
        """Run tool ``name`` with the model's arguments (JSON text or a decoded dict); never raises.

        The result is the tool's return value as text (a ``str`` as is, a model or other value as JSON,
        ``None`` as ``{"ok": true}``), or ``{"error": ...}`` for an unknown tool, bad JSON, arguments that do
        not validate, an exception or a timeout (``timeout_s``; a sync tool runs in a worker thread).
        """
        t = self._tools.get(name)
        if t is None:
            if name in BUILTIN_TOOLS:
                return error_output(f"{name!r} is handled by the call itself")
            return error_output(f"unknown tool {name!r}")
        if isinstance(arguments, str):
            try:
                decoded = json.loads(arguments) if arguments.strip() else {}
            except ValueError as exc:
                return error_output(f"arguments are not valid JSON: {exc}")
        else:
            decoded = dict(arguments)
        if not isinstance(decoded, dict):
            return error_output("arguments must be a JSON object")
        try:
            args = t.arguments.model_validate(decoded)
        except pydantic.ValidationError as exc:
            return error_output("invalid arguments", details=_validation_details(exc))
        try:
            result = await asyncio.wait_for(self._run(t, args), timeout=t.timeout_s)
        except TimeoutError:
            _log.warning("tool timed out", tool=name, timeout_s=t.timeout_s)
            return error_output(f"the tool {name!r} timed out after {t.timeout_s:g} s")
        except Exception as exc:
            _log.warning("tool failed", tool=name, error=repr(exc))
            return error_output(f"the tool {name!r} failed: {type(exc).__name__}: {exc}")
        try:
            return _serialize(result)
        except (TypeError, ValueError) as exc:
            return error_output(f"the tool {name!r} returned a value that is not JSON: {exc}")

    @staticmethod
    async def _run(t: Tool, args: BaseModel) -> Any:
        call_args: tuple[Any, ...] = (args,) if t.takes_model else ()
        call_kwargs: dict[str, Any] = (
            {} if t.takes_model else {k: getattr(args, k) for k in type(args).model_fields}
        )
        if inspect.iscoroutinefunction(t.func):
            return await t.func(*call_args, **call_kwargs)
        result = await asyncio.to_thread(t.func, *call_args, **call_kwargs)
        if inspect.isawaitable(result):
            return await result
        return result


# Built-ins (handled by the call core) --------------------------------------------------------------------

_DTMF_PATTERN: Final = r"^[0-9*#A-D]{1,32}$"


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndCallArgs(_Args):
    """End the call. Say a short goodbye first; the line is hung up once your speech has been heard."""

    reason: str | None = Field(None, description="Why the call ends, e.g. 'caller said goodbye'")


class TransferCallArgs(_Args):
    """Transfer the caller to another number or person (the default staff line when no target is given)."""

    target: str | None = Field(
        None, description="Phone number or SIP URI to transfer to; null for the default staff line"
    )
    reason: str = Field(description="Why the caller is transferred")


class SendDtmfArgs(_Args):
    """Press keys on the line (e.g. to navigate another company's phone menu)."""

    digits: str = Field(pattern=_DTMF_PATTERN, description="Keys to press: 0-9, *, #, A-D")


BUILTIN_TOOLS: Final[dict[str, type[BaseModel]]] = {
    "end_call": EndCallArgs,
    "transfer_call": TransferCallArgs,
    "send_dtmf": SendDtmfArgs,
}
"""Built-in tool name -> argument model; the call core acts on these itself."""


def builtin_definitions(names: Iterable[str] = tuple(BUILTIN_TOOLS)) -> list[dict[str, Any]]:
    """Realtime definitions of the built-in tools ``names`` (all three by default)."""
    out = []
    for name in names:
        model = BUILTIN_TOOLS[name]
        out.append(
            {
                "type": "function",
                "name": name,
                "description": _description(model),
                "parameters": strict_schema(model),
            }
        )
    return out


def parse_builtin_arguments(name: str, arguments: Mapping[str, Any]) -> BaseModel | str:
    """Validate a built-in's arguments: the model instance, or a problem description for the model."""
    model = BUILTIN_TOOLS[name]
    try:
        return model.model_validate(dict(arguments))
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{d['field']}: {d['problem']}" for d in _validation_details(exc))
        return f"invalid arguments for {name}: {problems}"
