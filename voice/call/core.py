"""The call core: the pure state machine of one call (DESIGN.md "Layers", "Turn-taking and barge-in", "DTMF",
"Tools"; protocols.md §A.5, §A.6, §C, §D.1).

:class:`CallCore` sits between a caller leg (:mod:`bridges.base`) and the Realtime upstream. It takes inputs
with an explicit call-clock time ``now_ms`` (milliseconds since the call started, read by the runner; this
module never reads a clock) and returns a list of *actions* (frozen dataclasses) for the runner to carry out:

========================  ==================================================================================
input                     what happens
========================  ==================================================================================
``caller_audio``          forwarded upstream (``input_audio_buffer.append``, the leg codec is the session
                          format, no transcoding); local VAD with an echo guard (:mod:`voice.call.bargein`)
                          pauses playout at once while the agent is speaking
``caller_dtmf``           the profile's DTMF policy (:mod:`voice.call.dtmf_policy`): a user ``input_text``
                          item + ``response.create``; optional barge-in
``upstream_event``        dispatched through :data:`UPSTREAM_HANDLERS` (a table keyed on the event ``type``);
                          unknown and malformed events only produce a :class:`Metric`
``playback_report``       the leg's playout clock (:mod:`voice.call.playout`)
``tool_result``           ``function_call_output`` + ``response.create``
``tick``                  every 20 ms from the pacer: at most one agent frame, the barge-in window, the DTMF
                          collect timeout, deferred ``response.create``, end_call / transfer after the audio
``end``                   the call is over: unfinished agent turns are recorded as interrupted
========================  ==================================================================================

Barge-in (§C.2, WebSocket-style legs where the server does not know the playback position):

1. local speech while agent audio is playing -> playout pauses at once (``tick`` returns no frame);
2. ``input_audio_buffer.speech_started`` while the agent is speaking or paused -> :class:`ClearLeg`, queued
   audio dropped, ``conversation.item.truncate`` for the item actually playing with the ms the caller heard
   (clamped to what was sent, §C.1; later items that were received but never heard are truncated to 0 so the
   model's context holds nothing the caller did not hear), ``response.cancel`` only if the upstream does not
   cancel by itself (``turn_detection.interrupt_response``), a ``barge_in`` transcript entry and the agent's
   turn recorded as interrupted with the heard part of its text;
3. no confirmation within ``barge_in_window_ms`` -> playout resumes where it stopped (a cough is not a turn).

A DTMF key with ``barge_in`` does step 2 at once and always sends ``response.cancel`` (the upstream does not
cancel for keys). Late audio of a cancelled response is dropped.

``response.create`` is never sent while another response is active (only one response may write to the
default conversation, §A.5): requests are queued until ``response.done``. A request is also held while the
caller is speaking with server VAD creating responses, and is considered satisfied by any later response that
the upstream created after our items were in the conversation (so a tool result arriving during a barge-in is
still sent, §"Tools": "a barge-in does not lose a tool result", without making the model answer twice).

Built-in tools: ``end_call`` and ``transfer_call`` answer the model at once (so it can say goodbye or
"connecting you now") and hang up / transfer once the agent's audio has been played (no active response, no
queued request, playout drained), or after ``end_call_timeout_ms`` at the latest. ``send_dtmf`` validates the
keys and emits :class:`SendDtmf` at once.

Cost: every ``response.done.usage`` and transcription usage is surfaced as :class:`UsageReported` (plus token
metrics) for the runner's cost meter; the core holds no price table.

The implementation is split by seam: the actions are in :mod:`voice.call.actions`, the upstream event
handlers and their table in :mod:`voice.call.upstream_events`, tool calls and the built-ins in
:mod:`voice.call.tool_calls` (functions of the core's state); this module keeps the state, the public
inputs, caller audio and DTMF, the pacer, barge-in, agent turns and the ``response.create`` gate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bridges.base import AudioCodec, bytes_per_ms, is_dtmf_digit, upstream_format
from voice.call import tool_calls
from voice.call.actions import (
    INTERNAL_ERROR_METRIC,
    Action,
    ClearLeg,
    Control,
    Hangup,
    Metric,
    PlayFrame,
    RunTool,
    SendDtmf,
    SendUpstream,
    TranscriptEntry,
    Transfer,
    UsageReported,
)
from voice.call.bargein import CallerSpeechDetector, PauseWindow, VadFactory, default_vad
from voice.call.dtmf_policy import DtmfCollector, DtmfForward
from voice.call.playout import PlayedItem, Playout
from voice.call.tool_calls import AfterAudio, after_audio_check
from voice.call.transcript import heard_text
from voice.call.upstream_events import UPSTREAM_HANDLERS
from voice.logs import get_logger
from voice.profiles import AgentProfile
from voice.realtime.builders import (
    input_audio_append,
    item_create,
    item_truncate,
    message_item,
    response_cancel,
    response_create,
    session_update,
)
from voice.realtime.events import MalformedServerEvent, ServerEvent, UnknownServerEvent
from voice.realtime.ids import new_id

__all__ = [
    "INTERNAL_ERROR_METRIC",
    "UPSTREAM_HANDLERS",
    "Action",
    "CallCore",
    "ClearLeg",
    "Control",
    "Hangup",
    "Metric",
    "PlayFrame",
    "RunTool",
    "SendDtmf",
    "SendUpstream",
    "TranscriptEntry",
    "Transfer",
    "UsageReported",
]


# State ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _AgentText:
    response_id: str
    text: str = ""
    final: bool = False


class CallCore:
    """One call's state machine (see the module docstring). Not thread-safe; one per call.

    ``reports_playback``: the leg sends :class:`bridges.base.PlaybackReport` (heard = its report, capped at
    what was sent; otherwise heard = sent). ``upstream_interrupts``: the upstream cancels the response by
    itself on ``speech_started``; ``None`` derives it from the profile (turn detection enabled and
    ``interrupt_response``). ``forward_audio``: emit ``input_audio_buffer.append`` for caller audio,
    ``append_ms`` of it per append (frames are gathered; a DTMF key sends what was gathered first).
    ``can_transfer`` / ``default_transfer_target``: what ``transfer_call`` may do.
    """

    def __init__(
        self,
        call_id: str,
        profile: AgentProfile,
        codec: AudioCodec,
        *,
        reports_playback: bool,
        upstream_interrupts: bool | None = None,
        barge_in_window_ms: int = 600,
        forward_audio: bool = True,
        append_ms: int = 20,
        can_transfer: bool = True,
        default_transfer_target: str | None = None,
        min_speech_ms: int = 60,
        echo_similarity: float = 0.8,
        echo_tail_ms: int = 600,
        playback_grace_ms: int = 1000,
        auto_response_grace_ms: int = 1500,
        end_call_timeout_ms: int = 20_000,
        response_create_timeout_ms: int = 10_000,
        vad_factory: VadFactory = default_vad,
    ) -> None:
        self.call_id = call_id
        self.profile = profile
        self.codec: AudioCodec = codec
        self.reports_playback = reports_playback
        td = profile.turn_detection
        self.upstream_interrupts = (
            (td.enabled and td.interrupt_response) if upstream_interrupts is None else upstream_interrupts
        )
        self.auto_create = td.enabled and td.create_response
        self.forward_audio = forward_audio
        self._append_bytes = max(1, append_ms) * bytes_per_ms(codec)
        self._unsent = bytearray()  # caller audio gathered for the next input_audio_buffer.append
        self.can_transfer = can_transfer
        self.default_transfer_target = default_transfer_target
        self.auto_response_grace_ms = auto_response_grace_ms
        self.end_call_timeout_ms = end_call_timeout_ms
        self.response_create_timeout_ms = response_create_timeout_ms
        self.playout = Playout(codec, reports_playback=reports_playback, grace_ms=playback_grace_ms)
        self.detector = CallerSpeechDetector(
            codec,
            aggressiveness=profile.vad.aggressiveness,
            min_speech_ms=min_speech_ms,
            echo_similarity=echo_similarity,
            echo_tail_ms=echo_tail_ms,
            vad_factory=vad_factory,
        )
        self.window = PauseWindow(barge_in_window_ms)
        self.held = False
        """The caller side has put the call on hold: no agent frames are played (:meth:`hold`)."""
        self.dtmf = DtmfCollector(profile.dtmf)
        self._log = get_logger(call_id=call_id, component="call_core")
        self._texts: dict[str, _AgentText] = {}
        self._awaiting_text: dict[str, PlayedItem] = {}
        self._active: dict[str, None] = {}  # responses between response.created and response.done
        self._dropped_responses: set[str] = set()
        self._want_response = False
        self._unacked_items: set[str] = set()
        self._outstanding_creates: dict[str, int] = {}  # our response.create event ids -> when sent
        self._caller_speaking = False
        self._caller_stopped_ms: int | None = None
        self._response_since_stop = True
        self._seen_calls: set[str] = set()
        self._pending_tools: dict[str, str] = {}
        self._after_audio: list[AfterAudio] = []
        self._hung_up = False
        self._last_frame_ms: int | None = None
        self.ended = False

    # Public inputs ---------------------------------------------------------------------------------------

    def session_event(self, tools: list[dict[str, Any]] | None = None, context: str = "") -> dict[str, Any]:
        """The ``session.update`` for this call: the profile's session with the leg's audio format (§A.2,
        §A.3) and, if given, ``tools`` (e.g. ``ToolRegistry.session_tools(...)``) instead of the profile's.
        ``context`` (per-call details, :func:`voice.call.context.call_context`) goes after the stable
        instructions, so the cacheable prefix stays the same across calls."""
        session = self.profile.session_config(upstream_format(self.codec))
        if tools is not None:
            session["tools"] = tools
        if context:
            session["instructions"] = f"{session['instructions']}\n\n{context}".lstrip()
        return session_update(session)

    def caller_audio(self, audio: bytes, now_ms: int) -> list[Action]:
        """Caller audio in the leg codec (any length)."""
        return self._guard(self._caller_audio, audio, now_ms)

    def caller_dtmf(self, digit: str, now_ms: int) -> list[Action]:
        """One key from the caller (any leg: Twilio, RFC 4733, keypad, in-band detector)."""
        return self._guard(self._dtmf_key, digit, now_ms)

    def upstream_event(self, event: ServerEvent, now_ms: int) -> list[Action]:
        """One parsed server event (:func:`voice.realtime.events.parse_server_event`)."""
        if self.ended:
            return []
        if isinstance(event, UnknownServerEvent):
            return [Metric("upstream.unknown_event")]
        if isinstance(event, MalformedServerEvent):
            return [Metric("upstream.malformed_event")]
        handler = UPSTREAM_HANDLERS.get(getattr(event, "type", ""))
        if handler is None:
            return []  # a known event the call has nothing to do with (rate limits, session, MCP...)
        return self._guard(handler, self, event, now_ms)

    def playback_report(self, item_id: str, played_ms: int, now_ms: int) -> list[Action]:
        """The leg heard ``played_ms`` of ``item_id`` (Twilio mark echo, browser playback position)."""
        return self._guard(self._playback_report, item_id, played_ms, now_ms)

    def tool_result(
        self, call_id: str, output: str, now_ms: int, *, error: str | None = None
    ) -> list[Action]:
        """A tool finished: ``output`` goes back as ``function_call_output``, then ``response.create``.

        ``error`` marks a failure in the transcript; by default it is read from an ``{"error": ...}`` output.
        """
        return self._guard(tool_calls.tool_result, self, call_id, output, now_ms, error)

    def tick(self, now_ms: int) -> list[Action]:
        """The 20 ms pacer: at most one :class:`PlayFrame`, plus timer work."""
        return self._guard(self._tick, now_ms)

    def hold(self, held: bool, now_ms: int) -> list[Action]:
        """The leg stopped (``held``) or resumed taking agent audio. While held the pacer plays nothing, so
        the playout clock stops where the caller stopped hearing; queued and arriving audio waits and plays
        on resume. Caller audio, DTMF and upstream events go on as usual."""
        return self._guard(self._hold, held, now_ms)

    def end(self, reason: str, now_ms: int) -> list[Action]:
        """The call is over (either side); later inputs return nothing."""
        return self._guard(self._end, reason, now_ms)

    # Queries ---------------------------------------------------------------------------------------------

    @property
    def agent_speaking(self) -> bool:
        """Agent audio is queued, playing or paused."""
        return self.playout.speaking

    @property
    def paused(self) -> bool:
        return self.playout.paused

    @property
    def active_responses(self) -> list[str]:
        return list(self._active)

    @property
    def pending_tools(self) -> dict[str, str]:
        """Tool calls handed to the runner and not answered yet: call_id -> name."""
        return dict(self._pending_tools)

    # Guard -----------------------------------------------------------------------------------------------

    def _guard(self, fn: Callable[..., list[Action]], *args: Any) -> list[Action]:
        """Run an input handler; nothing a peer sends may raise out of the core (it is logged and counted)."""
        if self.ended:
            return []
        try:
            return fn(*args)
        except Exception:
            self._log.exception("call core handler failed", handler=getattr(fn, "__name__", repr(fn)))
            return [Metric(INTERNAL_ERROR_METRIC)]

    # Caller side -----------------------------------------------------------------------------------------

    def _caller_audio(self, audio: bytes, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        if self.forward_audio and audio:
            if not self._unsent and len(audio) >= self._append_bytes:
                actions.append(SendUpstream(input_audio_append(bytes(audio))))
            else:
                self._unsent += audio
                if len(self._unsent) >= self._append_bytes:
                    actions += self._send_unsent()
        if not (self.playout.has_audio_to_play or self.playout.paused):
            # Local VAD only decides barge-in, which needs agent audio to interrupt: skip its cost while
            # the agent is silent (most of a caller's talk time) and start a fresh voiced run later.
            self.detector.reset()
            return actions
        onset = self.detector.push(audio, now_ms)
        if onset and self.playout.has_audio_to_play and not self.playout.paused:
            self.playout.paused = True
            self.window.start(now_ms)
            actions.append(Metric("bargein.paused"))
        return actions

    def _dtmf_key(self, digit: str, now_ms: int, source: str = "leg") -> list[Action]:
        if not isinstance(digit, str) or not is_dtmf_digit(digit):
            return [Metric("dtmf.invalid_digit")]
        actions: list[Action] = self._send_unsent()  # the audio before the key goes first
        if self.profile.dtmf.barge_in and (self.playout.speaking or self.window.active):
            actions += self._barge_in(now_ms, cause="dtmf")
        actions.append(Control({"type": "dtmf", "digit": digit, "source": source}))
        for forward in self.dtmf.press(digit, now_ms):
            actions += self._forward_dtmf(forward, now_ms)
        return actions

    def _send_unsent(self) -> list[Action]:
        """The caller audio gathered for the next append, sent now (before an input that follows it)."""
        if not self._unsent:
            return []
        audio = bytes(self._unsent)
        self._unsent.clear()
        return [SendUpstream(input_audio_append(audio))]

    def _forward_dtmf(self, forward: DtmfForward, now_ms: int) -> list[Action]:
        actions: list[Action] = [
            TranscriptEntry(
                "dtmf",
                forward.digits,
                {"digits": forward.digits, "direction": "in", "why": forward.why},
                forward.t_ms,
            ),
            self._create_item(message_item("user", forward.text)),
        ]
        return actions + self._request_response(now_ms)

    def _playback_report(self, item_id: str, played_ms: int, now_ms: int) -> list[Action]:
        return self._finish_played(self.playout.report(item_id, played_ms), now_ms)

    # Pacer -----------------------------------------------------------------------------------------------

    def _hold(self, held: bool, now_ms: int) -> list[Action]:
        if held == self.held:
            return []
        self.held = held
        return [Metric("call.held" if held else "call.resumed")]

    def _tick(self, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        if self.window.expired(now_ms):
            held = self.window.stop(now_ms)
            self.playout.paused = False
            actions.append(Metric("bargein.resumed", float(held or 0)))
        frame, closed = self.playout.next_frame(now_ms) if not self.held else (None, [])
        if frame is not None:
            self.detector.agent_played(frame.audio, now_ms)
            self._last_frame_ms = now_ms
            actions.insert(0, PlayFrame(frame.audio, frame.item_id, frame.item_ms))
        closed += self.playout.expire(now_ms)
        actions += self._finish_played(closed, now_ms)
        for forward in self.dtmf.tick(now_ms):
            actions += self._forward_dtmf(forward, now_ms)
        actions += self._expire_creates(now_ms)
        actions += self._flush_response(now_ms)
        actions += after_audio_check(self, now_ms)
        return actions

    # Barge-in --------------------------------------------------------------------------------------------

    def _barge_in(self, now_ms: int, *, cause: Literal["speech", "dtmf"]) -> list[Action]:
        """Clear the leg, truncate what was not heard, cancel where needed, record it (protocols.md §C.2)."""
        held = self.window.stop(now_ms)
        cut = self.playout.interrupt()
        self.detector.reset()
        actions: list[Action] = [ClearLeg(), Control({"type": "barge_in", "cause": cause})]
        for played in cut:
            if played.received_ms > 0:
                end_ms = max(0, min(played.heard_ms, played.sent_ms))
                actions.append(SendUpstream(item_truncate(played.item_id, played.content_index, end_ms)))
        if (cause == "dtmf" or not self.upstream_interrupts) and self._active:
            actions.append(SendUpstream(response_cancel()))
        self._drop_active_responses()
        playing = next((p for p in cut if p.started_ms is not None), cut[0] if cut else None)
        actions.append(
            TranscriptEntry(
                "barge_in",
                "",
                {
                    "item_id": playing.item_id if playing else None,
                    "heard_ms": playing.heard_ms if playing else None,
                    "cause": cause,
                },
                now_ms,
            )
        )
        for played in cut:
            if played.started_ms is not None:
                actions.append(self._agent_entry(played, now_ms))
            else:
                self._texts.pop(played.item_id, None)
        actions.append(Metric("bargein.confirmed", float(held) if held is not None else 0.0))
        return actions

    def _drop_active_responses(self) -> None:
        self._dropped_responses.update(self._active)
        self.playout.drop_responses(self._active)

    # Agent turns -----------------------------------------------------------------------------------------

    def _agent_entry(self, played: PlayedItem, now_ms: int) -> TranscriptEntry:
        record = self._texts.pop(played.item_id, None)
        self._awaiting_text.pop(played.item_id, None)
        generated = record.text if record else ""
        text = heard_text(generated, played.heard_ms, played.received_ms) if played.interrupted else generated
        return TranscriptEntry(
            "agent",
            text,
            {
                "item_id": played.item_id,
                "interrupted": played.interrupted,
                "heard_ms": played.heard_ms,
                "audio_ms": played.received_ms,
                "generated_text": generated,
            },
            played.started_ms if played.started_ms is not None else now_ms,
        )

    def _finish_played(self, closed: list[PlayedItem], now_ms: int) -> list[Action]:
        """Items that played to the end: record them once their transcript is final."""
        actions: list[Action] = []
        for played in closed:
            record = self._texts.get(played.item_id)
            if played.started_ms is None and (record is None or not record.text):
                self._texts.pop(played.item_id, None)  # an empty item: nothing was said
            elif record is not None and not record.final:
                self._awaiting_text[played.item_id] = played
            else:
                actions.append(self._agent_entry(played, now_ms))
        return actions

    def _text_final(self, item_id: str, now_ms: int) -> list[Action]:
        played = self._awaiting_text.get(item_id)
        return [self._agent_entry(played, now_ms)] if played is not None else []

    def _text_record(self, item_id: str, response_id: str) -> _AgentText | None:
        """The text being gathered for an agent item; ``None`` once the item is recorded or dropped."""
        record = self._texts.get(item_id)
        if record is None:
            if self.playout.is_closed(item_id) or response_id in self._dropped_responses:
                return None
            record = self._texts[item_id] = _AgentText(response_id)
        return record

    # Responses -------------------------------------------------------------------------------------------

    def _create_item(self, item: dict[str, Any]) -> SendUpstream:
        """``conversation.item.create`` with our own item id, so its ``conversation.item.added`` is known."""
        item_id = new_id("item")
        self._unacked_items.add(item_id)
        return SendUpstream(item_create({"id": item_id, **item}))

    def _request_response(self, now_ms: int) -> list[Action]:
        self._want_response = True
        return self._flush_response(now_ms)

    def _flush_response(self, now_ms: int) -> list[Action]:
        """Send a wanted ``response.create`` when no response is active and the caller is not mid-turn."""
        if not self._want_response or self._active or self._outstanding_creates:
            return []
        if self.auto_create:
            if self._caller_speaking:
                return []  # the server will create a response when the caller stops
            stopped = self._caller_stopped_ms
            if (
                stopped is not None
                and not self._response_since_stop
                and now_ms - stopped < self.auto_response_grace_ms
            ):
                return []
        self._want_response = False
        event = response_create()
        self._outstanding_creates[str(event["event_id"])] = now_ms
        return [SendUpstream(event)]

    def _expire_creates(self, now_ms: int) -> list[Action]:
        """Forget a ``response.create`` the upstream never answered (neither response.created nor error)."""
        stale = [
            k
            for k, sent in self._outstanding_creates.items()
            if now_ms - sent >= self.response_create_timeout_ms
        ]
        for key in stale:
            del self._outstanding_creates[key]
        return [Metric("response.create_unanswered")] * len(stale)

    # End -------------------------------------------------------------------------------------------------

    def _end(self, reason: str, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        for forward in self.dtmf.flush():
            actions.append(
                TranscriptEntry(
                    "dtmf",
                    forward.digits,
                    {"digits": forward.digits, "direction": "in", "why": "flush"},
                    forward.t_ms,
                )
            )
        for played in self.playout.interrupt():
            if played.started_ms is not None:
                actions.append(self._agent_entry(played, now_ms))
        for played in list(self._awaiting_text.values()):
            actions.append(self._agent_entry(played, now_ms))
        actions.append(TranscriptEntry("system", f"call ended: {reason}", {"reason": reason}, now_ms))
        actions.append(Control({"type": "call_end", "reason": reason}))
        self.ended = True
        return actions
