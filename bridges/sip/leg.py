"""The SIP leg: a :class:`bridges.base.Leg` over one answered SIP call and its RTP session.

- Early media (outbound calls): what the callee's side played before answering (an IVR's prompt) comes
  first, each frame stamped ``media_ms`` 0, before the caller audio of the answered call; ringback and
  silence alone give nothing (:mod:`bridges.sip.early_media`, :meth:`RtpSession.start
  <bridges.sip.rtp_session.RtpSession.start>`).
- Audio: PCMU or PCMA as negotiated (RFC 3551 §4.5.14), passed to and from the upstream byte for byte;
  :meth:`SipLeg.play` sends one RTP packet per paced 20 ms frame, so the playout clock is the RTP send clock
  (``reports_playback`` False: heard = sent). :meth:`SipLeg.clear` has nothing to drop: no audio is queued
  beyond the frame being sent.
- DTMF in: RFC 4733 events, in-band tones and SIP INFO ``application/dtmf-relay``, each as
  :class:`~bridges.base.CallerDtmf`. Out: :meth:`SipLeg.send_dtmf` as RFC 4733 events when the peer
  negotiated ``telephone-event`` (``native_dtmf``), else the runner plays tones in-band.
- Hold: a re-INVITE that leaves us unable to send (the peer's ``sendonly``/``inactive``, RFC 3264 §8.4)
  gives :class:`~bridges.base.LegHold` ``(True)``, so agent playout stops rather than being sent to nobody;
  resuming gives ``LegHold(False)``.
- :meth:`SipLeg.transfer` sends REFER (RFC 3515) and waits for the NOTIFY that reports the outcome;
  :meth:`SipLeg.hangup` sends BYE (RFC 3261 §15) and closes the media; a BYE from the caller ends
  :meth:`SipLeg.events` with a :class:`~bridges.base.LegHangup`.
- The per-frame fast path (:class:`bridges.base.DirectLeg`): once the call has called
  :meth:`~SipLeg.listen`, caller audio and DTMF go straight to it from the RTP clock while no earlier event
  waits in :meth:`SipLeg.events` (which keeps the rest: hold, hang-up); :meth:`~SipLeg.play_now` sends the
  RTP packet at once.
- Metadata for the agent: caller id (From), callee (To), display name, the SIP Call-ID, the peer's address
  and the chosen INVITE headers (``SipSettings.metadata_headers`` and every ``X-`` header).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final

from bridges.base import (
    AudioCodec,
    CallerDtmf,
    EventSink,
    LegCapabilities,
    LegEvent,
    LegHangup,
    LegHold,
    LegKind,
)
from bridges.sip.message import SipParseError, SipRequest, SipUri
from bridges.sip.sdp import NegotiatedMedia
from bridges.sip.ua import SipCall
from voice.errors import LocalProtocolError, VoiceError
from voice.logs import get_logger

__all__ = ["SipLeg", "TransferFailed", "call_metadata"]

BYE_TIMEOUT_S: Final = 5.0
NOTIFY_TIMEOUT_S: Final = 10.0


class TransferFailed(VoiceError):
    """The peer refused or failed the REFER (its status code is in the message)."""


def call_metadata(invite: SipRequest, headers: Iterable[str], peer: str) -> dict[str, Any]:
    """What the agent is told about the caller: caller id, callee, display name, chosen headers."""
    meta: dict[str, Any] = {"sip_call_id": invite.headers.get("Call-ID") or "", "peer": peer}
    with contextlib.suppress(SipParseError):
        from_ = invite.from_
        uri = from_.uri
        meta["caller"] = uri.user if isinstance(uri, SipUri) and uri.user else str(uri)
        meta["caller_uri"] = str(uri)
        if from_.display_name:
            meta["caller_name"] = from_.display_name[:128]
    with contextlib.suppress(SipParseError):
        to_uri = invite.to.uri
        meta["callee"] = to_uri.user if isinstance(to_uri, SipUri) and to_uri.user else str(to_uri)
    wanted = {h.lower() for h in headers}
    chosen: dict[str, str] = {}
    for name, value in invite.headers:
        if name.lower() in wanted or name.lower().startswith("x-"):
            chosen[name] = value[:256]
    if chosen:
        meta["sip_headers"] = chosen
    return meta


class SipLeg:
    """One answered SIP call as the call runner drives it (see the module docstring)."""

    kind: LegKind = "sip"

    def __init__(self, call: SipCall, *, metadata: dict[str, Any] | None = None) -> None:
        if call.media is None:
            raise LocalProtocolError("a SIP leg needs the negotiated media")
        self.call = call
        self.call_id: str = call.call_id
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.log = get_logger(call_id=self.call_id, component="sip_leg")
        self._events: asyncio.Queue[LegEvent] = asyncio.Queue()
        self._sink: EventSink | None = None
        self._ended = False
        self._held = False
        self._notify: asyncio.Queue[int] = asyncio.Queue()
        self.codec: AudioCodec = call.media.audio_codec
        call.on_ended = self._on_ended
        call.on_dtmf = self._on_info_dtmf
        call.on_notify = self._notify.put_nowait
        call.on_media = self._on_media

    @property
    def capabilities(self) -> LegCapabilities:
        media = self.call.media
        native = media is not None and media.telephone_event is not None
        return LegCapabilities(codecs=(self.codec,), native_dtmf=native, can_transfer=True)

    def start(self) -> None:
        """Start the media clock (caller audio and DTMF flow into :meth:`events`)."""
        self.call.rtp.start(self._emit)
        media = self.call.media
        if media is not None and not media.sends:  # answered on hold (an offer with sendonly/inactive)
            self._held = True
            self._events.put_nowait(LegHold(True))

    # -- inbound -------------------------------------------------------------------------------------

    def listen(self, sink: EventSink) -> None:
        """Hand caller audio and DTMF to ``sink`` as they come (see the module docstring)."""
        self._sink = sink

    def _emit(self, event: LegEvent) -> None:
        sink = self._sink
        if sink is not None and self._events.empty() and not isinstance(event, LegHangup | LegHold):
            sink(event)
        else:
            self._events.put_nowait(event)

    async def events(self) -> AsyncIterator[LegEvent]:
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, LegHangup):
                return

    def _on_ended(self, reason: str) -> None:
        if not self._ended:
            self._ended = True
            self._events.put_nowait(LegHangup(reason))

    def _on_info_dtmf(self, digit: str) -> None:
        self._emit(CallerDtmf(digit, self.call.rtp.media_ms))

    def _on_media(self, media: NegotiatedMedia) -> None:
        self.log.info("sip.media_changed", direction=media.direction, codec=media.codec.name)
        held = not media.sends
        if held != self._held:
            self._held = held
            self.log.info("sip.hold" if held else "sip.resume", direction=media.direction)
            self._events.put_nowait(LegHold(held))

    # -- outbound ------------------------------------------------------------------------------------

    async def play(self, frame: bytes, item_id: str, item_ms: int) -> None:
        self.call.rtp.send_audio(frame)

    def play_now(self, frame: bytes, item_id: str, item_ms: int) -> bool:
        self.call.rtp.send_audio(frame)
        return True

    def audio_stopped(self) -> None:
        return None  # each packet stands alone (the next one after a pause carries the marker bit)

    async def clear(self) -> None:
        self.call.rtp.sender.start_talkspurt()

    async def send_dtmf(self, digits: str) -> None:
        if not self.call.rtp.send_dtmf(digits):
            raise LocalProtocolError("the peer did not negotiate telephone-event")

    async def transfer(self, target: str) -> None:
        """REFER the caller to ``target`` and wait for the NOTIFY with the final outcome (RFC 3515)."""
        response = await self.call.refer(target)
        if response.status_code >= 300:
            raise TransferFailed(f"REFER refused: {response.status_code} {response.reason}")
        self.log.info("sip.refer_accepted", target=target, status=response.status_code)
        deadline = asyncio.get_running_loop().time() + NOTIFY_TIMEOUT_S
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                self.log.warning("sip.refer_no_final_notify", target=target)
                return
            try:
                status = await asyncio.wait_for(self._notify.get(), remaining)
            except TimeoutError:
                continue
            if status >= 200:
                self.log.info("sip.refer_outcome", status=status)
                if status >= 300:
                    raise TransferFailed(f"transfer failed: {status}")
                return

    async def hangup(self, reason: str) -> None:
        """Send BYE (if the call is still up) and stop the media; idempotent."""
        if self.call.state == "answered":
            self.log.info("sip.hangup", reason=reason)
            try:
                await asyncio.wait_for(self.call.bye(), BYE_TIMEOUT_S)
            except (TimeoutError, OSError, VoiceError) as exc:
                self.log.warning("sip.bye_failed", error=repr(exc))
        self.call.end(reason)

    async def send_control(self, message: dict[str, Any]) -> None:
        return None
