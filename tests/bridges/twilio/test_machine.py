"""Answering-machine policy and the busy prompt (bridges/twilio/machine.py, busy.py; protocols.md §E.5)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from pydantic import ValidationError

from bridges.twilio.busy import BUSY_TONE_HZ, busy_prompt, busy_tone, busy_twiml
from bridges.twilio.machine import (
    GREETING_ENDED,
    MACHINE_RESULTS,
    MachineAction,
    machine_action,
    machine_plan,
    voicemail_note,
)
from bridges.twilio.settings import DEFAULT_BUSY_MESSAGE, TwilioSettings
from tests.conftest import REPO
from voice.audio.g711 import ulaw_decode
from voice.profiles import AgentProfile, AnsweringMachine, load_profile

POLICIES: tuple[MachineAction, ...] = ("leave_message", "hangup", "talk")


@pytest.mark.parametrize("answered_by", sorted(MACHINE_RESULTS - {"fax"}))
@pytest.mark.parametrize("policy", POLICIES)
def test_a_machine_follows_the_policy(answered_by: str, policy: MachineAction) -> None:
    assert machine_action(answered_by, policy) == policy


@pytest.mark.parametrize("answered_by", ["human", "unknown", None, "something_new"])
@pytest.mark.parametrize("policy", POLICIES)
def test_a_person_or_no_result_is_talked_to(answered_by: str | None, policy: MachineAction) -> None:
    assert machine_action(answered_by, policy) == "talk"
    assert machine_plan(answered_by, policy).note is None


@pytest.mark.parametrize("policy", POLICIES)
def test_a_fax_is_always_hung_up(policy: MachineAction) -> None:
    assert machine_plan("fax", policy).action == "hangup"


def test_leave_message_after_the_greeting_responds_at_once() -> None:
    for answered_by in sorted(GREETING_ENDED):
        plan = machine_plan(answered_by, "leave_message", message="Call Luigi back.")
        assert plan.action == "leave_message" and plan.respond
        assert plan.note is not None and "voicemail" in plan.note and "leave your message now" in plan.note
        assert "end_call" in plan.note and plan.note.endswith("The message to leave: Call Luigi back.")


def test_leave_message_during_the_greeting_waits_for_the_caller_turn_to_end() -> None:
    plan = machine_plan("machine_start", "leave_message")
    assert plan.action == "leave_message" and not plan.respond
    assert plan.note == voicemail_note("machine_start") and "after the beep" in plan.note
    assert "The message to leave" not in plan.note
    # Without server VAD creating responses nothing else would make the agent speak: respond at once.
    assert machine_plan("machine_start", "leave_message", auto_turns=False).respond


def test_hangup_and_talk_plans_carry_no_note() -> None:
    assert machine_plan("machine_end_beep", "hangup").note is None
    assert machine_plan("machine_end_beep", "talk").note is None


def test_profile_and_settings_policy_fields() -> None:
    restaurant = load_profile("restaurant", REPO / "prompts")
    assert restaurant.answering_machine is not None
    assert restaurant.answering_machine.policy == "leave_message"
    assert AgentProfile(name="plain").answering_machine is None  # the service's policy applies
    assert AnsweringMachine().policy == "leave_message"
    with pytest.raises(ValidationError):
        AnsweringMachine.model_validate({"policy": "voicemail"})
    with pytest.raises(ValidationError):
        AnsweringMachine.model_validate({"max_message_s": 0})
    assert TwilioSettings().machine_policy == "talk"
    assert TwilioSettings(machine_policy="continue").machine_policy == "talk"  # the old name still works
    with pytest.raises(ValidationError):
        TwilioSettings(machine_policy="maybe")


def test_busy_twiml_says_the_message_then_hangs_up() -> None:
    root = ET.fromstring(busy_twiml(DEFAULT_BUSY_MESSAGE))
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root[0].text == DEFAULT_BUSY_MESSAGE


def level(ulaw: bytes) -> float:
    pcm = np.frombuffer(ulaw_decode(ulaw), dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(pcm * pcm)))


def test_busy_prompt_is_spoken_mulaw_in_whole_frames() -> None:
    prompt = busy_prompt(DEFAULT_BUSY_MESSAGE)
    assert len(prompt) % 160 == 0
    assert 2.0 < len(prompt) / 8000 < 8.0  # a short sentence
    assert level(prompt) > 300  # speech, not silence
    assert busy_prompt(DEFAULT_BUSY_MESSAGE) is prompt  # rendered once


def test_busy_tone_is_480_and_620_hz_half_a_second_on_and_off() -> None:
    tone = busy_tone(cycles=2)
    assert len(tone) == 2 * 8000
    pcm = np.frombuffer(ulaw_decode(tone[:4000]), dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm))
    freqs = np.fft.rfftfreq(len(pcm), 1 / 8000)
    peaks = sorted(freqs[np.argsort(spectrum)[-2:]])
    assert peaks == pytest.approx(list(BUSY_TONE_HZ), abs=2.0)
    assert set(tone[4000:8000]) == {0xFF}  # the off half: µ-law silence


def test_busy_prompt_falls_back_to_the_tone_without_speech(monkeypatch: pytest.MonkeyPatch) -> None:
    import voice.engine.tts as tts

    class Broken:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise OSError("no libespeak-ng here")

    monkeypatch.setattr(tts, "Synthesizer", Broken)
    assert busy_prompt("A message nobody can synthesize.") == busy_tone()
