"""The SIPp caller scenario of ``voice bench sip``'s end-to-end capacity run."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from voice.bench.sip import KEY_EVERY_MS, KEY_FIRST_MS, e2e_scenario


@pytest.mark.parametrize("hold_ms", [3000, 9000, 21000])
def test_calls_last_at_least_the_hold_and_keys_follow_the_agent_turns(hold_ms: int) -> None:
    root = ET.fromstring(e2e_scenario(hold_ms).encode("iso-8859-1"))
    steps = list(root)
    start = next(i for i, e in enumerate(steps) if e.find("action/exec[@rtp_stream]") is not None)
    end = next(i for i, e in enumerate(steps) if e.tag == "send" and "BYE" in (e.text or ""))
    shortest = longest = 0
    keys = 0
    for step in steps[start + 1 : end]:
        if step.tag == "pause":
            if "milliseconds" in step.attrib:
                shortest += int(step.attrib["milliseconds"])
                longest += int(step.attrib["milliseconds"])
            else:
                shortest += int(step.attrib["min"])
                longest += int(step.attrib["max"])
        elif step.find("action/exec[@play_dtmf]") is not None:
            keys += 1
    assert shortest >= hold_ms  # the call is still up when the bench's window ends
    assert longest <= hold_ms + 400 * keys + 400
    expected = 0 if hold_ms <= KEY_FIRST_MS + 200 else 1 + (hold_ms - KEY_FIRST_MS) // KEY_EVERY_MS
    assert abs(keys - expected) <= 1


def test_the_offer_has_pcmu_and_the_play_dtmf_event_type() -> None:
    text = e2e_scenario(10000)
    assert "m=audio [media_port] RTP/AVP 0 96" in text
    assert "a=rtpmap:96 telephone-event/8000" in text
