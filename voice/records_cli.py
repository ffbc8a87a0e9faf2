"""The operator's record commands of the ``voice`` CLI: ``calls``, ``call-show``, ``cost`` (read the SQLite
store directly, so they work whether or not the service runs) and ``hangup``, ``call``, ``token`` (through the
running service's operator API, with ``settings.api_token`` as the bearer token).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from voice.config import Settings
from voice.errors import RecordError
from voice.query import QueryError, parse_when
from voice.store import CallStore, parse_time

__all__ = ["add_record_commands", "format_duration", "format_usd", "run_record_command"]


def add_record_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``calls``, ``call-show``, ``cost``, ``hangup``, ``call`` and ``token`` to the sub-parsers."""
    calls = sub.add_parser("calls", help="list calls (live and past) from the records database")
    common(calls)
    calls.add_argument("--status", choices=["ringing", "live", "ended"])
    calls.add_argument("--leg", help="browser, twilio, sip, webrtc")
    calls.add_argument("--agent")
    calls.add_argument("--since", help="ISO 8601 time or an age such as 15m, 2h, 7d")
    calls.add_argument("--until", help="ISO 8601 time or an age")
    calls.add_argument("--limit", type=int, default=50)
    calls.add_argument("--json", action="store_true", help="print JSON")
    calls.add_argument("--db", type=Path, help="the records database (default: settings db_path)")

    show = sub.add_parser("call-show", help="show one call: record, transcript, cost, recording")
    common(show)
    show.add_argument("call_id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("--db", type=Path, help="the records database (default: settings db_path)")

    cost = sub.add_parser(
        "cost", help="what calls cost: total, per call, per minute, cache hit rate, savings"
    )
    common(cost)
    cost.add_argument("--since", help="ISO 8601 time or an age such as 15m, 2h, 7d")
    cost.add_argument("--until", help="ISO 8601 time or an age")
    cost.add_argument("--agent")
    cost.add_argument("--leg")
    cost.add_argument("--by-call", action="store_true", help="one line per call as well")
    cost.add_argument("--json", action="store_true", help="print JSON")
    cost.add_argument("--db", type=Path, help="the records database (default: settings db_path)")

    hangup = sub.add_parser("hangup", help="end a live call through the running service")
    common(hangup)
    hangup.add_argument("call_id")
    hangup.add_argument("--url", help="the service's base URL (default http://HOST:PORT from settings)")

    call = sub.add_parser(
        "call", help="place an outbound call: through Twilio, or a sip: URI through our own SIP user agent"
    )
    common(call)
    call.add_argument("to", help="the number to call (E.164, e.g. +15551230000), a sip: URI or client:NAME")
    call.add_argument("--from", dest="from_number", help="caller id (default VOICE_TWILIO_FROM_NUMBER)")
    call.add_argument("--agent", dest="call_agent", help="the agent that talks (default: the default agent)")
    call.add_argument(
        "--machine-detection",
        choices=["off", "Enable", "DetectMessageEnd"],
        help="answering-machine detection (default VOICE_TWILIO_MACHINE_DETECTION)",
    )
    call.add_argument(
        "--ring-timeout", type=int, help="seconds to let the phone ring (Twilio 5-600, SIP 1-600)"
    )
    call.add_argument(
        "--via",
        choices=["auto", "twilio", "sip"],
        default="auto",
        help="auto (default): sip: URIs through the service's own SIP user agent, the rest through Twilio",
    )
    call.add_argument(
        "--wait",
        action="store_true",
        help="SIP: return once the callee answered (or the call failed) instead of while it dials",
    )
    call.add_argument("--url", help="the service's base URL (default http://HOST:PORT from settings)")

    token = sub.add_parser("token", help="mint a short-lived browser caller token (POST /api/tokens)")
    common(token)
    token.add_argument("--agent", dest="token_agent", help="restrict the token to this agent")
    token.add_argument("--origin", help="restrict the token to pages of this origin")
    token.add_argument("--ttl", type=int, default=300, help="lifetime in seconds (default 300)")
    token.add_argument("--url", help="the service's base URL (default http://HOST:PORT from settings)")


# -- formatting ------------------------------------------------------------------------------------------


def format_usd(value: str | Decimal | None, places: int = 4) -> str:
    """``$0.0421`` (exact text rounded for display; ``-`` for none)."""
    if value is None or value == "":
        return "-"
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    return f"${amount:.{places}f}"


def format_duration(ms: int | None) -> str:
    """``1:05`` for 65 s, ``1:02:03`` past an hour, ``-`` for none."""
    if ms is None:
        return "-"
    seconds = int(ms) // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _local_time(text: str | None) -> str:
    if not text:
        return "-"
    try:
        return parse_time(text).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except RecordError:
        return text


def _percent(value: str | None) -> str:
    if value is None:
        return "-"
    return f"{Decimal(value) * 100:.1f}%"


def _table(rows: list[list[str]], header: list[str], out: TextIO) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip(), file=out)


def _dump(data: Any, out: TextIO) -> None:
    print(json.dumps(data, indent=2, default=str), file=out)


# -- commands --------------------------------------------------------------------------------------------


def _open_store(settings: Settings, args: argparse.Namespace) -> CallStore | None:
    path = Path(args.db) if getattr(args, "db", None) else settings.db_path
    if not path.exists():
        return None
    return CallStore(path)


def _when(text: str | None) -> datetime | None:
    return parse_when(text) if text else None


def _calls(args: argparse.Namespace, store: CallStore, out: TextIO) -> int:
    rows = store.list_calls(
        status=args.status,
        leg=args.leg,
        agent=args.agent,
        since=_when(args.since),
        until=_when(args.until),
        limit=max(0, args.limit),
    )
    if args.json:
        _dump(rows, out)
        return 0
    if not rows:
        print("no calls", file=out)
        return 0
    table = [
        [
            row["id"],
            _local_time(row["started_at"]),
            row["status"],
            row["leg"],
            row.get("agent") or "-",
            row.get("caller") or "-",
            format_duration(row.get("duration_ms")),
            format_usd(row.get("cost_usd")),
            row.get("end_reason") or "-",
        ]
        for row in rows
    ]
    _table(table, ["ID", "STARTED", "STATUS", "LEG", "AGENT", "CALLER", "DURATION", "COST", "END"], out)
    return 0


def _transcript_line(event: dict[str, Any]) -> str:
    t = event.get("t_ms", 0) / 1000
    kind = event.get("kind", "")
    text = event.get("text", "")
    data = event.get("data") or {}
    stamp = f"[{int(t // 60):02d}:{t % 60:04.1f}]"
    if kind == "agent":
        if not text and data.get("generated_text"):
            text = f"[not heard: {data['generated_text']}]"
        note = ""
        if data.get("interrupted"):
            heard = data.get("heard_ms")
            note = " (interrupted" + (f", heard {heard / 1000:.1f} s" if isinstance(heard, int) else "") + ")"
        return f"{stamp} agent:  {text}{note}"
    if kind == "caller":
        return f"{stamp} caller: {text}"
    if kind == "dtmf":
        return f"{stamp} keypad: {data.get('digits', text)}"
    if kind == "tool_call":
        return f"{stamp} tool:   {data.get('name', '')}({data.get('arguments', '')})"
    if kind == "tool_result":
        return f"{stamp} result: {data.get('error') or data.get('output', text)}"
    if kind == "barge_in":
        return f"{stamp} -- caller barged in --"
    return f"{stamp} {kind}: {text}"


def _call_show(args: argparse.Namespace, store: CallStore, out: TextIO) -> int:
    try:
        call = store.call_detail(args.call_id)
    except RecordError:
        print(f"voice: no call {args.call_id!r}", file=sys.stderr)
        return 1
    if args.json:
        _dump(call, out)
        return 0
    cost = call.get("cost") or {}
    lines = [
        f"call       {call['id']}",
        f"status     {call['status']}" + (f" ({call['end_reason']})" if call.get("end_reason") else ""),
        f"leg        {call['leg']}   agent {call.get('agent') or '-'}   model {call.get('model') or '-'}",
        f"caller     {call.get('caller') or '-'}" + (f" -> {call['callee']}" if call.get("callee") else ""),
        f"started    {_local_time(call.get('started_at'))}   ended {_local_time(call.get('ended_at'))}",
        f"duration   {format_duration(call.get('duration_ms'))}",
        f"cost       {format_usd(call.get('cost_usd'), 6)}"
        f"   per minute {format_usd(cost.get('per_minute_usd'))}"
        f"   cache hit {_percent(cost.get('cached_share'))}   saved {format_usd(cost.get('savings_usd'), 6)}",
        f"recording  {call.get('recording_path') or '-'}",
        "",
        "transcript:",
    ]
    for line in lines:
        print(line, file=out)
    transcript = call.get("transcript") or []
    if not transcript:
        print("  (empty)", file=out)
    for event in transcript:
        print("  " + _transcript_line(event), file=out)
    return 0


def _cost(args: argparse.Namespace, store: CallStore, out: TextIO) -> int:
    summary = store.cost_summary(_when(args.since), _when(args.until), agent=args.agent, leg=args.leg)
    if args.json:
        _dump(summary, out)
        return 0
    lines = [
        f"calls            {summary['calls']}",
        f"minutes          {Decimal(summary['minutes']):.2f}",
        f"total            {format_usd(summary['total_usd'], 6)}"
        f"  (responses {format_usd(summary['response_usd'], 6)},"
        f" transcription {format_usd(summary['transcription_usd'], 6)})",
        f"per call         {format_usd(summary['per_call_usd'], 6)}",
        f"per minute       {format_usd(summary['per_minute_usd'], 6)}",
        f"cache hit rate   {_percent(summary['cache_hit_rate'])}"
        f"  ({summary['cached_input_tokens']} of {summary['input_tokens']} input tokens)",
        f"savings          {format_usd(summary['savings_usd'], 6)}",
    ]
    for line in lines:
        print(line, file=out)
    if args.by_call and summary["by_call"]:
        print("", file=out)
        table = [
            [
                row["id"],
                _local_time(row["started_at"]),
                row.get("agent") or "-",
                format_duration(row.get("duration_ms")),
                format_usd(row["total_usd"], 6),
                format_usd(row["per_minute_usd"]),
                _percent(row["cache_hit_rate"]),
                format_usd(row["savings_usd"], 6),
            ]
            for row in summary["by_call"]
        ]
        _table(table, ["ID", "STARTED", "AGENT", "DURATION", "COST", "PER MIN", "CACHE HIT", "SAVED"], out)
    return 0


def _base_url(settings: Settings, args: argparse.Namespace) -> str:
    if getattr(args, "url", None):
        return str(args.url).rstrip("/")
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(settings.host, settings.host)
    return f"http://{host}:{settings.port}"


def _api(
    settings: Settings,
    args: argparse.Namespace,
    path: str,
    body: dict[str, Any] | None,
    *,
    timeout_s: float = 10.0,
) -> Any:
    import httpx

    headers = {}
    if settings.api_token is not None:
        headers["Authorization"] = f"Bearer {settings.api_token.get_secret_value()}"
    url = _base_url(settings, args) + path
    try:
        response = httpx.post(url, json=body or {}, headers=headers, timeout=timeout_s, trust_env=False)
    except httpx.HTTPError as exc:
        raise RecordError(f"cannot reach the service at {_base_url(settings, args)}: {exc}") from None
    try:
        data = response.json()
    except ValueError:
        data = {"error": {"message": response.text[:200]}}
    if response.status_code >= 400:
        message = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
        raise RecordError(f"HTTP {response.status_code}: {message or response.reason_phrase}")
    return data


def _call(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    """``voice call TO``: ask the running service to place the call; Twilio's refusal is an error."""
    via = getattr(args, "via", "auto")
    if via == "sip" or (via == "auto" and args.to.lower().startswith(("sip:", "sips:"))):
        return _sip_call(settings, args, out)
    request: dict[str, Any] = {"to": args.to}
    if via == "twilio":
        request["via"] = "twilio"  # a sip: URI dialled by Twilio, not by our own user agent
    for key, value in (
        ("from", args.from_number),
        ("agent", args.call_agent),
        ("machine_detection", args.machine_detection),
        ("ring_timeout_s", args.ring_timeout),
    ):
        if value is not None:
            request[key] = value
    data = _api(settings, args, "/api/calls", request)
    print(
        f"{data['call_id']}: {data['status']} (Twilio CallSid {data['call_sid']}; "
        f"{data['from']} -> {data['to']}, agent {data['agent']})",
        file=out,
    )
    return 0


def _sip_call(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    """``voice call sip:...``: the service calls out through its own SIP user agent (``POST /api/sip/calls``)
    and prints the call id and state (``dialing``; with ``--wait`` ``answered``, or the failure)."""
    request: dict[str, Any] = {"to": args.to}
    if args.from_number is not None:
        request["from"] = args.from_number
    if args.call_agent is not None:
        request["agent"] = args.call_agent
    if args.ring_timeout is not None:
        request["ring_timeout_s"] = args.ring_timeout
    wait = bool(getattr(args, "wait", False))
    if wait:
        request["wait"] = True
    ring_s = args.ring_timeout if args.ring_timeout is not None else 60
    data = _api(settings, args, "/api/sip/calls", request, timeout_s=ring_s + 45.0 if wait else 10.0)
    print(f"{data['call_id']}: {data['status']} (SIP; -> {data['to']}, agent {data['agent']})", file=out)
    return 0


def run_record_command(args: argparse.Namespace, settings: Settings, out: TextIO | None = None) -> int:
    """Run ``calls``, ``call-show``, ``cost``, ``hangup``, ``call`` or ``token``; the process exit code."""
    stream = out or sys.stdout
    try:
        if args.command == "hangup":
            data = _api(settings, args, f"/api/calls/{args.call_id}/hangup", None)
            print(f"{data['call_id']}: {data['status']}", file=stream)
            return 0
        if args.command == "call":
            return _call(settings, args, stream)
        if args.command == "token":
            body: dict[str, Any] = {"ttl_s": args.ttl}
            if args.token_agent:
                body["agent"] = args.token_agent
            if args.origin:
                body["origin"] = args.origin
            _dump(_api(settings, args, "/api/tokens", body), stream)
            return 0
        store = _open_store(settings, args)
        if store is None:
            if args.command == "call-show":
                print(f"voice: no call {args.call_id!r} (no records database yet)", file=sys.stderr)
                return 1
            empty = '{"calls": 0}' if args.command == "cost" else "[]"
            print(
                empty if getattr(args, "json", False) else "no calls (no records database yet)", file=stream
            )
            return 0
        with store:
            if args.command == "calls":
                return _calls(args, store, stream)
            if args.command == "call-show":
                return _call_show(args, store, stream)
            if args.command == "cost":
                return _cost(args, store, stream)
    except (QueryError, RecordError) as exc:
        print(f"voice: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, QueryError) else 1
    raise ValueError(f"not a record command: {args.command}")
