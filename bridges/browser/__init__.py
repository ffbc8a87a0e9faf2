"""The browser WebSocket bridge: a web page's microphone and speaker as a call leg.

- :mod:`bridges.browser.protocol`: the JSON/binary message codec (pure), documented in ``PROTOCOL.md``;
- :mod:`bridges.browser.leg`: :class:`BrowserLeg`, the :class:`bridges.base.Leg` over a Starlette WebSocket.
"""

from bridges.browser.leg import CAPABILITIES, BrowserLeg
from bridges.browser.protocol import BrowserProtocolError

__all__ = ["CAPABILITIES", "BrowserLeg", "BrowserProtocolError"]
