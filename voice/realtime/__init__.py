"""The OpenAI Realtime (GA) protocol layer (protocols.md §A-§C).

- :mod:`voice.realtime.events`: server events parsed into the SDK's GA models (never raising on remote
  input), client event validation with OpenAI's error payloads (for the local engine), and builders for
  the client events this service sends (:mod:`voice.realtime.builders`, :mod:`voice.realtime.ids`).
- :mod:`voice.realtime.client`: :class:`~voice.realtime.client.RealtimeConnection` over ``websockets`` and
  :func:`~voice.realtime.client.upstream_target` (OpenAI, Azure OpenAI, or any compatible URL).
- :mod:`voice.realtime.pricing`: exact ``Decimal`` pricing of ``usage`` objects.
"""
