"""The operator API's documentation: a hand-written OpenAPI 3.1 document and an HTML page rendered from it.

``GET /api/openapi.json`` serves :func:`openapi`; ``GET /api/docs`` serves :func:`render_docs` (plain HTML,
no scripts, no outside assets). ``tests/test_server.py`` checks that every HTTP route of the app is
documented here and that the examples match what the server returns.
"""

from __future__ import annotations

import html
import json
from typing import Any, Final

__all__ = ["PATHS", "openapi", "render_docs"]

_ERROR: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {
                    "type": "string",
                    "description": "Stable machine-readable reason: unauthorized, forbidden, token_expired, "
                    "token_invalid, origin_refused, not_found, not_live, no_recording, invalid_query, "
                    "invalid_request, unknown_agent.",
                },
                "message": {"type": "string", "description": "Human-readable explanation."},
            },
        }
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    """A JSON request body with ``schema``."""
    body: dict[str, Any] = {"content": {"application/json": {"schema": schema}}}
    if required:
        body = {"required": True, **body}
    return body


def _err(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_AUTH_ERRORS: Final[dict[str, Any]] = {
    "401": _err("Missing or wrong bearer token."),
    "403": _err("No api_token is configured and the client is not on loopback."),
}

_CALL: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "example": "call_5f0c2a9d4e1b47a0b3c2d1e0"},
        "leg": {"type": "string", "enum": ["browser", "twilio", "sip", "webrtc"]},
        "caller": {"type": ["string", "null"]},
        "callee": {"type": ["string", "null"]},
        "agent": {"type": ["string", "null"]},
        "model": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["ringing", "live", "ended"]},
        "started_at": {"type": "string", "format": "date-time"},
        "answered_at": {"type": ["string", "null"], "format": "date-time"},
        "ended_at": {"type": ["string", "null"], "format": "date-time"},
        "end_reason": {
            "type": ["string", "null"],
            "description": "caller_hangup, agent_end_call, transferred, operator, shutdown, budget, error, "
            "crashed, ...",
        },
        "duration_ms": {"type": ["integer", "null"]},
        "cost_usd": {"type": "string", "description": "Exact decimal USD.", "example": "0.0421"},
        "usage": {"type": ["object", "null"], "description": "Token totals."},
        "cost": {
            "type": ["object", "null"],
            "description": "Cost breakdown: fresh/cached, audio/text, cache hit rate, savings, per minute.",
        },
        "recording_path": {"type": ["string", "null"]},
        "recording_url": {"type": ["string", "null"], "example": "/api/calls/call_.../recording"},
        "metadata": {"type": "object"},
        "live": {
            "type": ["object", "null"],
            "description": "For a live call: the runner's snapshot (live duration, cost so far, state).",
        },
    },
}

_TRANSCRIPT_EVENT: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "call_id": {"type": "string"},
        "seq": {"type": "integer"},
        "t_ms": {"type": "integer", "description": "ms since the call started"},
        "kind": {
            "type": "string",
            "enum": ["caller", "agent", "dtmf", "tool_call", "tool_result", "barge_in", "error", "system"],
        },
        "text": {"type": "string"},
        "data": {"type": "object", "description": "agent: item_id, interrupted, heard_ms, generated_text"},
    },
}

_CALL_DETAIL: Final[dict[str, Any]] = {
    "allOf": [
        _ref("Call"),
        {
            "type": "object",
            "properties": {
                "transcript": {"type": "array", "items": _ref("TranscriptEvent")},
                "usage_events": {"type": "array", "items": {"type": "object"}},
            },
        },
    ]
}

_ID_PARAM: Final[dict[str, Any]] = {
    "name": "call_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}

_TIME_HELP: Final = "ISO 8601 (naive = UTC) or an age before now such as 15m, 2h, 7d."

PATHS: Final[dict[str, Any]] = {
    "/api/agents": {
        "get": {
            "summary": "Agents a caller can choose (public, no auth).",
            "security": [],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "default": {"type": "string"},
                            "agents": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "name": {"type": "string"},
                                        "description": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                    "The agent profiles in prompts/.",
                )
            },
        }
    },
    "/api/calls": {
        "get": {
            "summary": "List live and past calls, newest first.",
            "parameters": [
                {
                    "name": "status",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["ringing", "live", "ended"]},
                },
                {"name": "leg", "in": "query", "schema": {"type": "string"}},
                {"name": "agent", "in": "query", "schema": {"type": "string"}},
                {"name": "since", "in": "query", "schema": {"type": "string"}, "description": _TIME_HELP},
                {"name": "until", "in": "query", "schema": {"type": "string"}, "description": _TIME_HELP},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "default": 100, "maximum": 1000},
                },
                {"name": "offset", "in": "query", "schema": {"type": "integer", "default": 0}},
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "calls": {"type": "array", "items": _ref("Call")},
                            "total": {"type": "integer"},
                            "limit": {"type": "integer"},
                            "offset": {"type": "integer"},
                        },
                    },
                    "A page of calls and the total that match.",
                ),
                "400": _err("A filter could not be understood."),
                **_AUTH_ERRORS,
            },
        },
        "post": {
            "summary": "Place an outbound call that connects the callee to an agent (Twilio, or SIP).",
            "description": "A `to` that is a sip:/sips: URI is called through the service's own SIP user "
            "agent, exactly as POST /api/sip/calls (the body and answers of that route), unless the body "
            'says `"via": "twilio"`; `"via": "sip"` forces it. Phone numbers and client:NAME go through '
            "Twilio: needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and VOICE_PUBLIC_URL. The call "
            "record is created at once with status ringing; Twilio's status callbacks (POST /twilio/status) "
            "record the outcome (completed, busy, no_answer, failed, canceled) and answering-machine "
            "results. When the callee answers, the call's Media Stream connects and the record goes live "
            "under the same id. Also `voice call TO [--from NUMBER] [--agent NAME]`.",
            "requestBody": _json_body(
                {
                    "type": "object",
                    "required": ["to"],
                    "properties": {
                        "to": {
                            "type": "string",
                            "description": "E.164 number, sip: URI or client:NAME.",
                            "example": "+15551230000",
                        },
                        "from": {
                            "type": "string",
                            "description": "Caller id (a Twilio number); default VOICE_TWILIO_FROM_NUMBER.",
                        },
                        "agent": {"type": "string", "description": "Agent profile; default agent."},
                        "via": {
                            "type": "string",
                            "enum": ["twilio", "sip"],
                            "description": "Default: sip for sip:/sips: URIs, else twilio.",
                        },
                        "machine_detection": {
                            "type": "string",
                            "enum": ["off", "Enable", "DetectMessageEnd"],
                            "description": "Answering-machine detection; default "
                            "VOICE_TWILIO_MACHINE_DETECTION.",
                        },
                        "ring_timeout_s": {"type": "integer", "minimum": 5, "maximum": 600},
                    },
                }
            ),
            "responses": {
                "201": _json(
                    {
                        "type": "object",
                        "properties": {
                            "call_id": {"type": "string"},
                            "call_sid": {"type": "string", "description": "Twilio's CallSid."},
                            "status": {"type": "string", "example": "queued"},
                            "to": {"type": "string"},
                            "from": {"type": "string"},
                            "agent": {"type": "string"},
                        },
                    },
                    "Twilio accepted the call; the callee's phone rings.",
                ),
                "400": _err(
                    "Invalid body or number (code invalid_request), or Twilio refused the request "
                    "(code twilio_error with twilio_status, twilio_code, twilio_message, more_info)."
                ),
                "404": _err("Unknown agent, or Twilio answered 404 (code twilio_error)."),
                "502": _err("Twilio could not be reached or refused our credentials (code twilio_error)."),
                "503": _err("Twilio is not configured (twilio_not_configured) or the service is draining."),
                **_AUTH_ERRORS,
            },
        },
    },
    "/api/calls/{call_id}": {
        "get": {
            "summary": "One call: record, transcript, usage events, cost and recording link.",
            "parameters": [_ID_PARAM],
            "responses": {
                "200": _json(_ref("CallDetail"), "The call."),
                "404": _err("No such call."),
                **_AUTH_ERRORS,
            },
        }
    },
    "/api/calls/{call_id}/hangup": {
        "post": {
            "summary": "End a live call politely (the caller hears the end; the record is saved).",
            "parameters": [_ID_PARAM],
            "responses": {
                "202": _json(
                    {
                        "type": "object",
                        "properties": {"call_id": {"type": "string"}, "status": {"const": "ending"}},
                    },
                    "The call is ending.",
                ),
                "404": _err("No such call."),
                "409": _err("The call is not live in this process."),
                **_AUTH_ERRORS,
            },
        }
    },
    "/api/calls/{call_id}/recording": {
        "get": {
            "summary": "The call's stereo recording (caller left, agent right, as heard).",
            "parameters": [_ID_PARAM],
            "responses": {
                "200": {"description": "WAV file.", "content": {"audio/wav": {}}},
                "404": _err("No such call or no recording."),
                **_AUTH_ERRORS,
            },
        }
    },
    "/api/sip/calls": {
        "post": {
            "summary": "Place an outbound SIP call through the service's own user agent (bridges/sip).",
            "description": "The service sends an INVITE with an SDP offer (PCMU, PCMA, telephone-event) to "
            "the sip: URI, through the configured trunk when there is one (Digest authentication on "
            "401/407). It answers at once (status dialing; the record exists with status ringing and "
            "metadata.sip.state dialing, ringing or early_media) and dials in the background. Answered: the "
            "call runs like an inbound one under the same id; early media with speech (an IVR speaking "
            "before it answers) reaches the agent first, ringback alone does not. Not answered: the record "
            "ends with end_reason busy, no_answer, rejected, canceled or failed and metadata.sip.status_code "
            "and reason (GET /api/calls/{id}). sips: URIs need TLS, which the user agent does not offer "
            "(400). Also `voice call sip:USER@HOST[:PORT] [--agent NAME] [--wait]`.",
            "requestBody": _json_body(
                {
                    "type": "object",
                    "required": ["to"],
                    "properties": {
                        "to": {"type": "string", "example": "sip:alice@192.0.2.10:5060"},
                        "from": {"type": "string", "description": "User part of our From."},
                        "agent": {"type": "string", "description": "Agent profile; default agent."},
                        "ring_timeout_s": {"type": "number", "minimum": 1, "maximum": 600},
                        "wait": {
                            "type": "boolean",
                            "description": "Answer only once the call is answered (201) or failed (502).",
                        },
                    },
                }
            ),
            "responses": {
                "201": _json(
                    {
                        "type": "object",
                        "properties": {
                            "call_id": {"type": "string"},
                            "status": {"type": "string", "enum": ["dialing", "answered"]},
                            "to": {"type": "string"},
                            "from": {"type": "string"},
                            "agent": {"type": "string"},
                            "via": {"const": "sip"},
                        },
                    },
                    "Dialing under call_id (answered with wait).",
                ),
                "400": _err("The body or the sip: URI could not be used."),
                "404": _err("Unknown agent."),
                "502": _err(
                    "With wait: the call failed (error.outcome, error.sip_status: the SIP final response, "
                    "408 when nothing answered; error.call_id: its record)."
                ),
                "503": _err("SIP is off, or no call slot (busy, draining)."),
                **_AUTH_ERRORS,
            },
        }
    },
    "/api/tokens": {
        "post": {
            "summary": "Mint a short-lived signed caller token for a public page or the widget.",
            "description": "Give the token to the page (widget data-token or data-token-url). It authorizes "
            "one call (/ws/browser or WebRTC) until it expires, for the given agent and page origin if set; "
            "a second call with the same token is refused (token_used): mint one per call.",
            "requestBody": _json_body(
                {
                    "type": "object",
                    "properties": {
                        "agent": {"type": "string", "description": "Restrict to this agent."},
                        "origin": {
                            "type": "string",
                            "description": "Restrict to pages of this origin (scheme://host[:port]).",
                        },
                        "ttl_s": {"type": "number", "default": 300, "maximum": 86400},
                    },
                },
                required=False,
            ),
            "responses": {
                "201": _json(
                    {
                        "type": "object",
                        "properties": {
                            "token": {"type": "string"},
                            "expires_at": {"type": "integer", "description": "Unix seconds."},
                            "agent": {"type": ["string", "null"]},
                            "origin": {"type": ["string", "null"]},
                            "ws_path": {
                                "type": "string",
                                "example": "/ws/browser?token=...&agent=restaurant",
                            },
                        },
                    },
                    "The token.",
                ),
                "400": _err("Invalid body."),
                "404": _err("Unknown agent."),
                **_AUTH_ERRORS,
            },
        }
    },
    "/twilio/voice": {
        "post": {
            "summary": "Twilio's incoming-call webhook (set it as the number's voice URL; HTTP POST).",
            "description": "Signed by Twilio (X-Twilio-Signature, checked against VOICE_PUBLIC_URL). "
            "Answers TwiML that connects the call to the agent over a bidirectional Media Stream "
            "(WS /twilio/stream). "
            "The agent: ?agent=NAME on the webhook URL, else the called number's agent "
            "(VOICE_TWILIO_NUMBERS), else the default. Busy: <Say> a busy message, <Hangup/>.",
            "security": [],
            "parameters": [{"name": "agent", "in": "query", "schema": {"type": "string"}}],
            "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}},
            "responses": {
                "200": {"description": "TwiML.", "content": {"application/xml": {}}},
                "400": {"description": "No CallSid.", "content": {"text/plain": {}}},
                "403": {"description": "Missing or wrong signature.", "content": {"text/plain": {}}},
            },
        }
    },
    "/twilio/status": {
        "post": {
            "summary": "Twilio's call status and answering-machine callbacks (signed), recorded on the call.",
            "security": [],
            "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}},
            "responses": {
                "200": {"description": "Recorded (empty TwiML).", "content": {"application/xml": {}}},
                "400": {"description": "No CallSid.", "content": {"text/plain": {}}},
                "403": {"description": "Missing or wrong signature.", "content": {"text/plain": {}}},
            },
        }
    },
    "/webrtc/config": {
        "get": {
            "summary": "ICE servers for a WebRTC caller page (caller auth like /ws/browser).",
            "description": "Public to callers: a caller token (?token=) or a loopback page in development; "
            "the Origin must be allowed. Answers {ice_servers, ice_transport_policy} for "
            "new RTCPeerConnection(). Used by the widget before POST /webrtc/offer.",
            "security": [],
            "parameters": [
                {"name": "agent", "in": "query", "schema": {"type": "string"}},
                {"name": "token", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _json({"type": "object"}, "ICE servers (with TURN credentials when configured)."),
                "401": _err("A caller token is required."),
                "403": _err("Origin not allowed, or the token is for another agent or origin."),
                "404": _err("WebRTC is switched off (webrtc_disabled)."),
            },
        },
        "options": {
            "summary": "CORS preflight (allowed origins only).",
            "security": [],
            "responses": {"204": {"description": "Allowed."}, "403": _err("Origin not allowed.")},
        },
    },
    "/webrtc/offer": {
        "post": {
            "summary": "Call over WebRTC: a complete SDP offer in, the answer out (auth as /ws/browser).",
            "description": "Body {sdp, type: offer} with every ICE candidate (no trickle), one sendrecv "
            "Opus audio section and, for the JSON control messages of bridges/browser/PROTOCOL.md, a data "
            "channel labelled control. The call starts when the peer connection connects; one that does not "
            "connect within webrtc.connect_timeout_s is recorded as ended (connect_timeout).",
            "security": [],
            "parameters": [
                {"name": "agent", "in": "query", "schema": {"type": "string"}},
                {"name": "token", "in": "query", "schema": {"type": "string"}},
            ],
            "requestBody": _json_body(
                {
                    "type": "object",
                    "required": ["sdp", "type"],
                    "properties": {"sdp": {"type": "string"}, "type": {"const": "offer"}},
                },
                required=False,
            ),
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "sdp": {"type": "string"},
                            "type": {"const": "answer"},
                            "call_id": {"type": "string"},
                        },
                    },
                    "The answer, with the service's ICE candidates.",
                ),
                "400": _err("A bad or unsupported offer, with the reason (bad_offer, unsupported, ...)."),
                "401": _err("A caller token is required."),
                "403": _err("Origin not allowed, or the token is for another agent or origin."),
                "404": _err("Unknown agent, or WebRTC is switched off (webrtc_disabled)."),
                "503": _err("No call slot (busy, draining); Retry-After."),
            },
        },
        "options": {
            "summary": "CORS preflight (allowed origins only).",
            "security": [],
            "responses": {"204": {"description": "Allowed."}, "403": _err("Origin not allowed.")},
        },
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text exposition format); operator auth like the API.",
            "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {}}}, **_AUTH_ERRORS},
        }
    },
    "/healthz": {
        "get": {
            "summary": "Liveness (public).",
            "security": [],
            "responses": {"200": _json({"type": "object"}, "The process is up.")},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness (public): 503 while draining or before the upstream is usable.",
            "security": [],
            "responses": {
                "200": _json({"type": "object"}, "Ready for calls."),
                "503": _json({"type": "object"}, "Not ready (see detail and draining)."),
            },
        }
    },
    "/api/openapi.json": {
        "get": {
            "summary": "This document (public).",
            "security": [],
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
        }
    },
    "/api/docs": {
        "get": {
            "summary": "This document as a page (public).",
            "security": [],
            "responses": {"200": {"description": "HTML.", "content": {"text/html": {}}}},
        }
    },
}

_DESCRIPTION: Final = """Operator API of the voice-agent telephony service.

Authentication: `Authorization: Bearer <api_token>` (setting `api_token`, env `VOICE_API_TOKEN`). With no
token configured the API answers only to loopback clients that call it by a loopback host name.

Browser calls use the WebSocket `/ws/browser?agent=NAME&token=TOKEN` (protocol in
`bridges/browser/PROTOCOL.md`); tokens come from `POST /api/tokens`, one per call. Close codes: 1000 normal,
1008 refused (auth, origin, token already used, unknown agent), 1013 busy, draining or rate limited (try
again later), 1011 internal error.

WebRTC calls (the widget's default): `GET /webrtc/config` for the ICE servers, then `POST /webrtc/offer` with
a complete SDP offer; the same caller tokens and origin checks as `/ws/browser`.

Twilio: point a number's voice webhook at `POST /twilio/voice` (HTTP POST); calls then stream over
`WS /twilio/stream`. Both and `POST /twilio/status` are signed by Twilio (`X-Twilio-Signature`, checked
against `VOICE_PUBLIC_URL`); they do not use the bearer token.

Errors are JSON: `{"error": {"code": "...", "message": "..."}}`. Money is exact decimal text (USD).
"""


def openapi(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the operator API."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "voice operator API", "version": version, "description": _DESCRIPTION},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": PATHS,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "Call": _CALL,
                "CallDetail": _CALL_DETAIL,
                "TranscriptEvent": _TRANSCRIPT_EVENT,
            },
        },
    }


def _schema_text(schema: Any) -> str:
    return html.escape(json.dumps(schema, indent=2))


def render_docs(spec: dict[str, Any]) -> str:
    """A self-contained HTML page listing every operation of ``spec`` with parameters and responses."""
    info = spec["info"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(info['title'])}</title>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
        "color:#1d2433}h2{margin-top:2rem;font-family:ui-monospace,monospace;font-size:1.05rem}"
        ".m{display:inline-block;min-width:3.5rem;padding:.1rem .4rem;border-radius:.3rem;color:#fff;"
        "background:#2f6fde;font-size:.85rem;text-align:center}.m.post{background:#1f9d55}"
        "pre{background:#f3f5f9;padding:.6rem;border-radius:.4rem;overflow:auto;font-size:.8rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #dde2ea;padding:.2rem .5rem;text-align:left}"
        "details{margin:.3rem 0}.pub{color:#1f9d55;font-size:.85rem}</style></head><body>",
        f"<h1>{html.escape(info['title'])} <small>{html.escape(info['version'])}</small></h1>",
        "<pre>" + html.escape(info["description"]) + "</pre>",
        "<p><a href='/api/openapi.json'>openapi.json</a></p>",
    ]
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            public = op.get("security") == []
            parts.append(
                f"<h2><span class='m {method}'>{method.upper()}</span> {html.escape(path)}"
                + (" <span class=pub>public</span>" if public else "")
                + "</h2>"
            )
            parts.append(f"<p>{html.escape(op.get('summary', ''))}</p>")
            if op.get("description"):
                parts.append(f"<p>{html.escape(op['description'])}</p>")
            params = op.get("parameters", [])
            if params:
                parts.append("<table><tr><th>parameter</th><th>in</th><th>schema</th><th>notes</th></tr>")
                for p in params:
                    parts.append(
                        f"<tr><td>{html.escape(p['name'])}</td><td>{html.escape(p['in'])}</td>"
                        f"<td><code>{html.escape(json.dumps(p.get('schema', {})))}</code></td>"
                        f"<td>{html.escape(p.get('description', ''))}</td></tr>"
                    )
                parts.append("</table>")
            body = op.get("requestBody")
            if body:
                for media_type, media in body["content"].items():
                    parts.append(
                        f"<details><summary>request body ({html.escape(media_type)})</summary>"
                        f"<pre>{_schema_text(media.get('schema'))}</pre></details>"
                    )
            for status, response in op.get("responses", {}).items():
                content = response.get("content", {})
                schema = content.get("application/json", {}).get("schema")
                detail = f"<pre>{_schema_text(schema)}</pre>" if schema else ""
                parts.append(
                    f"<details><summary><b>{html.escape(status)}</b> {html.escape(response['description'])}"
                    f"</summary>{detail}</details>"
                )
    schemas = spec.get("components", {}).get("schemas", {})
    if schemas:
        parts.append("<h1>Schemas</h1>")
        for name, schema in schemas.items():
            parts.append(
                f"<details><summary>{html.escape(name)}</summary><pre>{_schema_text(schema)}</pre></details>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)
