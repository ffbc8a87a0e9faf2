"""ScriptedResponder: the restaurant agent's script end to end, DTMF notes, tool gating, fixed text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from voice.config import EngineSettings, Settings
from voice.engine.chat import ChatCompletionsResponder
from voice.engine.responder import (
    CallTool,
    Responder,
    ResponseRequest,
    Say,
    ScriptedResponder,
    Turn,
    dtmf_keys,
    make_responder,
    normalize_words,
    numbers_to_digits,
    parse_say_instruction,
    tool_names,
)
from voice.errors import ConfigError
from voice.profiles import AgentProfile, EngineScript, ScriptRule, load_profile

PROMPTS = Path(__file__).resolve().parents[2] / "prompts"
BOOKED = "You're booked: a table for {party_size} at {time}. Your confirmation code is {confirmation}."


@pytest.fixture(scope="module")
def profile() -> AgentProfile:
    return load_profile("restaurant", PROMPTS)


@pytest.fixture(scope="module")
def tools(profile: AgentProfile) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = profile.session_config()["tools"]
    return tools


@pytest.fixture
def responder(profile: AgentProfile) -> ScriptedResponder:
    return ScriptedResponder(profile.engine)


def request(
    tools: list[dict[str, Any]], *turns: Turn, response_instructions: str | None = None
) -> ResponseRequest:
    return ResponseRequest(
        instructions="You answer the phone for Luigi's Trattoria.",
        tools=tools,
        turns=list(turns),
        response_instructions=response_instructions,
    )


def user(text: str) -> Turn:
    return Turn(role="user", text=text)


# -- the restaurant script, end to end ---------------------------------------------------------------------


async def test_greeting_when_only_instructions(
    responder: ScriptedResponder, profile: AgentProfile, tools: list[dict[str, Any]]
) -> None:
    assert await responder.respond(request(tools)) == [Say(profile.engine.greeting)]
    assert profile.engine.greeting.startswith("Thank you for calling Luigi's Trattoria")


async def test_greeting_ignores_context_notes_and_earlier_greetings(
    responder: ScriptedResponder, profile: AgentProfile, tools: list[dict[str, Any]]
) -> None:
    turns = [Turn(role="system", text="The caller's number is +15550100."), Turn(role="assistant", text="Hi")]
    assert await responder.respond(request(tools, *turns)) == [Say(profile.engine.greeting)]


async def test_opening_hours(responder: ScriptedResponder, tools: list[dict[str, Any]]) -> None:
    actions = await responder.respond(request(tools, user("what are your opening hours")))
    assert actions == [
        Say("We are open Tuesday to Sunday, from noon to ten in the evening. We are closed on Mondays.")
    ]


async def test_booking_flow_end_to_end(
    responder: ScriptedResponder, profile: AgentProfile, tools: list[dict[str, Any]]
) -> None:
    conversation = [
        Turn(role="assistant", text=profile.engine.greeting),
        user("I'd like to book a table for 4 people at 7 pm, my name is Anna"),
    ]
    actions = await responder.respond(request(tools, *conversation))
    assert actions == [CallTool("book_table", {"party_size": 4, "time": "7 pm", "name": "Anna"})]

    call = actions[0]
    assert isinstance(call, CallTool)
    conversation += [
        Turn(role="function_call", name=call.name, call_id="call_abc", arguments=json.dumps(call.arguments)),
        Turn(role="function_call_output", call_id="call_abc", text='{"confirmation":"LT-1234"}'),
    ]
    actions = await responder.respond(request(tools, *conversation))
    assert actions == [Say("You're booked: a table for 4 at 7 pm. Your confirmation code is LT-1234.")]
    said = actions[0]
    assert isinstance(said, Say)
    assert "LT-1234" in said.text and "4" in said.text


async def test_booking_with_spoken_numbers(responder: ScriptedResponder, tools: list[dict[str, Any]]) -> None:
    actions = await responder.respond(
        request(tools, user("Can I book a table for four people at seven thirty p.m.? My name is Marco."))
    )
    assert actions == [CallTool("book_table", {"party_size": 4, "time": "7:30 p.m", "name": "Marco"})]


async def test_booking_without_details_uses_the_defaults(
    responder: ScriptedResponder, tools: list[dict[str, Any]]
) -> None:
    actions = await responder.respond(request(tools, user("I want to make a reservation.")))
    assert actions == [CallTool("book_table", {"party_size": 2, "time": "19:00", "name": "guest"})]


async def test_dtmf_zero_transfers(responder: ScriptedResponder, tools: list[dict[str, Any]]) -> None:
    actions = await responder.respond(request(tools, user("Caller pressed 0")))
    assert actions == [CallTool("transfer_call", {"reason": "caller pressed 0"})]


async def test_dtmf_as_system_note_with_terminator(
    responder: ScriptedResponder, tools: list[dict[str, Any]]
) -> None:
    hours = await responder.respond(request(tools, Turn(role="system", text="DTMF: 2#")))
    assert hours == [
        Say("We are open Tuesday to Sunday, from noon to ten in the evening. We are closed on Mondays.")
    ]
    booking = await responder.respond(request(tools, Turn(role="system", text="Caller pressed 1.")))
    assert booking == [CallTool("book_table", {"party_size": 2, "time": "19:00", "name": "guest"})]


async def test_dtmf_key_without_rule_is_fallback(
    responder: ScriptedResponder, profile: AgentProfile, tools: list[dict[str, Any]]
) -> None:
    assert await responder.respond(request(tools, user("Caller pressed 9"))) == [Say(profile.engine.fallback)]
    # keys are matched exactly: "10" is not "1"
    assert await responder.respond(request(tools, user("DTMF: 10#"))) == [Say(profile.engine.fallback)]


async def test_undeclared_tool_says_fallback(
    responder: ScriptedResponder, profile: AgentProfile, tools: list[dict[str, Any]]
) -> None:
    without_booking = [t for t in tools if t["name"] != "book_table"]
    actions = await responder.respond(request(without_booking, user("book a table for 2 people")))
    assert actions == [Say(profile.engine.fallback)]
    assert await responder.respond(request([], user("Caller pressed 0"))) == [Say(profile.engine.fallback)]


@pytest.mark.parametrize(
    ("instructions", "expected"),
    [
        ("Say: sorry, our booking system is down.", "sorry, our booking system is down."),
        ('Say exactly: "Sorry, one moment please."', "Sorry, one moment please."),
        ("SAY EXACTLY:   Goodbye!  ", "Goodbye!"),
        ("say:Please hold.", "Please hold."),
    ],
)
async def test_say_instructions_speak_fixed_text(
    responder: ScriptedResponder, tools: list[dict[str, Any]], instructions: str, expected: str
) -> None:
    actions = await responder.respond(
        request(tools, user("what are your opening hours"), response_instructions=instructions)
    )
    assert actions == [Say(expected)]


async def test_other_response_instructions_are_ignored(
    responder: ScriptedResponder, profile: AgentProfile, tools: list[dict[str, Any]]
) -> None:
    actions = await responder.respond(request(tools, response_instructions="Be brief and say hello warmly."))
    assert actions == [Say(profile.engine.greeting)]


async def test_empty_transcript_and_unmatched_words_are_fallback(
    responder: ScriptedResponder, profile: AgentProfile, tools: list[dict[str, Any]]
) -> None:
    assert await responder.respond(request(tools, user(""))) == [Say(profile.engine.fallback)]
    assert await responder.respond(request(tools, user("..."))) == [Say(profile.engine.fallback)]
    assert await responder.respond(request(tools, user("Do you serve pizza?"))) == [
        Say(profile.engine.fallback)
    ]


async def test_matching_is_on_whole_words(
    responder: ScriptedResponder, profile: AgentProfile, tools: list[dict[str, Any]]
) -> None:
    # "reopened" contains "open", "bookshop" contains "book": neither is the word
    actions = await responder.respond(request(tools, user("The bookshop reopened.")))
    assert actions == [Say(profile.engine.fallback)]
    actions = await responder.respond(request(tools, user("WHERE ARE YOU?!")))
    assert actions == [Say("We are at twelve Harbour Street, next to the ferry terminal.")]
    actions = await responder.respond(request(tools, user("No, that’s all.")))  # typographic apostrophe
    assert actions == [CallTool("end_call", {})]


async def test_assistant_turns_do_not_hide_the_last_input(
    responder: ScriptedResponder, tools: list[dict[str, Any]]
) -> None:
    turns = [user("Are you open on Mondays?"), Turn(role="assistant", text="We are open...")]
    actions = await responder.respond(request(tools, *turns))
    assert actions == [
        Say("We are open Tuesday to Sunday, from noon to ten in the evening. We are closed on Mondays.")
    ]


async def test_pending_function_call_gives_an_empty_response(
    responder: ScriptedResponder, tools: list[dict[str, Any]]
) -> None:
    turns = [user("Caller pressed 0"), Turn(role="function_call", name="transfer_call", call_id="c1")]
    assert await responder.respond(request(tools, *turns)) == []


# -- after a tool -------------------------------------------------------------------------------------------


def booked(output: str, *, call_id: str = "call_1", arguments: str | None = None) -> list[Turn]:
    args = arguments if arguments is not None else '{"party_size": 4, "time": "7 pm", "name": "Anna"}'
    return [
        user("book a table for 4 people at 7 pm, my name is Anna"),
        Turn(role="function_call", name="book_table", call_id="call_1", arguments=args),
        Turn(role="function_call_output", call_id=call_id, text=output),
    ]


@pytest.mark.parametrize(
    "output",
    [
        "booked",  # not JSON
        '{"error": "no tables left"}',  # JSON without the field say_after needs
        '["LT-1"]',  # JSON, not an object
        "",
    ],
)
async def test_say_after_falls_back_to_after_tool(
    responder: ScriptedResponder, tools: list[dict[str, Any]], output: str
) -> None:
    assert await responder.respond(request(tools, *booked(output))) == [Say("Done.")]


async def test_say_after_for_unknown_call_or_bad_arguments(
    responder: ScriptedResponder, tools: list[dict[str, Any]]
) -> None:
    unknown = booked('{"confirmation": "LT-9"}', call_id="call_other")
    assert await responder.respond(request(tools, *unknown)) == [Say("Done.")]
    # the call's arguments are not JSON: the output alone cannot fill the template
    broken = booked('{"confirmation": "LT-9"}', arguments="{oops")
    assert await responder.respond(request(tools, *broken)) == [Say("Done.")]
    # the output's fields are enough on their own
    full = booked('{"confirmation": "LT-9", "party_size": 3, "time": "8 pm"}', arguments="{oops")
    assert await responder.respond(request(tools, *full)) == [
        Say("You're booked: a table for 3 at 8 pm. Your confirmation code is LT-9.")
    ]


async def test_say_after_of_the_rule_that_made_the_call(
    responder: ScriptedResponder, tools: list[dict[str, Any]]
) -> None:
    turns = [
        user("Caller pressed 0"),
        Turn(
            role="function_call",
            name="transfer_call",
            call_id="t1",
            arguments='{"reason": "caller pressed 0"}',
        ),
        Turn(role="function_call_output", call_id="t1", text='{"ok": true}'),
        Turn(role="assistant", text="Connecting you now."),
    ]
    assert await responder.respond(request(tools, *turns)) == [Say("Connecting you now.")]
    goodbye = [
        user("bye"),
        Turn(role="function_call", name="end_call", call_id="e1", arguments="{}"),
        Turn(role="function_call_output", call_id="e1", text='"ok"'),
    ]
    assert await responder.respond(request(tools, *goodbye)) == [Say("Goodbye, and thank you for calling.")]


async def test_respond_is_deterministic(responder: ScriptedResponder, tools: list[dict[str, Any]]) -> None:
    req = request(tools, user("book a table for 4 people at 7 pm"))
    first = await responder.respond(req)
    assert first == await responder.respond(req) == responder.answer(req)
    assert isinstance(responder, Responder)


# -- custom scripts -----------------------------------------------------------------------------------------


def _tool(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "name": name,
        "description": "",
        "parameters": {"type": "object", "properties": properties},
    }


async def test_extract_converts_by_schema_type_without_a_default() -> None:
    script = EngineScript(
        rules=[
            ScriptRule(
                match=["order"],
                call="order",
                extract={
                    "count": r"order (\w+) pizzas",
                    "price": r"at ([\d.]+) dollars",
                    "size": r"(large|small)",
                },
            )
        ]
    )
    tools = [
        _tool(
            "order", {"count": {"type": "integer"}, "price": {"type": "number"}, "size": {"type": "string"}}
        )
    ]
    actions = await ScriptedResponder(script).respond(
        request(tools, user("I'd like to order three pizzas at 9.50 dollars, large please"))
    )
    assert actions == [CallTool("order", {"count": 3, "price": 9.5, "size": "large"})]


async def test_extract_that_is_not_a_number_keeps_the_default() -> None:
    script = EngineScript(
        rules=[
            ScriptRule(
                match=["order"], call="order", arguments={"count": 1}, extract={"count": r"order (\w+)"}
            )
        ]
    )
    actions = await ScriptedResponder(script).respond(request([_tool("order", {})], user("order pizza")))
    assert actions == [CallTool("order", {"count": 1})]


def test_bad_extract_pattern_is_a_config_error() -> None:
    script = EngineScript(rules=[ScriptRule(match=["x"], call="t", extract={"a": "(unclosed"})])
    with pytest.raises(ConfigError, match="extract"):
        ScriptedResponder(script)


def test_rule_arguments_are_not_shared_between_responses() -> None:
    script = EngineScript(rules=[ScriptRule(match=["go"], call="t", arguments={"opts": {"n": 1}})])
    responder = ScriptedResponder(script)
    first = responder.answer(request([_tool("t", {})], user("go")))
    assert isinstance(first[0], CallTool)
    first[0].arguments["opts"]["n"] = 99
    assert responder.answer(request([_tool("t", {})], user("go"))) == [CallTool("t", {"opts": {"n": 1}})]


# -- helpers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("Caller pressed 5", "5"),
        ("caller pressed 5.", "5"),
        ("The caller pressed the keys 1 2 3#", "123#"),
        ("DTMF: 12#", "12#"),
        ("dtmf 0", "0"),
        ("Keys pressed: *9", "*9"),
        ("Caller pressed a", "A"),
        ("I pressed 5 already but nothing happened", None),
        ("Caller pressed", None),
        ("what are your opening hours", None),
        ("", None),
    ],
)
def test_dtmf_keys(text: str, keys: str | None) -> None:
    assert dtmf_keys(text) == keys


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a table for four people at seven pm", "a table for 4 people at 7 pm"),
        ("seven thirty", "7:30"),
        ("twenty-one guests", "21 guests"),
        ("one hundred and five", "100 and 5"),
        ("three hundred twelve", "312"),
        ("Twelve", "12"),
        ("someone gone", "someone gone"),
        ("two four", "2 4"),
    ],
)
def test_numbers_to_digits(text: str, expected: str) -> None:
    assert numbers_to_digits(text) == expected


@pytest.mark.parametrize(
    ("instructions", "text"),
    [
        ("Say: hi", "hi"),
        ("say exactly: 'hi there'", "hi there"),
        ("Say exactly: “Sorry.”", "Sorry."),
        ("Say:", None),
        ("Say hello to the caller", None),
        ("Please say: hi", None),
        (None, None),
    ],
)
def test_parse_say_instruction(instructions: str | None, text: str | None) -> None:
    assert parse_say_instruction(instructions) == text


def test_normalize_words_and_tool_names() -> None:
    assert normalize_words("  I'd LIKE a_table,   please!! ") == "id like a table please"
    assert tool_names(
        [
            {"type": "function", "name": "a"},
            {"type": "function", "function": {"name": "b"}},
            {"type": "mcp", "server_label": "x"},
        ]
    ) == {"a", "b"}


# -- make_responder -----------------------------------------------------------------------------------------


def test_make_responder_scripted_by_default(profile: AgentProfile) -> None:
    responder = make_responder(Settings(engine=EngineSettings()), profile)
    assert isinstance(responder, ScriptedResponder)
    assert responder.script == profile.engine


def test_make_responder_chat_mode(profile: AgentProfile) -> None:
    settings = Settings(
        engine=EngineSettings(
            chat_url="http://127.0.0.1:9/v1/", chat_model="tiny", chat_api_key="sk-secret", chat_timeout_s=5
        )
    )
    responder = make_responder(settings, profile)
    assert isinstance(responder, ChatCompletionsResponder)
    assert isinstance(responder, Responder)
    assert responder.url == "http://127.0.0.1:9/v1/chat/completions"
    assert responder.model == "tiny"
    assert "sk-secret" not in repr(responder)
