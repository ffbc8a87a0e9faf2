"""The local Realtime engine: an offline server that speaks the OpenAI Realtime GA protocol.

It is the default upstream when no API key is configured, the upstream of the end-to-end tests and a cost
simulator. Clients (the official ``openai`` SDK, :mod:`voice.realtime.client`) cannot tell it from OpenAI:
same URL shape (``/v1/realtime?model=...``), same events, same errors, same truncation rules, same ``usage``.

Layout (pure cores first, then adapters):

- :mod:`voice.engine.session`: the sans-I/O session core (:class:`~voice.engine.session.EngineSession`);
  :mod:`voice.engine.effects` the work it hands out; :mod:`voice.engine.session_config` session defaults
  and ``session.update`` merging; :mod:`voice.engine.conversation` items and truncation;
  :mod:`voice.engine.responses` response options, output items and their events;
  :mod:`voice.engine.input_audio` the input buffer, timeline and server VAD; :mod:`voice.engine.formats`
  audio formats; :mod:`voice.engine.usage` token usage; :mod:`voice.engine.checks` field checks.
- :mod:`voice.engine.asr`, :mod:`voice.engine.tts`: offline speech recognition and synthesis;
  :mod:`voice.engine.responder` (and :mod:`voice.engine.chat`): what the agent says.
- :mod:`voice.engine.connection`: the asyncio adapter of one WebSocket session;
  :mod:`voice.engine.services` what sessions share; :mod:`voice.engine.server` the Starlette app
  (:func:`~voice.engine.server.create_app`) and :func:`~voice.engine.server.serve`;
  :mod:`voice.engine.status` the status page.
- :mod:`voice.engine.simulate`: price a scripted call offline (``python -m voice.engine.simulate``).
"""
