"""The engine's status page (``GET /``): version, agent, live sessions and how to connect."""

from __future__ import annotations

import time
from html import escape

from voice import __version__
from voice.engine.services import EngineServices

__all__ = ["render_status"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left}
code,pre{background:#f4f4f4;padding:.1rem .3rem;border-radius:3px}pre{padding:.8rem;overflow:auto}
.muted{color:#777}
"""


def render_status(services: EngineServices, base_url: str) -> str:
    """The HTML status page; ``base_url`` is the engine's ``http://host:port`` as the client reached it."""
    now = time.time()
    rows = "".join(
        "<tr>"
        f"<td><code>{escape(s.session_id)}</code></td><td>{escape(s.model)}</td><td>{escape(s.agent)}</td>"
        f"<td>{escape(s.peer)}</td><td>{now - s.connected_at:.0f} s</td><td>{s.responses}</td>"
        "</tr>"
        for s in services.live.values()
    )
    sessions = (
        "<table><tr><th>session</th><th>model</th><th>agent</th><th>peer</th><th>connected</th>"
        f"<th>responses</th></tr>{rows}</table>"
        if rows
        else '<p class="muted">No live sessions.</p>'
    )
    http_base = escape(base_url.rstrip("/") + "/v1")
    ws_base = escape(base_url.rstrip("/").replace("http", "ws", 1) + "/v1/realtime")
    recognition = "on (Whisper tiny.en)" if services.recognition else "off"
    uptime = now - services.started_at
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>voice engine</title><style>{_STYLE}</style></head>
<body>
<h1>Local Realtime engine</h1>
<p>voice {escape(__version__)} &middot; default agent <b>{escape(services.default_agent())}</b>
&middot; speech recognition {recognition} &middot; up {uptime:.0f} s</p>
<h2>Live sessions ({len(services.live)})</h2>
{sessions}
<h2>Connect</h2>
<p>The engine speaks the OpenAI Realtime API (GA) on <code>{ws_base}</code>. Any API key is accepted.
Choose the agent script with the <code>agent</code> query parameter.</p>
<pre>from openai import AsyncOpenAI

client = AsyncOpenAI(base_url="{http_base}", api_key="local")
async with client.realtime.connect(model="gpt-realtime") as conn:
    await conn.session.update(session={{"type": "realtime", "output_modalities": ["audio"]}})
    async for event in conn:
        print(event.type)</pre>
<p class="muted"><a href="/healthz">/healthz</a></p>
</body></html>
"""
