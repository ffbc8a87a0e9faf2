"""What the local Realtime engine's agent says: the "model" behind the engine's responses.

The engine's session core keeps the conversation (Realtime items) and, on every ``response.create``, hands a
:class:`ResponseRequest` to a :class:`Responder`: the session ``instructions``, the session ``tools``, the
conversation as :class:`Turn` values, and the per-response ``instructions`` of ``response.create`` if any.
The responder answers with a list of actions: :class:`Say` (an assistant message, spoken by the engine's
synthesizer) and :class:`CallTool` (a ``function_call`` item the client must run and answer with a
``function_call_output``). The engine turns them into Realtime output items; a responder never sees audio.

Two implementations:

- :class:`ScriptedResponder` plays an agent profile's ``[engine]`` script (``prompts/NAME.toml``):
  deterministic, offline, used by every end-to-end test.
- :class:`~voice.engine.chat.ChatCompletionsResponder` (in :mod:`voice.engine.chat`, also importable from
  here) forwards the conversation to any OpenAI-compatible chat-completions endpoint
  (``POST {base_url}/chat/completions``, non-streaming): a local LLM server or a hosted one.

:func:`make_responder` picks one from the settings (``VOICE_ENGINE__CHAT_URL`` selects chat mode).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, runtime_checkable

from voice.config import Settings
from voice.errors import ConfigError
from voice.logs import get_logger
from voice.profiles import AgentProfile, EngineScript, ScriptRule

if TYPE_CHECKING:  # at run time :func:`__getattr__` imports it (voice.engine.chat imports this module)
    from voice.engine.chat import ChatCompletionsResponder

__all__ = [
    "Action",
    "CallTool",
    "ChatCompletionsResponder",
    "Responder",
    "ResponseRequest",
    "Say",
    "ScriptedResponder",
    "Turn",
    "dtmf_keys",
    "make_responder",
    "normalize_words",
    "numbers_to_digits",
    "parse_say_instruction",
    "tool_names",
]

_log = get_logger(component="engine.responder")

# --------------------------------------------------------------------------------------------------------
# The interface (CONTRACTS.md section C)
# --------------------------------------------------------------------------------------------------------

TurnRole = Literal["user", "assistant", "system", "function_call", "function_call_output"]


@dataclass(frozen=True)
class Turn:
    """One conversation item as the responder sees it.

    - ``user`` / ``assistant`` / ``system``: a message; ``text`` is its text (typed input, the transcript of
      caller audio, which is empty when recognition is off, or the transcript of what the agent said).
    - ``function_call``: ``name``, ``call_id`` and ``arguments`` (the JSON string) of a call the agent made.
    - ``function_call_output``: ``call_id`` of the call it answers and ``text`` = the ``output`` string.
    """

    role: TurnRole
    text: str = ""
    name: str | None = None
    call_id: str | None = None
    arguments: str | None = None


@dataclass(frozen=True)
class Say:
    """Speak ``text`` (one assistant message)."""

    text: str


@dataclass(frozen=True)
class CallTool:
    """Call the session tool ``name`` with ``arguments`` (one ``function_call`` item)."""

    name: str
    arguments: dict[str, Any]


Action = Say | CallTool


@dataclass(frozen=True)
class ResponseRequest:
    """Everything a responder may use to produce one Realtime response.

    ``tools`` are the session's tools as the Realtime API declares them
    (``{"type": "function", "name", "description", "parameters"}``); ``response_instructions`` are the
    ``instructions`` of ``response.create`` (they replace nothing: they apply to this response only).
    """

    instructions: str
    tools: list[dict[str, Any]]
    turns: list[Turn]
    response_instructions: str | None = None


@runtime_checkable
class Responder(Protocol):
    """Produces the content of one response from the conversation so far."""

    async def respond(self, request: ResponseRequest) -> list[Say | CallTool]:
        """The actions of one response, in order (may raise :class:`~voice.errors.UpstreamError`)."""
        ...


# --------------------------------------------------------------------------------------------------------
# Text helpers (pure)
# --------------------------------------------------------------------------------------------------------

_SAY_INSTRUCTION: Final = re.compile(
    r"^\s*say(?:\s+exactly)?\s*:\s*(?P<text>.*?)\s*$", re.IGNORECASE | re.DOTALL
)
_QUOTES: Final = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»"}


def parse_say_instruction(instructions: str | None) -> str | None:
    """The text of a ``Say: <text>`` / ``Say exactly: <text>`` instruction (case-insensitive), else ``None``.

    One pair of surrounding quotes is removed: ``Say exactly: "Sorry."`` says ``Sorry.``.
    """
    if not instructions:
        return None
    found = _SAY_INSTRUCTION.match(instructions)
    if found is None:
        return None
    text = found.group("text")
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text or None


_APOSTROPHES: Final = re.compile(r"['’`]")
_NON_WORD: Final = re.compile(r"[^\w]+")


def normalize_words(text: str) -> str:
    """Lowercase, apostrophes dropped (``that's`` -> ``thats``), other punctuation as spaces, single-spaced.

    Phrases and caller text go through the same function, so ``" phrase " in " text "`` matches whole words.
    """
    text = _APOSTROPHES.sub("", text.lower())
    return " ".join(_NON_WORD.sub(" ", text).replace("_", " ").split())


def _contains_phrase(normalized_text: str, phrase: str) -> bool:
    wanted = normalize_words(phrase)
    return bool(wanted) and f" {wanted} " in f" {normalized_text} "


_DTMF_KEYS: Final = r"(?P<keys>[0-9A-D*#](?:[\s,]*[0-9A-D*#])*)"
_DTMF_NOTE: Final = re.compile(
    r"^\s*(?:"
    r"(?:the\s+)?(?:caller|user)?\s*(?:pressed|dialled|dialed|entered)(?:\s+(?:the\s+)?(?:keys?|digits?))?"
    r"|dtmf(?:\s+(?:keys?|digits?|tones?))?"
    r"|(?:keys?|digits?)(?:\s+pressed)?"
    rf")\s*[:=]?\s*{_DTMF_KEYS}\s*\.?\s*$",
    re.IGNORECASE,
)


def dtmf_keys(text: str) -> str | None:
    """The keys of a DTMF note such as ``Caller pressed 5`` or ``DTMF: 12#``, uppercased, without
    separators; ``None`` when ``text`` is not such a note."""
    found = _DTMF_NOTE.match(text)
    if found is None:
        return None
    return re.sub(r"[\s,]", "", found.group("keys")).upper()


def _same_keys(pressed: str, expected: str) -> bool:
    """Exact key match, ignoring a trailing ``#`` (the usual end-of-entry key) on either side."""
    return pressed.rstrip("#") == expected.strip().upper().rstrip("#")


_UNITS: Final = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS: Final = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90,
}  # fmt: skip
_NUMBER_WORD: Final = "|".join(sorted([*_UNITS, *_TENS, "hundred"], key=len, reverse=True))
_NUMBER_RUN: Final = re.compile(rf"\b(?:{_NUMBER_WORD})(?:[\s-]+(?:{_NUMBER_WORD}))*\b", re.IGNORECASE)


def _parse_number_run(words: Sequence[str]) -> list[tuple[int, bool]]:
    """Numbers in a run of number words, each with whether it was said as tens or teens (``thirty``)."""
    numbers: list[tuple[int, bool]] = []
    i = 0
    while i < len(words):
        word = words[i]
        value = 0
        tens_said = False
        if word in _UNITS:
            value = _UNITS[word]
            tens_said = value >= 10
            i += 1
            if 1 <= value <= 9 and i < len(words) and words[i] == "hundred":
                value *= 100
                i += 1
                if i < len(words) and words[i] in _TENS:
                    value += _TENS[words[i]]
                    i += 1
                    if i < len(words) and 1 <= _UNITS.get(words[i], 0) <= 9:
                        value += _UNITS[words[i]]
                        i += 1
                elif i < len(words) and 1 <= _UNITS.get(words[i], 0) <= 19:
                    value += _UNITS[words[i]]
                    i += 1
        elif word in _TENS:
            value = _TENS[word]
            tens_said = True
            i += 1
            if i < len(words) and 1 <= _UNITS.get(words[i], 0) <= 9:
                value += _UNITS[words[i]]
                i += 1
        else:  # a stray "hundred"
            i += 1
            continue
        numbers.append((value, tens_said))
    return numbers


def _digits_for_run(found: re.Match[str]) -> str:
    words = [w for w in re.split(r"[\s-]+", found.group(0).lower()) if w]
    numbers = _parse_number_run(words)
    if not numbers:
        return found.group(0)
    if len(numbers) == 2:
        (hour, _), (minutes, minutes_said) = numbers
        if 1 <= hour <= 12 and minutes_said and 10 <= minutes <= 59:
            return f"{hour}:{minutes:02d}"  # "seven thirty" -> "7:30"
    return " ".join(str(n) for n, _ in numbers)


def numbers_to_digits(text: str) -> str:
    """Spoken numbers as digits: ``four people at seven thirty pm`` -> ``4 people at 7:30 pm``."""
    return _NUMBER_RUN.sub(_digits_for_run, text)


def _words_to_int(text: str) -> int | None:
    words = [w for w in re.split(r"[\s-]+", text.strip().lower()) if w]
    if not words or any(w not in _UNITS and w not in _TENS and w != "hundred" for w in words):
        return None
    numbers = _parse_number_run(words)
    return numbers[0][0] if len(numbers) == 1 else None


def tool_names(tools: Iterable[Mapping[str, Any]]) -> set[str]:
    """Names of the function tools in a Realtime (or chat-completions) ``tools`` list."""
    names: set[str] = set()
    for tool in tools:
        if tool.get("type", "function") != "function":
            continue
        function = tool.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool.get("name")
        if isinstance(name, str):
            names.add(name)
    return names


def _tool_parameter_types(tools: Iterable[Mapping[str, Any]], name: str) -> dict[str, str]:
    """``{argument: JSON schema type}`` of the tool ``name``, for arguments with a single type."""
    for tool in tools:
        function = tool.get("function")
        spec = function if isinstance(function, Mapping) else tool
        if spec.get("name") != name:
            continue
        parameters = spec.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
        if not isinstance(properties, Mapping):
            return {}
        return {
            key: schema["type"]
            for key, schema in properties.items()
            if isinstance(schema, Mapping) and isinstance(schema.get("type"), str)
        }
    return {}


def _json_object(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------------------------------------
# ScriptedResponder
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    """The caller's last input: words (``keys`` is None) or a DTMF note (``keys`` set)."""

    text: str
    keys: str | None


class ScriptedResponder:
    """Plays an agent profile's ``[engine]`` script (:class:`~voice.profiles.EngineScript`).

    Pure and deterministic: the same request always gives the same answer (``respond`` is async only to
    satisfy :class:`Responder`). One response is one action, chosen in this order:

    1. **Fixed text.** Per-response instructions of the form ``Say: <text>`` or ``Say exactly: <text>``
       (case-insensitive; one pair of surrounding quotes removed) say ``<text>``. This is how the service
       makes the agent speak fixed text (an apology, a goodbye); a real model follows the same instruction.
       Other per-response instructions are ignored.
    2. **The last relevant turn** is found walking back from the end of the conversation, skipping
       ``assistant`` messages (a new response re-answers the caller's last input) and ``system`` messages
       that are not DTMF notes (context for a model, not input). Then:

       - none (only instructions so far) -> ``greeting``;
       - a ``function_call_output`` -> the ``say_after`` of the rule that made the matching
         ``function_call`` (by ``call_id``), formatted with the call's arguments and the fields of the JSON
         output (a non-object output is ``{output}``); a missing field, non-JSON output, an unknown call or
         a rule without ``say_after`` -> ``after_tool``;
       - a ``function_call`` still waiting for its output -> nothing (an empty response; the agent waits);
       - a DTMF note (``Caller pressed 5``, ``DTMF: 12#``, role ``user`` or ``system``) -> the first rule
         whose ``dtmf`` equals the keys (exact, a trailing ``#`` ignored);
       - a ``user`` message -> the first rule with a ``match`` phrase in its text (case-insensitive, whole
         words, punctuation ignored). An empty text (recognition off) matches nothing.

    3. A matching rule says ``say``, or calls ``call`` with ``arguments`` where each ``extract`` regular
       expression's first group found in the caller's text (tried as said, then with spoken numbers as
       digits: ``four`` -> ``4``, ``seven thirty`` -> ``7:30``) overrides the default, converted to ``int`` /
       ``float`` when the default (or, without a default, the tool's JSON schema) is one. A call to a tool
       that is not among the session's tools says ``fallback`` instead (a model cannot call it either).
    4. Nothing matches -> ``fallback``.
    """

    def __init__(self, script: EngineScript) -> None:
        self._script = script
        self._extract: list[dict[str, re.Pattern[str]]] = []
        for index, rule in enumerate(script.rules):
            compiled: dict[str, re.Pattern[str]] = {}
            for argument, pattern in rule.extract.items():
                try:
                    compiled[argument] = re.compile(pattern, re.IGNORECASE)
                except re.error as exc:
                    raise ConfigError(
                        f"engine rule {index}: bad 'extract' pattern for {argument!r}: {exc}"
                    ) from exc
            self._extract.append(compiled)

    @property
    def script(self) -> EngineScript:
        return self._script

    async def respond(self, request: ResponseRequest) -> list[Say | CallTool]:
        """The script's answer to ``request`` (see the class docstring)."""
        return self.answer(request)

    def answer(self, request: ResponseRequest) -> list[Say | CallTool]:
        """The synchronous form of :meth:`respond`."""
        fixed = parse_say_instruction(request.response_instructions)
        if fixed is not None:
            return [Say(fixed)]
        turns = request.turns
        index = self._last_relevant(turns, len(turns))
        if index is None:
            return [Say(self._script.greeting)]
        turn = turns[index]
        if turn.role == "function_call_output":
            return [Say(self._after_tool(turns, index))]
        if turn.role == "function_call":
            return []
        rule_index = self._match(self._input(turn))
        if rule_index is None:
            return [Say(self._script.fallback)]
        rule = self._script.rules[rule_index]
        if rule.say is not None:
            return [Say(rule.say)]
        assert rule.call is not None  # ScriptRule guarantees exactly one of say / call
        if rule.call not in tool_names(request.tools):
            _log.info("scripted call of an undeclared tool", tool=rule.call)
            return [Say(self._script.fallback)]
        return [CallTool(rule.call, self._arguments(rule_index, turn.text, request.tools))]

    # -- conversation -------------------------------------------------------------------------------------

    @staticmethod
    def _input(turn: Turn) -> _Input:
        return _Input(text=turn.text, keys=dtmf_keys(turn.text))

    @staticmethod
    def _last_relevant(turns: Sequence[Turn], end: int) -> int | None:
        """Index of the last turn before ``end`` that a response answers (see the class docstring)."""
        for index in range(end - 1, -1, -1):
            turn = turns[index]
            if turn.role == "assistant":
                continue
            if turn.role == "system" and dtmf_keys(turn.text) is None:
                continue
            return index
        return None

    def _match(self, caller: _Input) -> int | None:
        """Index of the first rule that fires on the caller's input."""
        if caller.keys is not None:
            for index, rule in enumerate(self._script.rules):
                if rule.dtmf is not None and _same_keys(caller.keys, rule.dtmf):
                    return index
            return None
        words = normalize_words(caller.text)
        if not words:
            return None
        for index, rule in enumerate(self._script.rules):
            if any(_contains_phrase(words, phrase) for phrase in rule.match):
                return index
        return None

    def _arguments(self, rule_index: int, text: str, tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        rule = self._script.rules[rule_index]
        arguments: dict[str, Any] = copy.deepcopy(rule.arguments)
        schema_types = _tool_parameter_types(tools, rule.call or "")
        spoken = numbers_to_digits(text)
        for argument, pattern in self._extract[rule_index].items():
            raw = _search(pattern, text)
            if raw is None and spoken != text:
                raw = _search(pattern, spoken)
            if raw is None:
                continue
            value = _convert(raw, arguments.get(argument), schema_types.get(argument))
            if value is not None:
                arguments[argument] = value
        return arguments

    def _after_tool(self, turns: Sequence[Turn], output_index: int) -> str:
        """``say_after`` for the ``function_call_output`` at ``output_index``, or ``after_tool``."""
        output = turns[output_index]
        call_index = next(
            (
                i
                for i in range(output_index - 1, -1, -1)
                if turns[i].role == "function_call" and output.call_id and turns[i].call_id == output.call_id
            ),
            None,
        )
        if call_index is None:
            return self._script.after_tool
        call = turns[call_index]
        rule = self._rule_for_call(turns, call_index)
        if rule is None or rule.say_after is None:
            return self._script.after_tool
        fields: dict[str, Any] = dict(_json_object(call.arguments) or {})
        try:
            result = json.loads(output.text)
        except ValueError:
            result = output.text
        if isinstance(result, dict):
            fields.update(result)
        else:
            fields["output"] = result
        try:
            return rule.say_after.format_map(fields)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
            _log.info("say_after could not be formatted", tool=call.name, error=repr(exc))
            return self._script.after_tool

    def _rule_for_call(self, turns: Sequence[Turn], call_index: int) -> ScriptRule | None:
        """The rule that made the call: the one the caller's input before it fires, if it calls the same
        tool, else the first rule that calls that tool."""
        name = turns[call_index].name
        before = self._last_relevant(turns, call_index)
        if before is not None and turns[before].role in ("user", "system"):
            index = self._match(self._input(turns[before]))
            if index is not None and self._script.rules[index].call == name:
                return self._script.rules[index]
        return next((rule for rule in self._script.rules if rule.call == name), None)


def _search(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.search(text)
    if found is None:
        return None
    value = found.group(1) if pattern.groups else found.group(0)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _convert(raw: str, default: Any, schema_type: str | None) -> Any:
    """``raw`` as the default's type (or the schema's): ``int`` / ``float`` for numbers, else the text.

    ``None`` when a number was wanted and ``raw`` is none (the default then stays).
    """
    want_int = isinstance(default, int) and not isinstance(default, bool)
    want_int = want_int or (default is None and schema_type == "integer")
    want_float = isinstance(default, float) or (default is None and schema_type == "number")
    if want_int:
        cleaned = raw.replace(",", "")
        if re.fullmatch(r"[+-]?\d+", cleaned):
            return int(cleaned)
        return _words_to_int(raw)
    if want_float:
        try:
            return float(raw.replace(",", ""))
        except ValueError:
            spoken = _words_to_int(raw)
            return float(spoken) if spoken is not None else None
    return raw


# --------------------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------------------


def __getattr__(name: str) -> Any:
    """Lazy re-export of :class:`~voice.engine.chat.ChatCompletionsResponder` (it imports this module)."""
    if name == "ChatCompletionsResponder":
        from voice.engine.chat import ChatCompletionsResponder

        return ChatCompletionsResponder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_responder(settings: Settings, profile: AgentProfile) -> Responder:
    """Chat mode when ``settings.engine.chat_url`` is set, else the profile's script."""
    engine = settings.engine
    if engine.chat_url:
        from voice.engine.chat import ChatCompletionsResponder

        api_key = engine.chat_api_key.get_secret_value() if engine.chat_api_key is not None else None
        return ChatCompletionsResponder(
            engine.chat_url,
            engine.chat_model,
            api_key=api_key,
            timeout_s=engine.chat_timeout_s,
            fallback=profile.engine.fallback,
        )
    return ScriptedResponder(profile.engine)
