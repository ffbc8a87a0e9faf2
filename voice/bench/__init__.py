"""``voice bench``: performance figures printed as text, never asserted.

Each part is a module with a ``run() -> None`` that prints its own table. Ratios are against a baseline
measured in the same run where one exists, so figures from a busy machine still compare.
"""

from __future__ import annotations

import importlib
import platform
import time

PARTS = ("audio", "engine", "calls", "twilio", "sip", "webrtc")


def run_benchmarks(parts: list[str]) -> None:
    chosen = parts or list(PARTS)
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        names = ", ".join(PARTS)
        raise SystemExit(f"voice bench: unknown part(s) {', '.join(unknown)}; choose from {names}")
    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"# voice bench on {platform.machine()} {python}")
    for part in chosen:
        started = time.perf_counter()
        module = importlib.import_module(f"voice.bench.{part}")
        print(f"\n## {part}")
        module.run()
        print(f"({part}: {time.perf_counter() - started:.1f} s)")
