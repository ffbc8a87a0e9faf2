"""Function tools: strict schemas, the registry, built-ins and the round trip through the call core
(DESIGN.md "Tools", protocols.md §A.5 function round trip)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Literal

import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, ConfigDict, Field

from voice.call.agent_tools import AvailabilityQuery, book_table, check_availability, restaurant_registry
from voice.call.core import RunTool
from voice.call.tools import (
    BUILTIN_TOOLS,
    SendDtmfArgs,
    Tool,
    ToolDefinitionError,
    ToolRegistry,
    builtin_definitions,
    parse_builtin_arguments,
    strict_schema,
    tool,
)

from .test_core import (
    Sim,
    audio_delta,
    audio_done,
    function_call,
    item_added,
    only,
    profile,
    response_created,
    response_done,
    speech_started,
    speech_stopped,
    tone,
    transcript_done,
)

# Strict schemas ----------------------------------------------------------------------------------------


def walk(schema: Any) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    if isinstance(schema, dict):
        nodes.append(schema)
        for value in schema.values():
            nodes += walk(value)
    elif isinstance(schema, list):
        for value in schema:
            nodes += walk(value)
    return nodes


def assert_strict(schema: dict[str, Any]) -> None:
    """The structured-output strict rules: object root, every object closed with all properties required,
    no defaults, no unsupported composition keywords."""
    assert schema["type"] == "object" and "anyOf" not in schema
    for node in walk(schema):
        if node.get("type") == "object":
            assert node["additionalProperties"] is False
            assert node["required"] == list(node.get("properties", {}))
        for keyword in ("default", "allOf", "not", "if", "then", "else", "title"):
            assert keyword not in node, (keyword, node)


class Address(BaseModel):
    street: str
    city: str = "Springfield"


class Order(BaseModel):
    """An order."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["pickup", "delivery"]
    items: list[str] = Field(min_length=1)
    address: Address | None = None
    tip: float = Field(0.0, ge=0, description="Tip in dollars")
    shipping: Address = Field(description="Where to ship")


def test_strict_schema_follows_the_rules() -> None:
    schema = strict_schema(Order)
    assert_strict(schema)
    props = schema["properties"]
    assert props["kind"] == {"enum": ["pickup", "delivery"], "type": "string"}
    assert props["address"]["anyOf"][1] == {"type": "null"}  # optional = required but nullable
    assert props["tip"]["description"] == "Tip in dollars (default: 0.0)"
    assert props["tip"]["minimum"] == 0
    shipping = props["shipping"]  # a $ref with a description is inlined
    assert "$ref" not in shipping and shipping["description"] == "Where to ship"
    assert shipping["required"] == ["street", "city"] and shipping["additionalProperties"] is False


def test_strict_schema_agrees_with_the_openai_sdk_on_structure() -> None:
    ours = strict_schema(Order)
    sdk = to_strict_json_schema(Order)
    for node in walk(sdk):
        node.pop("title", None)
        node.pop("default", None)
    assert ours["required"] == sdk["required"]
    assert ours["$defs"]["Address"]["required"] == sdk["$defs"]["Address"]["required"]
    assert set(ours["properties"]) == set(sdk["properties"])


def test_strict_schema_refuses_what_strict_mode_cannot_take() -> None:
    class Root(BaseModel):
        value: int

    with pytest.raises(ToolDefinitionError):
        from pydantic import RootModel

        strict_schema(RootModel[int])
    assert_strict(strict_schema(Root))


# Declaring tools --------------------------------------------------------------------------------------


def test_tool_from_annotated_parameters() -> None:
    @tool(timeout_s=2)
    def lookup(city: str, days: int = 3) -> dict[str, Any]:
        """Look up the weather.

        More details that are not part of the description.
        """
        return {"city": city, "days": days}

    assert isinstance(lookup, Tool)
    assert lookup.name == "lookup" and lookup.description == "Look up the weather." and lookup.timeout_s == 2
    definition = lookup.definition()
    assert definition["type"] == "function" and definition["name"] == "lookup"
    assert definition["parameters"]["required"] == ["city", "days"]
    assert_strict(definition["parameters"])
    assert lookup("Rome") == {"city": "Rome", "days": 3}  # still callable


def test_tool_from_a_model_argument_and_bare_decorator() -> None:
    @tool
    def place(order: Order) -> str:
        return order.kind

    assert place.takes_model and place.arguments is Order
    assert_strict(place.definition()["parameters"])


@pytest.mark.parametrize(
    "make",
    [
        lambda: tool(name="bad name")(lambda x: x),
        lambda: tool(lambda *args: None),
        lambda: tool(lambda x: x),  # no annotation
        lambda: tool(name="ok", timeout_s=0)(book_table.func),
    ],
)
def test_bad_tool_declarations_are_refused(make: Any) -> None:
    with pytest.raises(ToolDefinitionError):
        make()


def test_registry_definitions_builtins_first_and_no_duplicates() -> None:
    registry = restaurant_registry()
    names = [d["name"] for d in registry.definitions()]
    assert names == ["end_call", "transfer_call", "send_dtmf", "book_table", "check_availability"]
    for definition in registry.definitions():
        assert set(definition) == {"type", "name", "description", "parameters"}
        assert definition["description"]
        assert_strict(definition["parameters"])
    with pytest.raises(ToolDefinitionError):
        registry.register(book_table)
    with pytest.raises(ToolDefinitionError):
        registry.register(tool(name="end_call")(book_table.func))
    assert "book_table" in registry and registry.get("nope") is None
    declared: list[dict[str, Any]] = [
        {"type": "function", "name": "book_table", "parameters": {}},
        {"type": "function", "name": "x"},
    ]
    assert [d["name"] for d in registry.session_tools(declared)][-2:] == ["check_availability", "x"]


def test_builtin_definitions() -> None:
    defs = {d["name"]: d for d in builtin_definitions()}
    assert set(defs) == set(BUILTIN_TOOLS)
    transfer = defs["transfer_call"]["parameters"]
    assert transfer["required"] == ["target", "reason"]
    assert transfer["properties"]["target"]["anyOf"][1] == {"type": "null"}
    assert defs["send_dtmf"]["parameters"]["properties"]["digits"]["pattern"] == "^[0-9*#A-D]{1,32}$"
    parsed = parse_builtin_arguments("send_dtmf", {"digits": "1#"})
    assert isinstance(parsed, SendDtmfArgs) and parsed.digits == "1#"
    assert isinstance(parse_builtin_arguments("send_dtmf", {"digits": "1e"}), str)


# Invoking -----------------------------------------------------------------------------------------------


async def test_invoke_returns_results_and_never_raises() -> None:
    registry = restaurant_registry()
    booked = json.loads(
        await registry.invoke("book_table", '{"party_size": 4, "time": "19:30", "name": "Ada"}')
    )
    again = json.loads(await registry.invoke("book_table", {"party_size": 4, "time": "19:30", "name": "ada"}))
    assert booked["confirmation"] == again["confirmation"] and len(booked["confirmation"]) == 6
    monday = json.loads(await registry.invoke("check_availability", '{"date": "2026-11-30"}'))
    assert monday == {"date": "2026-11-30", "available": False, "reason": "closed on Mondays"}
    tuesday = json.loads(await registry.invoke("check_availability", '{"date": "2026-12-01"}'))
    assert tuesday["available"] is True

    errors = [
        await registry.invoke("nope", "{}"),
        await registry.invoke("end_call", "{}"),
        await registry.invoke("book_table", "{nope"),
        await registry.invoke("book_table", "[1]"),
        await registry.invoke("book_table", '{"party_size": 40, "time": "1", "name": "x"}'),
        await registry.invoke("book_table", '{"party_size": 4, "time": "1", "name": "x", "extra": 1}'),
        await registry.invoke("check_availability", '{"date": "not a date"}'),
    ]
    decoded = [json.loads(e) for e in errors]
    assert all("error" in d for d in decoded)
    assert decoded[4]["details"][0]["field"] == "party_size"


async def test_invoke_handles_exceptions_timeouts_and_async_tools() -> None:
    @tool(timeout_s=0.05)
    async def slow() -> str:
        await asyncio.sleep(1)
        return "late"

    @tool(timeout_s=0.05)
    def slow_sync() -> str:
        time.sleep(0.2)
        return "late"

    @tool
    def broken(x: int) -> int:
        raise RuntimeError(f"boom {x}")

    @tool
    async def fine(x: int) -> dict[str, int]:
        return {"double": 2 * x}

    @tool
    def nothing() -> None:
        return None

    @tool
    def model_out(query: AvailabilityQuery) -> AvailabilityQuery:
        return query

    @tool
    def not_json() -> Any:
        return {1, 2}

    registry = ToolRegistry([slow, slow_sync, broken, fine, nothing, model_out, not_json])
    assert "timed out" in json.loads(await registry.invoke("slow", "{}"))["error"]
    assert "timed out" in json.loads(await registry.invoke("slow_sync", ""))["error"]
    assert "RuntimeError: boom 3" in json.loads(await registry.invoke("broken", '{"x": 3}'))["error"]
    assert await registry.invoke("fine", '{"x": 21}') == '{"double": 42}'
    assert await registry.invoke("nothing", "{}") == '{"ok": true}'
    assert json.loads(await registry.invoke("model_out", '{"date": "2026-01-02"}')) == {"date": "2026-01-02"}
    assert await registry.invoke("not_json", "{}") == '"{1, 2}"'  # default=str: text, never an exception


def test_restaurant_tools_are_deterministic() -> None:
    first = book_table.func(party_size=2, time="19:00", name="guest")
    assert first["confirmation"] == book_table.func(party_size=2, time="19:00", name="Guest ")["confirmation"]
    assert first["confirmation"].isalnum() and first["confirmation"].isupper()
    assert check_availability.func(AvailabilityQuery(date="2026-11-23"))["available"] is False  # a Monday


# Round trip through the call core ---------------------------------------------------------------------


async def test_tool_round_trip_through_the_core_with_the_registry() -> None:
    registry = restaurant_registry()
    sim = Sim()
    sim.up(
        response_created(),
        function_call("call_1", "book_table", '{"party_size": 2, "time": "20:00", "name": "Bo"}'),
    )
    run = only(sim.all(RunTool))
    output = await registry.invoke(run.name, run.arguments)
    sim.up(response_done())
    sim.result(run.call_id, output)
    item = only(sim.upstream("conversation.item.create"))["item"]
    assert item["type"] == "function_call_output" and json.loads(item["output"])["confirmation"]
    assert len(sim.upstream("response.create")) == 1
    assert sim.core.pending_tools == {}


def test_tool_result_after_barge_in_is_still_sent_and_answered_once() -> None:
    """The agent says "let me check" and calls a tool; the caller talks over it; the result arrives while the
    caller is still speaking. The output goes up at once; the server's own response to the caller's turn
    (created after our item) answers it, so no second response.create is sent."""
    sim = Sim()
    sim.up(
        response_created("resp_1"),
        transcript_done("item_a", "Let me check that for you."),
        audio_delta("item_a", tone(1500)),
        audio_done("item_a"),
        function_call("call_1", "check_availability", '{"date": "2026-12-24"}'),
        response_done("resp_1"),
    )
    sim.run(400)
    sim.up(speech_started())  # barge-in
    assert only(sim.upstream("conversation.item.truncate"))["audio_end_ms"] == 400
    assert sim.core.pending_tools == {"call_1": "check_availability"}
    sim.run(200)
    sim.result("call_1", '{"available": true}')
    output_item = only(sim.upstream("conversation.item.create"))["item"]
    assert output_item["call_id"] == "call_1"
    assert sim.upstream("response.create") == []  # the caller is mid-turn
    sim.up(
        speech_stopped(), item_added(output_item["id"]), response_created("resp_2"), response_done("resp_2")
    )
    sim.run(2000)
    assert sim.upstream("response.create") == []
    assert [e.kind for e in sim.all_entries()] == ["tool_call", "barge_in", "agent", "tool_result"]


def test_tool_result_after_barge_in_without_server_responses_requests_one() -> None:
    sim = Sim(profile=profile(turn_detection={"create_response": False}))
    sim.up(
        response_created("resp_1"),
        audio_delta("item_a", tone(1000)),
        function_call("call_1", "book_table", "{}"),
    )
    sim.run(200)
    sim.up(speech_started(), response_done("resp_1", status="cancelled"))
    sim.result("call_1", "{}")
    assert len(sim.upstream("response.create")) == 1
