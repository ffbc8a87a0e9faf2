"""The WebRTC bridge: a browser (or any WebRTC peer) calls over Opus with aiortc.

- :mod:`bridges.webrtc.settings`: :class:`WebRTCSettings` (ICE servers, pinned host candidate addresses,
  timeouts), ``settings.webrtc`` in the service settings;
- :mod:`bridges.webrtc.leg`: :class:`WebRTCLeg`, the :class:`bridges.base.Leg` over an aiortc peer connection,
  and :class:`AgentAudioTrack`, the paced outbound track that is the leg's playout clock;
- :mod:`bridges.webrtc.signaling`: offer checks, host-candidate pinning, the answer, and
  :class:`WebRTCGateway`, which owns peer connections until their calls end;
- :mod:`bridges.webrtc.routes`: ``POST /webrtc/offer`` and ``GET /webrtc/config`` for the service app;
- :mod:`bridges.webrtc.caller`: :class:`WebRTCCaller`, an in-process aiortc caller (tests, benchmarks,
  smoke tests of a deployment).
"""

from bridges.webrtc.leg import CAPABILITIES, AgentAudioTrack, WebRTCLeg
from bridges.webrtc.settings import IceServer, WebRTCSettings
from bridges.webrtc.signaling import OfferError, WebRTCGateway, pinned_host_addresses

__all__ = [
    "CAPABILITIES",
    "AgentAudioTrack",
    "IceServer",
    "OfferError",
    "WebRTCGateway",
    "WebRTCLeg",
    "WebRTCSettings",
    "pinned_host_addresses",
]
