"""DTMF policy (DESIGN.md "DTMF", protocols.md §D.1): each key, collect until terminator/timeout, barge-in."""

from __future__ import annotations

import pytest

from voice.call.core import ClearLeg, Metric
from voice.call.dtmf_policy import DtmfCollector, DtmfForward
from voice.profiles import DtmfPolicy

from .test_core import (
    Sim,
    audio_delta,
    audio_done,
    event,
    only,
    profile,
    response_created,
    response_done,
    tone,
    transcript_done,
)

# The collector on its own ---------------------------------------------------------------------------------


def test_each_mode_forwards_every_key() -> None:
    collector = DtmfCollector(DtmfPolicy(mode="each"))
    assert collector.press("5", 100) == [DtmfForward("Caller pressed 5", "5", 100, "key")]
    assert collector.press("#", 200) == [DtmfForward("Caller pressed #", "#", 200, "key")]
    assert collector.tick(10_000) == [] and collector.flush() == []


def test_collect_mode_until_terminator() -> None:
    collector = DtmfCollector(DtmfPolicy(mode="collect", terminator="#", timeout_ms=3000))
    assert [collector.press(d, t) for d, t in (("1", 0), ("2", 300), ("3", 600), ("4", 900))] == [[]] * 4
    assert collector.pending == "1234" and collector.deadline_ms() == 3900
    assert collector.press("#", 1200) == [DtmfForward("Caller entered 1234", "1234", 0, "terminator")]
    assert collector.pending == "" and collector.deadline_ms() is None


def test_collect_mode_timeout_counts_from_the_last_key() -> None:
    collector = DtmfCollector(DtmfPolicy(mode="collect", timeout_ms=2000))
    collector.press("9", 1000)
    collector.press("8", 2500)
    assert collector.tick(4499) == []
    assert collector.tick(4500) == [DtmfForward("Caller entered 98", "98", 1000, "timeout")]
    assert collector.tick(9000) == []


def test_collect_mode_lone_terminator_and_flush() -> None:
    collector = DtmfCollector(DtmfPolicy(mode="collect"))
    assert collector.press("#", 0) == [DtmfForward("Caller pressed #", "#", 0, "terminator")]
    collector.press("7", 10)
    assert collector.flush() == [DtmfForward("Caller entered 7", "7", 10, "flush")]


def test_collector_refuses_non_keys() -> None:
    with pytest.raises(ValueError):
        DtmfCollector(DtmfPolicy()).press("x", 0)


# Through the call core ------------------------------------------------------------------------------------


def user_texts(sim: Sim) -> list[str]:
    return [
        e["item"]["content"][0]["text"]
        for e in sim.upstream("conversation.item.create")
        if e["item"].get("role") == "user"
    ]


def test_each_key_becomes_a_user_message_and_a_response() -> None:
    sim = Sim(profile=profile(turn_detection={"create_response": False}))
    sim.now = 700
    sim.dtmf("5")
    item = only(sim.upstream("conversation.item.create"))["item"]
    assert item["type"] == "message" and item["role"] == "user"
    assert item["content"] == [{"type": "input_text", "text": "Caller pressed 5"}]
    assert item["id"].startswith("item_")
    assert len(sim.upstream("response.create")) == 1
    entry = only(sim.entries("dtmf"))
    assert (entry.text, entry.t_ms, entry.data["direction"]) == ("5", 700, "in")


def test_collect_sends_one_item_at_the_terminator() -> None:
    sim = Sim(profile=profile(dtmf=DtmfPolicy(mode="collect", terminator="#", timeout_ms=3000)))
    for digit in "1234":
        sim.dtmf(digit)
        sim.run(200)
    assert user_texts(sim) == [] and sim.upstream("response.create") == []
    sim.dtmf("#")
    assert user_texts(sim) == ["Caller entered 1234"]
    assert len(sim.upstream("response.create")) == 1
    assert only(sim.entries("dtmf")).data["digits"] == "1234"


def test_collect_times_out_on_the_pacer_clock() -> None:
    sim = Sim(profile=profile(dtmf=DtmfPolicy(mode="collect", timeout_ms=1000)))
    sim.dtmf("4")
    sim.run(200)
    sim.dtmf("2")  # at 200 ms
    sim.run(980)  # ticks up to 1180 ms
    assert user_texts(sim) == []
    sim.run(40)  # the tick at 1200 ms
    assert user_texts(sim) == ["Caller entered 42"]
    sent_at = next(t for t, a in sim.log if getattr(a, "kind", None) == "dtmf")
    assert sent_at == 1200


def test_key_barges_in_while_the_agent_talks_and_cancels() -> None:
    sim = Sim()  # upstream_interrupts: the server only cancels on speech, not keys
    sim.up(
        response_created(),
        transcript_done("item_a", "Press one for bookings"),
        audio_delta("item_a", tone(3000)),
    )
    sim.run(640)
    actions = sim.dtmf("1")
    assert isinstance(actions[0], ClearLeg)
    types = [e["type"] for e in sim.upstream("conversation.item.truncate") + sim.upstream("response.cancel")]
    assert types == ["conversation.item.truncate", "response.cancel"]
    assert only(sim.upstream("conversation.item.truncate"))["audio_end_ms"] == 640
    assert only(sim.entries("barge_in")).data["cause"] == "dtmf"
    assert only(sim.entries("agent")).data["interrupted"] is True
    assert user_texts(sim) == ["Caller pressed 1"]
    assert sim.upstream("response.create") == []  # the cancelled response is still active
    sim.up(response_done(status="cancelled"))
    assert len(sim.upstream("response.create")) == 1
    sim.run(200)
    assert len(sim.frames()) == 32  # nothing after the key


def test_key_without_barge_in_lets_the_agent_finish() -> None:
    sim = Sim(profile=profile(dtmf=DtmfPolicy(barge_in=False)))
    sim.up(response_created(), audio_delta("item_a", tone(200)), audio_done("item_a"), response_done())
    sim.run(100)
    sim.dtmf("3")
    assert sim.all(ClearLeg) == []
    assert len(sim.upstream("response.create")) == 1  # no response is active: at once
    sim.run(200)
    assert len(sim.frames()) == 10


def test_sip_dtmf_event_from_the_upstream_takes_the_same_path() -> None:
    sim = Sim()
    sim.up(event("input_audio_buffer.dtmf_event_received", event="9", received_at=1750287078))
    assert user_texts(sim) == ["Caller pressed 9"]


@pytest.mark.parametrize("digit", ["x", "", "12", "E"])
def test_invalid_keys_are_counted_and_ignored(digit: str) -> None:
    sim = Sim()
    assert sim.dtmf(digit) == [Metric("dtmf.invalid_digit")]


def test_end_flushes_collected_keys_into_the_transcript() -> None:
    sim = Sim(profile=profile(dtmf=DtmfPolicy(mode="collect")))
    sim.dtmf("1")
    sim.dtmf("2")
    sim.end()
    assert only(sim.entries("dtmf")).data == {"digits": "12", "direction": "in", "why": "flush"}


def test_key_during_paused_playout_barges_in() -> None:
    sim = Sim()
    sim.up(response_created(), audio_delta("item_a", tone(1000)), audio_done("item_a"))
    sim.run(200)
    sim.core.playout.paused = True
    sim.core.window.start(sim.now)
    sim.dtmf("0")
    assert sim.all(ClearLeg) and not sim.core.paused and not sim.core.window.active
