"""Caller legs: each bridge turns a transport (Twilio Media Streams, SIP/RTP, WebRTC, browser WebSocket)
into a leg that a call drives without knowing the transport."""

from voice import native as _native

_native.enable()
