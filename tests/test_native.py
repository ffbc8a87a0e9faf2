"""voice.native: the compiled per-frame modules load only when they match the sources, all or none."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voice import native

REPO = Path(__file__).resolve().parents[1]

_PROBE = (
    "import json, voice.native as n, voice.call.core, bridges.sip.rtp as rtp;"
    "p = rtp.RtpPacket.parse(rtp.RtpPacket(0, 7, 160, 1, b'\\xff' * 160).serialize());"
    "print(json.dumps({'state': str(n.state()), 'core': voice.call.core.__file__,"
    " 'seq': p.sequence_number, 'compiled': rtp._COMPILED}))"
)


def _probe(root: Path, **env: str) -> dict[str, object]:
    run = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(run.stdout)
    return result


@pytest.fixture(scope="module")
def built() -> None:
    if not native.state().compiled:
        pytest.skip(f"the compiled modules are not in use here: {native.state()}")


@pytest.fixture
def tree(tmp_path: Path, built: None) -> Path:
    """A copy of the packages and their build, to change without touching the repository."""
    for package in ("voice", "bridges"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_built_modules_load_in_place_of_the_sources(tree: Path) -> None:
    result = _probe(tree)
    assert result["state"] == f"compiled ({len(native.MODULES)} modules)"
    assert str(result["core"]).startswith(str(tree / "voice" / "_native"))
    assert result["compiled"] is True and result["seq"] == 7


def test_one_changed_source_sends_every_module_back_to_the_interpreter(tree: Path) -> None:
    source = tree / "bridges" / "sip" / "jitter.py"
    source.write_text(source.read_text() + "\n# changed\n")
    result = _probe(tree)
    assert result["state"] == (
        "interpreted (bridges.sip.jitter changed since the build; run python -m voice.nativebuild)"
    )
    assert result["core"] == str(tree / "voice" / "call" / "core.py")
    assert result["compiled"] is False and result["seq"] == 7


def test_a_build_for_another_interpreter_is_not_loaded(tree: Path) -> None:
    path = tree / "voice" / "_native" / native.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["cache_tag"] = "cpython-399"
    path.write_text(json.dumps(manifest))
    result = _probe(tree)
    assert str(result["state"]).startswith("interpreted (built for cpython-399")
    assert result["compiled"] is False


def test_a_missing_library_is_not_loaded(tree: Path) -> None:
    manifest = json.loads((tree / "voice" / "_native" / native.MANIFEST).read_text())
    (tree / "voice" / "_native" / manifest["group"]["file"]).unlink()
    result = _probe(tree)
    assert str(result["state"]).startswith("interpreted (missing ")
    assert result["compiled"] is False


def test_voice_native_0_turns_the_hook_off(tree: Path) -> None:
    result = _probe(tree, VOICE_NATIVE="0")
    assert result["state"] == "interpreted (VOICE_NATIVE=0)"
    assert result["core"] == str(tree / "voice" / "call" / "core.py")


def test_without_a_build_the_sources_run(tmp_path: Path) -> None:
    for package in ("voice", "bridges"):
        shutil.copytree(
            REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "_native")
        )
    result = _probe(tmp_path)
    assert result["state"] == "interpreted (not built; run python -m voice.nativebuild)"
    assert result["compiled"] is False and result["seq"] == 7
