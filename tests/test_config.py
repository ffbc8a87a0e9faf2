"""voice.config: settings that shape the per-frame path are validated when the service starts."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from voice.config import Settings

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ms", [20, 40, 60, 200])
def test_upstream_append_ms_takes_whole_frames(ms: int) -> None:
    assert Settings(upstream_append_ms=ms).upstream_append_ms == ms


@pytest.mark.parametrize("ms", [0, 10, 30, 220])
def test_upstream_append_ms_refuses_parts_of_frames_and_extremes(ms: int) -> None:
    with pytest.raises(ValidationError, match="upstream_append_ms"):
        Settings(upstream_append_ms=ms)


def test_the_example_settings_file_is_valid() -> None:
    data = tomllib.loads((REPO / "deploy" / "voice.toml.example").read_text())
    settings = Settings.model_validate(data)
    assert settings.upstream_append_ms == 40
