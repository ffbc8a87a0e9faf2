"""BrowserLeg over a Starlette WebSocket driven through a fake ASGI channel (no network)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.websockets import WebSocket

from bridges.base import CallerAudio, CallerDtmf, Leg, LegEvent, LegHangup, PlaybackReport
from bridges.browser import BrowserLeg
from voice.errors import LocalProtocolError


class Channel:
    """The ASGI side of one WebSocket: what the page sends (``inbox``) and what the app sent (``sent``)."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.fail_sends = False
        self.inbox.put_nowait({"type": "websocket.connect"})

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        if self.fail_sends:
            raise OSError("connection reset")
        self.sent.append(message)

    def page_text(self, text: str) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": text})

    def page_json(self, msg: dict[str, Any]) -> None:
        self.page_text(json.dumps(msg))

    def page_bytes(self, data: bytes) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "bytes": data})

    def page_close(self, code: int = 1001) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": code})

    def json_sent(self) -> list[dict[str, Any]]:
        return [json.loads(m["text"]) for m in self.sent if m["type"] == "websocket.send" and m.get("text")]

    def frames_sent(self) -> list[bytes]:
        return [m["bytes"] for m in self.sent if m["type"] == "websocket.send" and m.get("bytes") is not None]

    def wire(self) -> list[Any]:
        """Everything sent, in order: JSON dicts and raw bytes."""
        out: list[Any] = []
        for m in self.sent:
            if m["type"] == "websocket.send":
                out.append(json.loads(m["text"]) if m.get("text") is not None else m["bytes"])
            else:
                out.append(m)
        return out


async def make_leg(**kwargs: Any) -> tuple[BrowserLeg, Channel]:
    ch = Channel()
    scope = {
        "type": "websocket",
        "path": "/ws/browser",
        "query_string": b"agent=restaurant&token=secret",
        "headers": [(b"user-agent", b"pytest"), (b"origin", b"http://127.0.0.1:8080")],
        "client": ("127.0.0.1", 50123),
        "server": ("127.0.0.1", 8080),
        "scheme": "ws",
    }
    ws = WebSocket(scope, ch.receive, ch.send)
    await ws.accept()
    ch.sent.clear()
    return BrowserLeg(ws, agent="restaurant", **kwargs), ch


async def collect(events: AsyncIterator[LegEvent], limit: int = 100) -> list[LegEvent]:
    out: list[LegEvent] = []
    async with asyncio.timeout(5):
        async for ev in events:
            out.append(ev)
            if len(out) >= limit:
                break
    return out


async def test_is_a_leg_with_browser_capabilities() -> None:
    leg, _ = await make_leg(call_id="call_x")
    assert isinstance(leg, Leg)
    assert leg.call_id == "call_x"
    assert leg.kind == "browser"
    assert leg.codec == "pcm16_24k"
    assert leg.capabilities.reports_playback
    assert not leg.capabilities.native_dtmf and not leg.capabilities.can_transfer
    assert leg.metadata["caller"] == "127.0.0.1:50123"
    assert leg.metadata["user_agent"] == "pytest"
    assert leg.metadata["origin"] == "http://127.0.0.1:8080"
    assert "secret" not in json.dumps(leg.metadata)  # the token is never kept
    leg2, _ = await make_leg()
    assert leg2.call_id.startswith("call_") and leg2.call_id != leg.call_id


async def test_inbound_audio_dtmf_playback_and_hangup() -> None:
    leg, ch = await make_leg()
    ch.page_bytes(bytes(960))
    ch.page_bytes(bytes(480))
    ch.page_json({"type": "dtmf", "digit": "2"})
    ch.page_json({"type": "playback", "item_id": "item_1", "played_ms": 60})
    ch.page_bytes(bytes(960))
    ch.page_json({"type": "hangup"})
    ch.page_bytes(bytes(960))  # after the hangup: never read
    events = await collect(leg.events())
    assert events == [
        CallerAudio(bytes(960), 0),
        CallerAudio(bytes(480), 20),
        CallerDtmf("2", 30),
        PlaybackReport("item_1", 60),
        CallerAudio(bytes(960), 30),
        LegHangup("caller_hangup"),
    ]
    assert leg.media_ms == 50
    assert ch.json_sent() == []  # nothing was wrong


async def test_socket_closed_by_the_page_is_a_hangup() -> None:
    leg, ch = await make_leg()
    ch.page_bytes(bytes(960))
    ch.page_close()
    events = await collect(leg.events())
    assert events == [CallerAudio(bytes(960), 0), LegHangup("disconnected")]
    assert leg.closed


@pytest.mark.parametrize(
    ("send", "code"),
    [
        (lambda ch: ch.page_text("{nope"), "bad_json"),
        (lambda ch: ch.page_json({"type": "fly"}), "unknown_type"),
        (lambda ch: ch.page_json({"type": "dtmf", "digit": "x"}), "bad_field"),
        (lambda ch: ch.page_text(json.dumps({"type": "hangup", "pad": "x" * 10_000})), "too_large"),
        (lambda ch: ch.page_bytes(bytes(961)), "bad_audio"),
        (lambda ch: ch.page_bytes(bytes(200_000)), "too_large"),
        (lambda ch: ch.page_bytes(b""), "bad_audio"),
    ],
)
async def test_bad_input_gets_an_error_and_the_call_goes_on(send: Any, code: str) -> None:
    leg, ch = await make_leg()
    send(ch)
    ch.page_bytes(bytes(960))
    ch.page_json({"type": "hangup"})
    events = await collect(leg.events())
    assert events == [CallerAudio(bytes(960), 0), LegHangup("caller_hangup")]  # the bad input was dropped
    (err,) = ch.json_sent()
    assert err["type"] == "error" and err["code"] == code and err["message"]
    assert leg.errors == 1


async def test_error_replies_are_bounded() -> None:
    leg, ch = await make_leg(max_errors=3)
    for _ in range(10):
        ch.page_text("garbage")
    ch.page_json({"type": "hangup"})
    await collect(leg.events())
    assert len(ch.json_sent()) == 3
    assert leg.errors == 10


async def test_play_announces_each_item_before_its_frames() -> None:
    leg, ch = await make_leg()
    await leg.play(b"\x01" * 960, "item_a", 20)
    await leg.play(b"\x02" * 960, "item_a", 40)
    await leg.play(b"\x03" * 960, "item_b", 20)
    await leg.clear()
    await leg.play(b"\x04" * 960, "item_b", 40)  # after a clear the item is announced again
    assert ch.wire() == [
        {"type": "agent.item", "item_id": "item_a"},
        b"\x01" * 960,
        b"\x02" * 960,
        {"type": "agent.item", "item_id": "item_b"},
        b"\x03" * 960,
        {"type": "clear"},
        {"type": "agent.item", "item_id": "item_b"},
        b"\x04" * 960,
    ]


async def test_control_messages_are_mapped_and_call_ended_sent_once() -> None:
    leg, ch = await make_leg(call_id="call_c")
    await leg.send_control({"type": "call_start", "agent": "restaurant"})
    await leg.send_control({"type": "transcript", "role": "agent", "item_id": "i", "delta": "Hi"})
    await leg.send_control({"type": "barge_in", "cause": "speech"})  # nothing on the wire
    await leg.send_control({"type": "dtmf", "digit": "5", "source": "leg"})
    await leg.send_control({"type": "call_end", "reason": "caller_hangup"})
    await leg.hangup("caller_hangup")
    await leg.hangup("caller_hangup")  # idempotent
    sent = ch.json_sent()
    assert [m["type"] for m in sent] == ["call.started", "transcript.delta", "dtmf.ack", "call.ended"]
    assert sent[0]["call_id"] == "call_c" and sent[0]["audio"]["rate"] == 24000
    assert sent[-1] == {"type": "call.ended", "reason": "caller_hangup", "call_id": "call_c"}
    close = [m for m in ch.sent if m["type"] == "websocket.close"]
    assert len(close) == 1 and close[0]["code"] == 1000
    assert leg.closed


async def test_hangup_after_a_failure_closes_with_1011_and_says_why() -> None:
    leg, ch = await make_leg(call_id="call_e")
    await leg.hangup("upstream_failed")
    assert ch.json_sent() == [{"type": "call.ended", "reason": "upstream_failed", "call_id": "call_e"}]
    (close,) = [m for m in ch.sent if m["type"] == "websocket.close"]
    assert close["code"] == 1011


async def test_sends_after_the_page_went_away_are_dropped_quietly() -> None:
    leg, ch = await make_leg()
    ch.fail_sends = True
    await leg.play(bytes(960), "item_a", 20)  # no exception
    assert leg.closed
    await leg.send_control({"type": "cost", "total_usd": "0", "per_minute_usd": None, "breakdown": {}})
    await leg.clear()
    await leg.hangup("caller_hangup")
    assert ch.sent == []


async def test_dtmf_out_and_transfer_are_refused() -> None:
    leg, _ = await make_leg()
    with pytest.raises(LocalProtocolError):
        await leg.send_dtmf("123")
    with pytest.raises(LocalProtocolError):
        await leg.transfer("+15550100")


async def test_concurrent_sends_keep_messages_whole_and_ordered_per_sender() -> None:
    leg, ch = await make_leg()

    async def frames() -> None:
        for i in range(50):
            await leg.play(bytes([i]) * 960, "item_a", 20 * (i + 1))

    async def controls() -> None:
        for i in range(50):
            await leg.send_control({"type": "tool", "name": f"t{i}", "status": "running"})

    await asyncio.gather(frames(), controls())
    wire = ch.wire()
    sent_frames = [w for w in wire if isinstance(w, bytes)]
    assert [f[0] for f in sent_frames] == list(range(50))
    tools = [w["name"] for w in wire if isinstance(w, dict) and w.get("type") == "tool"]
    assert tools == [f"t{i}" for i in range(50)]
