"""Settings of the WebRTC bridge: ICE servers, host candidate addresses, timeouts.

Nested in :class:`voice.config.Settings` as ``webrtc`` (``webrtc: WebRTCSettings =
Field(default_factory=WebRTCSettings)``), so they come from a ``[webrtc]`` table of the TOML file or from
``VOICE_WEBRTC__*`` environment variables (JSON for lists), e.g.::

    VOICE_WEBRTC__ICE_SERVERS='[{"urls": ["stun:stun.example.com:3478"]},
                                {"urls": ["turn:turn.example.com:3478?transport=udp"],
                                 "username": "voice", "credential": "s3cret"}]'
    VOICE_WEBRTC__HOST_ADDRESSES='["127.0.0.1"]'

``ice_servers`` is empty by default: no packet leaves for a STUN server nobody configured (aiortc's own
default is a public Google STUN server). The same servers, credentials included, are handed to the page
(``GET /webrtc/config``) unless ``browser_ice_servers`` is set: TURN credentials given to pages should be
short-lived or restricted to this service's relay use.

``host_addresses`` pins the host ICE candidates (the addresses the service binds its media sockets to and
offers to callers). Empty: aioice's own choice, every address of every interface except loopback. Setting it
keeps media on one interface (a public address on a multi-homed host, not a container bridge or VPN) or, in
tests, on loopback: ``["127.0.0.1"]`` (aioice never offers loopback by itself).
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

__all__ = ["IceServer", "WebRTCSettings"]

_ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


class IceServer(BaseModel):
    """One STUN or TURN server (the W3C ``RTCIceServer`` dictionary): ``urls`` and TURN credentials."""

    urls: list[str]
    username: str | None = None
    credential: SecretStr | None = None

    @field_validator("urls", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        """A single URL string is accepted as a one-item list (as in the browser API)."""
        return [value] if isinstance(value, str) else value

    @field_validator("urls")
    @classmethod
    def _ice_urls(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("an ICE server needs at least one URL")
        for url in value:
            if not url.startswith(_ICE_SCHEMES):
                raise ValueError(f"ICE server URL {url!r} must start with stun:, stuns:, turn: or turns:")
        return value

    @property
    def is_turn(self) -> bool:
        """Whether any URL is a TURN relay (those need ``username`` and ``credential``)."""
        return any(url.startswith(("turn:", "turns:")) for url in self.urls)

    def to_browser(self) -> dict[str, object]:
        """The ``RTCIceServer`` dictionary for ``new RTCPeerConnection({iceServers})`` in the page."""
        out: dict[str, object] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential.get_secret_value()
        return out


class WebRTCSettings(BaseModel):
    """The WebRTC bridge (see the module docstring)."""

    enabled: bool = True
    """Serve ``POST /webrtc/offer``; off: the route answers 404 and the page falls back to the WebSocket."""
    ice_servers: list[IceServer] = Field(default_factory=list)
    """STUN/TURN servers the service's peer connections use (server-reflexive and relay candidates)."""
    browser_ice_servers: list[IceServer] | None = None
    """What pages are told to use; ``None``: the same as ``ice_servers``."""
    ice_transport_policy: Literal["all", "relay"] = "all"
    """``relay``: only TURN-relayed candidates (no host or server-reflexive addresses are revealed)."""
    host_addresses: list[str] = Field(default_factory=list)
    """Pin the host candidates to these local IP addresses (empty: every non-loopback interface)."""
    connect_timeout_s: float = Field(15.0, gt=0)
    """A peer connection not connected (ICE + DTLS) this long after the answer is closed and its call
    recorded as ended with ``connect_timeout``."""
    media_timeout_s: float = Field(10.0, gt=0)
    """No caller audio for this long on a connected call (the network went away): the call ends."""
    max_offer_bytes: int = Field(64 * 1024, ge=1024)
    """Largest ``POST /webrtc/offer`` body accepted (a browser offer is a few kB)."""

    @field_validator("host_addresses")
    @classmethod
    def _ip_addresses(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for address in value:
            try:
                out.append(str(ipaddress.ip_address(address.strip())))
            except ValueError:
                raise ValueError(f"host address {address!r} is not an IP address") from None
        return out

    @field_validator("ice_servers", "browser_ice_servers")
    @classmethod
    def _turn_credentials(cls, value: list[IceServer] | None) -> list[IceServer] | None:
        for server in value or []:
            if server.is_turn and (server.username is None or server.credential is None):
                raise ValueError(f"TURN server {server.urls[0]!r} needs a username and a credential")
        return value

    @property
    def loopback_only(self) -> bool:
        """Host candidates are pinned to loopback addresses only (tests): remote candidates that are not
        loopback cannot be reached from them and are ignored."""
        return bool(self.host_addresses) and all(
            ipaddress.ip_address(a).is_loopback for a in self.host_addresses
        )

    def page_ice_servers(self) -> list[dict[str, object]]:
        """The ``iceServers`` list a page should use."""
        servers = self.browser_ice_servers if self.browser_ice_servers is not None else self.ice_servers
        return [server.to_browser() for server in servers]
