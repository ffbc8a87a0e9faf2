"""The playout queue and clock on its own (voice/call/playout.py; protocols.md §A.3, §C)."""

from __future__ import annotations

import pytest

from bridges.base import AudioCodec, frame_bytes, silence_frame
from voice.call.playout import Frame, PlayedItem, Playout


def audio(ms: int, codec: AudioCodec = "pcmu", byte: int = 0x11) -> bytes:
    return bytes([byte]) * (ms * frame_bytes(codec) // 20)


def drain(p: Playout, start: int = 0, ticks: int = 100) -> tuple[list[Frame], list[PlayedItem]]:
    frames: list[Frame] = []
    closed: list[PlayedItem] = []
    for i in range(ticks):
        frame, done = p.next_frame(start + 20 * i)
        closed += done
        if frame is not None:
            frames.append(frame)
    return frames, closed


def test_frames_carry_item_position_at_frame_end() -> None:
    p = Playout("pcmu", reports_playback=False)
    assert p.add_audio("a", "r", 0, audio(60))
    p.audio_done("a")
    frames, closed = drain(p)
    assert [(f.item_id, f.item_ms, f.padded) for f in frames] == [
        ("a", 20, False),
        ("a", 40, False),
        ("a", 60, False),
    ]
    assert closed == [PlayedItem("a", "r", 0, 60, 60, 60, 0, False)]
    assert p.drained and not p.speaking


@pytest.mark.parametrize("codec", ["pcmu", "pcma", "pcm16_24k"])
def test_final_partial_frame_is_padded_and_not_counted(codec: AudioCodec) -> None:
    p = Playout(codec, reports_playback=False)
    p.add_audio("a", "r", 0, audio(30, codec))
    p.response_done("r")
    frames, closed = drain(p)
    assert [f.item_ms for f in frames] == [20, 30]
    assert frames[1].padded and len(frames[1].audio) == frame_bytes(codec)
    half = len(audio(10, codec))
    assert frames[1].audio[half:] == silence_frame(codec)[half:]
    assert closed[0].sent_ms == 30


def test_underrun_waits_for_a_whole_frame_unless_final() -> None:
    p = Playout("pcmu", reports_playback=False)
    p.add_audio("a", "r", 0, audio(10))
    assert p.next_frame(0) == (None, [])
    p.add_audio("a", "r", 0, audio(10))
    frame, _ = p.next_frame(20)
    assert frame is not None and not frame.padded and frame.item_ms == 20


def test_paused_playout_plays_nothing_and_loses_nothing() -> None:
    p = Playout("pcmu", reports_playback=False)
    p.add_audio("a", "r", 0, audio(100))
    p.next_frame(0)
    p.paused = True
    assert p.next_frame(20) == (None, [])
    p.paused = False
    frame, _ = p.next_frame(40)
    assert frame is not None and frame.item_ms == 40


def test_interrupt_reports_heard_per_item_and_drops_late_audio() -> None:
    p = Playout("pcmu", reports_playback=False)
    p.add_audio("pre", "r1", 0, audio(40))
    p.audio_done("pre")
    p.add_audio("ans", "r1", 0, audio(400))
    drain(p, ticks=4)  # pre (40 ms) + 40 ms of ans
    cut = p.interrupt()
    assert [(c.item_id, c.heard_ms, c.sent_ms, c.received_ms, c.interrupted) for c in cut] == [
        ("ans", 40, 40, 400, True)
    ]
    assert p.drained
    assert not p.add_audio("ans", "r1", 0, audio(20))  # closed item
    assert not p.add_audio("new", "r1", 0, audio(20))  # same (cancelled) response
    assert p.add_audio("next", "r2", 0, audio(20))


def test_reporting_leg_heard_is_the_report_capped_at_sent() -> None:
    p = Playout("pcmu", reports_playback=True)
    p.add_audio("a", "r", 0, audio(200))
    drain(p, ticks=5)
    assert p.heard_ms("a") == 0
    p.report("a", 40)
    assert p.heard_ms("a") == 40
    p.report("a", 20)  # reports never go backwards
    assert p.heard_ms("a") == 40
    p.report("a", 10_000)
    assert p.heard_ms("a") == 100 == p.sent_ms("a")
    assert p.report("unknown", 5) == [] and p.report("a", -1) == []


def test_reporting_leg_closes_on_last_report_later_item_or_grace() -> None:
    p = Playout("pcmu", reports_playback=True, grace_ms=300)
    for item in ("a", "b", "c"):
        p.add_audio(item, "r", 0, audio(20))
        p.audio_done(item)
    frames, closed = drain(p, ticks=4)
    assert [f.item_id for f in frames] == ["a", "b", "c"] and closed == []
    assert [c.item_id for c in p.report("a", 20)] == ["a"]  # its own last report
    assert [c.item_id for c in p.report("c", 10)] == ["b"]  # c playing: b was heard
    assert p.expire(40 + 299) == []
    assert [c.item_id for c in p.expire(40 + 300)] == ["c"]
    assert p.drained


def test_playing_item_is_the_oldest_started_one() -> None:
    p = Playout("pcmu", reports_playback=True)
    p.add_audio("a", "r", 0, audio(20))
    p.audio_done("a")
    p.add_audio("b", "r", 0, audio(100))
    assert p.playing_item() is None
    drain(p, ticks=2)
    assert p.playing_item() == "a"  # sent but not reported heard yet: still what the caller hears
    p.report("b", 20)
    assert p.playing_item() == "b"


def test_audio_after_done_is_ignored() -> None:
    p = Playout("pcmu", reports_playback=False)
    p.add_audio("a", "r", 0, audio(20))
    p.audio_done("a")
    assert not p.add_audio("a", "r", 0, audio(20))
    assert p.has_audio_to_play and p.knows("a") and not p.is_closed("a")
