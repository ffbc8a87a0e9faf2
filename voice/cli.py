"""The ``voice`` command.

Sub-commands:
- ``voice serve``: the service (caller page, browser calls, operator API, metrics) on the embedded local
  engine, or on OpenAI when ``OPENAI_API_KEY`` is set, or on any Realtime endpoint given with ``--upstream``.
- ``voice calls``: list calls from the records database (read directly; the service need not run).
- ``voice call-show ID``: one call with its transcript, cost and recording.
- ``voice cost``: what calls cost: total, per call, per minute, cache hit rate, savings.
- ``voice hangup ID`` / ``voice token``: end a live call / mint a browser caller token through the running
  service's operator API.
- ``voice call TO [--from NUMBER] [--agent NAME]``: place an outbound phone call through Twilio (the running
  service's ``POST /api/calls``).
  ``voice call sip:USER@HOST[:PORT]`` calls out through the service's own SIP user agent instead
  (``POST /api/sip/calls``; ``--via twilio`` to dial a SIP URI through Twilio).
- ``voice engine``: run the local Realtime engine alone (the offline, OpenAI-compatible upstream).
- ``voice bench``: print the project's performance figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from voice.config import Settings, load_settings
from voice.errors import ConfigError, VoiceError
from voice.logs import configure_logging, get_logger


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file (also VOICE_CONFIG)")
    parser.add_argument("--log-level", help="debug, info, warning, error")
    parser.add_argument("--log-format", choices=["auto", "console", "json"])


def build_parser() -> argparse.ArgumentParser:
    """The ``voice`` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="voice", description="Realtime voice-agent telephony service")
    sub = parser.add_subparsers(dest="command", required=True)

    engine = sub.add_parser("engine", help="run the local Realtime engine (OpenAI Realtime GA protocol)")
    _common(engine)
    engine.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    engine.add_argument("--port", type=int, help="port to listen on (default 8080)")
    engine.add_argument("--agent", help="agent profile whose script the engine plays (default: restaurant)")
    engine.add_argument("--no-asr", action="store_true", help="turn offline speech recognition off")

    serve = sub.add_parser("serve", help="run the service: caller page, browser calls, operator API")
    _common(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080; 0 picks a free one)")
    serve.add_argument("--agent", help="default agent profile from prompts/ (default: restaurant)")
    serve.add_argument("--upstream", metavar="URL", help="any Realtime-compatible ws:// or wss:// endpoint")
    serve.add_argument("--no-asr", action="store_true", help="local engine without speech recognition")
    serve.add_argument("--max-calls", type=int, help="admission limit (default 100)")
    serve.add_argument("--db", type=Path, help="the call records database (default recordings/voice.db)")
    serve.add_argument("--sip-port", type=int, help="SIP port, UDP and TCP (default 5060; 0 turns SIP off)")

    from voice.records_cli import add_record_commands

    add_record_commands(sub, _common)

    bench = sub.add_parser("bench", help="print performance figures")
    _common(bench)
    bench.add_argument(
        "parts", nargs="*", default=[], help="which parts to run: audio, engine, sip (default: all)"
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(
        getattr(args, "config", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        log_level=getattr(args, "log_level", None),
        log_format=getattr(args, "log_format", None),
    )
    if getattr(args, "upstream", None):
        settings.upstream_url = args.upstream
    if getattr(args, "max_calls", None):
        settings.max_calls = args.max_calls
    if getattr(args, "db", None):
        settings.db_path = args.db
    if getattr(args, "sip_port", None) is not None:
        settings.sip.port = args.sip_port
    if getattr(args, "agent", None):
        settings.engine.agent = args.agent
        settings.agent = args.agent
    if getattr(args, "no_asr", False):
        settings.engine.asr = False
    return settings


def _run_engine(settings: Settings) -> None:
    from voice.engine.server import serve

    asyncio.run(serve(settings, settings.host, settings.port))


def _run_serve(settings: Settings) -> None:
    from voice.profiles import load_profile
    from voice.server import run

    load_profile(settings.agent, settings.prompts_dir)  # an unknown --agent fails now, with the known names
    run(settings)


def _run_bench(args: argparse.Namespace) -> None:
    from voice.bench import run_benchmarks

    run_benchmarks(args.parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``voice`` command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except (ConfigError, ValueError) as exc:
        print(f"voice: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger(command=args.command)
    try:
        if args.command == "engine":
            _run_engine(settings)
        elif args.command == "serve":
            _run_serve(settings)
        elif args.command == "bench":
            _run_bench(args)
        else:
            from voice.records_cli import run_record_command

            return run_record_command(args, settings)
    except KeyboardInterrupt:
        return 130
    except VoiceError as exc:
        log.error("command_failed", error=str(exc))
        print(f"voice: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
