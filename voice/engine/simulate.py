"""Offline cost simulation: play a scripted call through the engine's session core and price its usage.

``python -m voice.engine.simulate "I'd like to book a table for four" "goodbye"`` plays the default agent
(``--agent NAME`` for another): the agent's session configuration (instructions, tools, transcription) is
applied, the agent greets, and each caller line becomes a caller turn, spoken by default (synthesized, so the
caller audio is counted at 1 token per 100 ms; ``--text`` sends typed text instead). The responder answers as
in the engine; a function call gets ``--tool-output NAME=JSON`` (default ``{"status": "ok"}``) and the agent
continues. Every ``response.done`` usage is priced with :mod:`voice.realtime.pricing` (the built-in table plus
``settings.prices`` and the agent's ``prices``), and so is each input transcription, at its model's price.

The token counts follow :mod:`voice.engine.usage` (OpenAI's published audio rates; text estimated), so the
figures are estimates of what the same conversation would cost on the Realtime API, not a bill.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from voice.config import Settings, load_settings
from voice.engine.effects import Respond, Speak, Step, Transcribe
from voice.engine.responder import Responder, make_responder
from voice.engine.session import EngineSession
from voice.engine.tts import Synthesizer
from voice.errors import VoiceError
from voice.profiles import load_profile
from voice.realtime.pricing import (
    CostBreakdown,
    PriceTable,
    decimal_str,
    default_price_table,
    price_transcription,
    price_usage,
    sum_costs,
    with_overrides,
)

__all__ = ["SimulatedResponse", "Simulation", "format_report", "main", "simulate"]

DEFAULT_TOOL_OUTPUT = json.dumps({"status": "ok"})


@dataclass
class SimulatedResponse:
    """One ``response.done`` of the simulated call."""

    caller: str | None
    """The caller line this response answers (``None`` for the greeting)."""
    said: str
    calls: list[str]
    status: str
    usage: dict[str, Any]
    cost: CostBreakdown


@dataclass
class Simulation:
    model: str
    agent: str
    responses: list[SimulatedResponse] = field(default_factory=list)
    transcriptions: list[CostBreakdown] = field(default_factory=list)
    caller_audio_ms: float = 0.0
    agent_audio_ms: float = 0.0

    @property
    def response_cost(self) -> CostBreakdown:
        return sum_costs(r.cost for r in self.responses)

    @property
    def transcription_cost(self) -> CostBreakdown:
        return sum_costs(self.transcriptions)


class _Player:
    """Runs the core's effects synchronously: known transcripts, the responder, the synthesizer."""

    def __init__(self, session: EngineSession, responder: Responder, synthesizer: Synthesizer) -> None:
        self.session = session
        self.responder = responder
        self.synthesizer = synthesizer
        self.transcripts: dict[str, str] = {}
        self.events: list[dict[str, Any]] = []

    async def play(self, step: Step) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        queue = [step]
        while queue:
            current = queue.pop(0)
            out.extend(current.events)
            for effect in current.effects:
                queue.append(await self._run(effect))
        self.events.extend(out)
        return out

    async def _run(self, effect: object) -> Step:
        if isinstance(effect, Transcribe):
            return self.session.on_transcript(
                effect.item_id, effect.content_index, self.transcripts.get(effect.item_id, "")
            )
        if isinstance(effect, Respond):
            actions = await self.responder.respond(effect.request)
            return self.session.on_actions(effect.response_id, actions)
        if isinstance(effect, Speak):
            step = Step()
            for sentence in effect.sentences:
                pcm = self.synthesizer.synthesize(sentence, effect.sample_rate)
                step.extend(self.session.on_speech(effect.response_id, effect.item_id, pcm))
            return step.extend(self.session.on_speech_done(effect.response_id, effect.item_id))
        return Step()  # Cancel: nothing runs in the background here


def _price_table(settings: Settings, profile_prices: Mapping[str, Any]) -> PriceTable:
    return with_overrides(with_overrides(default_price_table(), settings.prices), profile_prices)


async def simulate(
    lines: Sequence[str],
    *,
    settings: Settings,
    agent: str | None = None,
    model: str | None = None,
    spoken: bool = True,
    greeting: bool = True,
    tool_outputs: Mapping[str, str] | None = None,
) -> Simulation:
    """Play ``lines`` as the caller's turns against ``agent`` and price every response (see the module)."""
    name = agent or settings.engine.agent or settings.agent
    profile = load_profile(name, settings.prompts_dir)
    model = model or profile.model
    table = _price_table(settings, profile.prices)
    table.price(model)  # an unknown model fails here, before anything runs
    session = EngineSession(model=model, created_at=0.0, recognition=True)
    synthesizer = Synthesizer(settings.engine.tts_voice, settings.engine.tts_words_per_minute)
    player = _Player(session, make_responder(settings, profile), synthesizer)
    config = profile.session_config()
    config.pop("model", None)
    config["audio"]["input"]["turn_detection"] = None
    result = Simulation(model=model, agent=name)
    await player.play(session.start())
    await player.play(session.handle({"type": "session.update", "session": config}))
    transcription_model = (profile.transcription.model if profile.transcription else None) or "whisper-1"
    outputs = {**(tool_outputs or {})}

    async def respond(caller: str | None) -> None:
        events = await player.play(session.handle({"type": "response.create"}))
        for event in events:
            if event["type"] == "error":
                raise VoiceError(f"the engine refused the simulation: {event['error']['message']}")
        done = next(e for e in events if e["type"] == "response.done")["response"]
        said: list[str] = []
        calls: list[str] = []
        for item in done["output"]:
            if item["type"] == "function_call":
                calls.append(f"{item['name']}({item['arguments']})")
            else:
                said.extend(c.get("transcript") or c.get("text") or "" for c in item["content"])
        result.responses.append(
            SimulatedResponse(caller, " ".join(said), calls, done["status"], done["usage"],
                              price_usage(model, done["usage"], table))
        )  # fmt: skip
        result.agent_audio_ms += sum(
            len(base64.b64decode(e["delta"])) / 48
            for e in events
            if e["type"] == "response.output_audio.delta"
        )
        for item in done["output"]:
            if item["type"] == "function_call":
                output = outputs.get(item["name"], DEFAULT_TOOL_OUTPUT)
                item_event = {"type": "function_call_output", "call_id": item["call_id"], "output": output}
                await player.play(session.handle({"type": "conversation.item.create", "item": item_event}))
        if any(item["type"] == "function_call" for item in done["output"]):
            await respond(caller)

    if greeting:
        await respond(None)
    for line in lines:
        if spoken:
            pcm = synthesizer.synthesize(line, 24000)
            result.caller_audio_ms += len(pcm) / 48
            content = {"type": "input_audio", "audio": base64.b64encode(pcm).decode("ascii")}
        else:
            content = {"type": "input_text", "text": line}
        item = {"type": "message", "role": "user", "content": [content]}
        step = session.handle({"type": "conversation.item.create", "item": item})
        item_id = step.events[0]["item"]["id"]
        player.transcripts[item_id] = line
        events = await player.play(step)
        for event in events:
            if event["type"] == "conversation.item.input_audio_transcription.completed":
                result.transcriptions.append(price_transcription(transcription_model, event["usage"], table))
        await respond(line)
    return result


def format_report(sim: Simulation) -> str:
    """A plain-text table of the simulated call's responses and costs."""
    lines = [f"agent {sim.agent}, model {sim.model}", ""]
    lines.append(f"{'#':>2}  {'input':>6} {'cached':>6} {'output':>6}  {'cost USD':>12}  agent")
    for index, r in enumerate(sim.responses, 1):
        details = r.usage["input_token_details"]
        said = r.said or ", ".join(r.calls) or "(nothing)"
        counts = f"{r.usage['input_tokens']:>6} {details['cached_tokens']:>6} {r.usage['output_tokens']:>6}"
        lines.append(f"{index:>2}  {counts}  {decimal_str(r.cost.total):>12}  {said[:70]}")
    total = sim.response_cost
    minutes = (sim.caller_audio_ms + sim.agent_audio_ms) / 60000
    lines += [
        "",
        f"responses:      {decimal_str(total.total)} USD (input {decimal_str(total.input_cost)}, "
        f"output {decimal_str(total.output_cost)}, cache savings {decimal_str(total.cache_savings)})",
        f"transcription:  {decimal_str(sim.transcription_cost.total)} USD",
        f"total:          {decimal_str(total.total + sim.transcription_cost.total)} USD for "
        f"{minutes:.2f} min of audio (caller {sim.caller_audio_ms / 1000:.1f} s, "
        f"agent {sim.agent_audio_ms / 1000:.1f} s)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m voice.engine.simulate", description="Estimate what a scripted call would cost."
    )
    parser.add_argument("lines", nargs="+", help="the caller's turns, in order")
    parser.add_argument("--agent", help="agent profile (default: the configured agent)")
    parser.add_argument("--model", help="Realtime model to price (default: the agent's)")
    parser.add_argument("--text", action="store_true", help="typed caller turns instead of spoken ones")
    parser.add_argument("--no-greeting", action="store_true", help="skip the agent's greeting")
    parser.add_argument("--tool-output", action="append", default=[], metavar="NAME=JSON")
    args = parser.parse_args(argv)
    outputs = dict(entry.split("=", 1) for entry in args.tool_output if "=" in entry)
    try:
        sim = asyncio.run(
            simulate(
                args.lines,
                settings=load_settings(),
                agent=args.agent,
                model=args.model,
                spoken=not args.text,
                greeting=not args.no_greeting,
                tool_outputs=outputs,
            )
        )
    except VoiceError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 1
    print(format_report(sim))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
