"""Settings of the SIP bridge (``[sip]`` in the TOML file, ``VOICE_SIP__*`` in the environment).

The user agent listens on ``port`` (UDP and/or TCP, RFC 3261 §18) on ``bind`` (default: the service's
``host``), takes calls only from ``allowed_networks`` (others get 403 Forbidden, §21.4.4), optionally asks
callers for Digest credentials (``auth_users``, RFC 3261 §22.4, RFC 7616), and gives each call an RTP
port pair (RTP even, RTCP odd: RFC 3550 §11) from ``rtp_port_min``..``rtp_port_max``.

Example (TOML)::

    [sip]
    port = 5060
    bind = "0.0.0.0"
    public_address = "203.0.113.7"
    allowed_networks = ["10.0.0.0/8", "192.0.2.0/24"]
    rtp_port_min = 20000
    rtp_port_max = 20999
    auth_users = { pbx = "change-me" }

    [sip.trunk]
    uri = "sip:trunk.example.net:5060"
    username = "acct"
    password = "secret"

    [sip.registration]
    registrar = "sip:pbx.example.net"
    username = "voice"
    password = "secret"
    expires = 600
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

__all__ = ["SipRegister", "SipSettings", "SipTrunk"]


def _both_transports() -> list[Literal["udp", "tcp"]]:
    return ["udp", "tcp"]


def _algorithms() -> list[Literal["SHA-256", "MD5"]]:
    return ["SHA-256", "MD5"]


class SipTrunk(BaseModel):
    """A trunk or proxy for outbound calls: requests go to ``uri``; 401/407 are answered with Digest."""

    uri: str
    """``sip:host:port`` of the trunk or outbound proxy."""
    username: str | None = None
    password: SecretStr | None = None
    from_user: str | None = None
    """The user part of our From address (the caller id) on outbound calls."""


class SipRegister(BaseModel):
    """Registration with a registrar so the service can sit behind it (RFC 3261 §10)."""

    registrar: str
    """``sip:registrar.example.com``."""
    aor: str | None = None
    """Address of record; default ``sip:<username>@<registrar host>``."""
    username: str | None = None
    password: SecretStr | None = None
    expires: int = Field(600, ge=60)


class SipSettings(BaseModel):
    """The SIP user agent and its RTP media."""

    enabled: bool = True
    port: int = Field(5060, ge=0, le=65535)
    """SIP port (``voice serve --sip-port``; 0 turns SIP off)."""
    bind: str | None = None
    """Address to listen on (SIP and RTP); default: the service's ``host``."""
    transports: list[Literal["udp", "tcp"]] = Field(default_factory=_both_transports)
    public_address: str | None = None
    """The address peers reach us at (Via, Contact, SDP ``c=``); default: the bind address."""
    rtp_port_min: int = Field(20000, ge=1024, le=65534)
    rtp_port_max: int = Field(20999, ge=1025, le=65535)
    allowed_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8"])
    """Source networks allowed to send requests (CIDR); others get 403 Forbidden."""
    auth_realm: str = "voice"
    auth_algorithms: list[Literal["SHA-256", "MD5"]] = Field(default_factory=_algorithms)
    """Digest algorithms offered to callers, strongest first (one challenge each, RFC 8760)."""
    auth_users: dict[str, SecretStr] = Field(default_factory=dict)
    """Digest users (name -> password); with any set, INVITEs must authenticate (401)."""
    agent: str | None = None
    """The agent inbound SIP calls talk to; default: the service's default agent."""
    metadata_headers: list[str] = Field(
        default_factory=lambda: ["User-Agent", "P-Asserted-Identity", "Diversion", "Subject"]
    )
    """SIP headers of the INVITE given to the agent as call metadata (``X-`` headers always are)."""
    answer_delay_ms: int = Field(0, ge=0, le=60_000)
    """Ring this long (180 Ringing) before answering."""
    jitter_target_ms: int = Field(60, ge=20, le=200)
    inband_dtmf: Literal["auto", "always", "off"] = "auto"
    """In-band DTMF detection on caller audio: ``auto`` when the peer did not negotiate telephone-event."""
    user_agent: str = "voice-sip/1.0"
    trunk: SipTrunk | None = None
    registration: SipRegister | None = None

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)  # raises ValueError for a bad one
        return value

    @model_validator(mode="after")
    def _ports(self) -> SipSettings:
        if self.rtp_port_max - self.rtp_port_min < 1:
            raise ValueError("rtp_port_max must be above rtp_port_min (RTP and RTCP take a pair)")
        return self

    def allows(self, host: str) -> bool:
        """Whether a request from ``host`` may be served (an address inside ``allowed_networks``)."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(net, strict=False) for net in self.allowed_networks)
