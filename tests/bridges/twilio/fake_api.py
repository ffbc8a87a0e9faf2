"""A local stand-in for Twilio's REST API on 127.0.0.1 (protocols.md §E.5), for the real ``twilio`` client.

:class:`FakeTwilioApi` is a threaded HTTP server that records every request (method, path, headers, the form
fields in order, repeated keys kept) and answers like Twilio's ``/2010-04-01/Accounts/{AccountSid}/Calls``
endpoints: ``POST …/Calls.json`` creates a call (201, status ``queued``), ``POST …/Calls/{CallSid}.json``
updates one (200). :meth:`FakeTwilioApi.respond` queues a canned answer for the next request instead (e.g.
Twilio's 400 with error 21211).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

_CREATE = re.compile(r"^/2010-04-01/Accounts/(AC[0-9a-fA-F]{32}|[^/]+)/Calls\.json$")
_UPDATE = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Calls/([^/]+)\.json$")


@dataclass(frozen=True, slots=True)
class ApiRequest:
    method: str
    path: str
    headers: dict[str, str]
    form: list[tuple[str, str]]

    def field(self, name: str) -> str | None:
        values = self.fields(name)
        return values[0] if values else None

    def fields(self, name: str) -> list[str]:
        return [value for key, value in self.form if key == name]

    @property
    def keys(self) -> set[str]:
        return {key for key, _ in self.form}

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        header = self.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user, password


@dataclass
class FakeTwilioApi:
    requests: list[ApiRequest] = field(default_factory=list)
    _canned: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def respond(self, status: int, body: dict[str, Any]) -> None:
        """Answer the next request with ``status`` and JSON ``body``."""
        with self._lock:
            self._canned.append((status, body))

    def answer(self, method: str, path: str, form: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if self._canned:
                return self._canned.popleft()
        fields = dict(form)
        create = _CREATE.match(path)
        if method == "POST" and create:
            return 201, _call_json(create.group(1), new_call_sid(), "queued", fields)
        update = _UPDATE.match(path)
        if method == "POST" and update:
            status = fields.get("Status", "in-progress")
            return 200, _call_json(update.group(1), update.group(2), status, fields)
        return 404, {"code": 20404, "message": "The requested resource was not found", "status": 404}

    def start(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self._handle("POST")

            def do_GET(self) -> None:
                self._handle("GET")

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                form = parse_qsl(body, keep_blank_values=True)
                headers = {key.lower(): value for key, value in self.headers.items()}
                with api._lock:
                    api.requests.append(ApiRequest(method, self.path, headers, form))
                status, answer = api.answer(method, self.path, form)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def new_call_sid() -> str:
    return "CA" + secrets.token_hex(16)


def _call_json(account_sid: str, sid: str, status: str, fields: dict[str, str]) -> dict[str, Any]:
    return {
        "sid": sid,
        "account_sid": account_sid,
        "status": status,
        "to": fields.get("To"),
        "from": fields.get("From"),
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "uri": f"/2010-04-01/Accounts/{account_sid}/Calls/{sid}.json",
    }


@contextmanager
def fake_twilio_api() -> Iterator[FakeTwilioApi]:
    api = FakeTwilioApi()
    api.start()
    try:
        yield api
    finally:
        api.stop()
