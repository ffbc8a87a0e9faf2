"""The per-frame modules compiled to C with mypyc, and the import hook that loads them.

A call's media path runs a few hundred Python calls per frame; at 200 calls that is most of a core. The
modules in ``MODULES`` hold that path and are fully typed (``mypy --strict``), so mypyc compiles them as
they are. ``python -m voice.nativebuild`` (run by ``scripts/setup.sh``) writes the compiled modules under
``voice/_native/`` with a manifest of their sources' SHA-256.

``enable()``, run when ``voice`` or ``bridges`` is first imported, loads them in place of the sources only
when every source still matches the manifest and the interpreter is the one they were built for. Compiled
modules call each other directly, so one edited source sends the whole set back to the interpreter, never
half of it. ``VOICE_NATIVE=0`` turns the hook off. ``state()`` says which way this process runs.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

__all__ = [
    "GROUP",
    "MANIFEST",
    "MODULES",
    "NATIVE_DIR",
    "ROOT",
    "NativeState",
    "digest",
    "enable",
    "source",
    "state",
]

ROOT = Path(__file__).resolve().parent.parent
NATIVE_DIR = ROOT / "voice" / "_native"
MANIFEST = "manifest.json"
GROUP = "voice_native"

MODULES: tuple[str, ...] = (
    "voice.jsontext",
    "voice.audio.g711",
    "voice.audio.pcm",
    "voice.realtime.ids",
    "voice.wsprotocol",
    "voice.call.bargein",
    "voice.call.core",
    "voice.call.cost",
    "voice.call.pacer",
    "voice.call.playout",
    "voice.call.recorder",
    "voice.call.runner",
    "voice.call.tool_calls",
    "voice.call.upstream_events",
    "bridges.twilio.marks",
    "bridges.twilio.protocol",
    "bridges.sip.jitter",
    "bridges.sip.rtp",
    "bridges.sip.rtp_session",
    "bridges.sip.telephone_event",
)


@dataclass(frozen=True, slots=True)
class NativeState:
    """Whether this process runs the compiled modules, and why not when it does not."""

    compiled: bool
    detail: str

    def __str__(self) -> str:
        return f"compiled ({self.detail})" if self.compiled else f"interpreted ({self.detail})"


_NOT_ENABLED = NativeState(False, "not enabled")
_state = _NOT_ENABLED


def source(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _NativeFinder:
    """A meta path finder that answers only for the compiled modules and their shared library."""

    def __init__(self, files: dict[str, Path]) -> None:
        self._files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        file = self._files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, str(file), loader=loader)


def _check(manifest: dict[str, object]) -> dict[str, Path] | str:
    """The files to load, or why the build cannot be used."""
    if manifest.get("cache_tag") != sys.implementation.cache_tag:
        return f"built for {manifest.get('cache_tag')}, running {sys.implementation.cache_tag}"
    modules = manifest.get("modules")
    if not isinstance(modules, dict) or sorted(modules) != sorted(MODULES):
        return "the build's module list is not this source's; run python -m voice.nativebuild"
    files: dict[str, Path] = {}
    for name, entry in modules.items():
        if not isinstance(entry, dict):
            return "manifest entry malformed"
        if digest(source(name)) != entry.get("sha256"):
            return f"{name} changed since the build; run python -m voice.nativebuild"
        files[name] = NATIVE_DIR / str(entry.get("file"))
    group = manifest.get("group")
    if not isinstance(group, dict):
        return "manifest has no shared library"
    files[str(group.get("name"))] = NATIVE_DIR / str(group.get("file"))
    missing = next((f for f in files.values() if not f.is_file()), None)
    return files if missing is None else f"missing {missing}"


def _usable_build() -> dict[str, Path] | str:
    """The files to load in place of the sources, or why this process runs interpreted."""
    if os.environ.get("VOICE_NATIVE", "1") == "0":
        return "VOICE_NATIVE=0"
    try:
        manifest = json.loads((NATIVE_DIR / MANIFEST).read_text())
    except FileNotFoundError:
        return "not built; run python -m voice.nativebuild"
    except (OSError, ValueError) as exc:
        return f"manifest unreadable: {exc}"
    if not isinstance(manifest, dict):
        return "manifest malformed"
    loaded = next((m for m in MODULES if m in sys.modules), None)
    if loaded is not None:
        return f"{loaded} was imported before the hook"
    return _check(manifest)


def enable() -> NativeState:
    """Install the finder once, if the build matches the sources. Safe to call more than once."""
    global _state
    if _state is not _NOT_ENABLED:
        return _state
    found = _usable_build()
    if isinstance(found, str):
        _state = NativeState(False, found)
    else:
        sys.meta_path.insert(0, _NativeFinder(found))
        _state = NativeState(True, f"{len(MODULES)} modules")
    return _state


def state() -> NativeState:
    return _state
