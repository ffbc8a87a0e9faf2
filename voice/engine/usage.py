"""Token usage of the engine's responses, by OpenAI's published rules (protocols.md §B.1, §B.2).

Pure arithmetic: the session core describes a response's input as a list of :class:`Block` values (the
instructions, the tools, then one per conversation item) and its output as text and audio amounts; this
module turns them into the ``usage`` object of ``response.done`` and of
``conversation.item.input_audio_transcription.completed``.

The rules, and where they are estimates:

- **Audio** (documented, §B.2): caller audio costs 1 token per 100 ms, agent audio 1 token per 50 ms, each
  rounded up per item. Agent audio that comes back as input on later responses is counted at the agent rate
  and at its stored length, so a truncated item (protocols.md §C.1) counts only what was kept.
- **Text** (estimate): ``ceil(UTF-8 bytes / 4)`` tokens, OpenAI's "about 4 characters per token" rule of
  thumb for English. Tools count as their compact JSON (``json.dumps(tools, separators=(",", ":"),
  sort_keys=True)``).
- **Per-item overhead** (estimate): every input block (the instructions, the tools when there are any, each
  conversation item) adds :data:`ITEM_OVERHEAD_TOKENS` text tokens for the special tokens that frame a
  message ("token counts include special tokens aside from the content of a message", §B.2).
- **Input**: the whole context is input on every response (§B.1: "The entire conversation is sent to the model
  for each Response"): instructions + tools + every item of the response's context. Caller audio items count
  their audio only (their transcript is not model input); agent audio items count their audio only (the
  transcript is derived from it).
- **Cached input** (OpenAI's prompt caching): the prefix of this response's input that is identical to the
  previous response's input is served from the cache, compared block by block (a block that changed, e.g. a
  truncated item, ends the shared prefix). Caching needs at least :data:`CACHE_MIN_TOKENS` (1024) tokens of
  shared prefix and then grows in steps of :data:`CACHE_STEP_TOKENS` (128): ``cached = 0`` when
  ``shared < 1024``, else ``floor(shared / 128) * 128``. The cached tokens are split into text and audio by
  what the cached prefix holds (within a block its text, i.e. the overhead and any text content, comes
  before its audio).
- **Output**: audio tokens from the generated audio (what was generated, not what was heard: §B.1
  "Interrupted responses"), text tokens from the transcript or text (as OpenAI, ``output_token_details.
  text_tokens`` counts the audio transcript), plus the name and arguments of each function call.
- **Transcription** (separate usage, billed at the transcription model's price): input = caller audio tokens
  (+ the prompt's text tokens), output = the transcript's text tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CACHE_MIN_TOKENS",
    "CACHE_STEP_TOKENS",
    "ITEM_OVERHEAD_TOKENS",
    "Block",
    "InputUsage",
    "assistant_audio_tokens",
    "cached_tokens",
    "input_usage",
    "instructions_block",
    "item_block",
    "response_usage",
    "shared_prefix_tokens",
    "text_tokens",
    "tools_block",
    "transcription_usage",
    "user_audio_tokens",
    "zero_usage",
]

ITEM_OVERHEAD_TOKENS: Final = 4
CACHE_MIN_TOKENS: Final = 1024
CACHE_STEP_TOKENS: Final = 128
USER_AUDIO_MS_PER_TOKEN: Final = 100
ASSISTANT_AUDIO_MS_PER_TOKEN: Final = 50


def text_tokens(text: str) -> int:
    """Estimated tokens of ``text``: ``ceil(UTF-8 bytes / 4)``."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def user_audio_tokens(ms: float) -> int:
    """Caller audio: 1 token per 100 ms, rounded up."""
    return math.ceil(max(0.0, ms) / USER_AUDIO_MS_PER_TOKEN - 1e-9)


def assistant_audio_tokens(ms: float) -> int:
    """Agent audio: 1 token per 50 ms, rounded up."""
    return math.ceil(max(0.0, ms) / ASSISTANT_AUDIO_MS_PER_TOKEN - 1e-9)


@dataclass(frozen=True)
class Block:
    """One unit of a response's input; equal blocks (key and counts) mean equal content for the cache."""

    key: str
    text_tokens: int
    audio_tokens: int

    @property
    def tokens(self) -> int:
        return self.text_tokens + self.audio_tokens


def instructions_block(instructions: str) -> Block:
    return Block(f"instructions:{instructions}", ITEM_OVERHEAD_TOKENS + text_tokens(instructions), 0)


def tools_block(tools: Sequence[dict[str, Any]]) -> Block | None:
    """The tools as input, or ``None`` when there are none."""
    if not tools:
        return None
    encoded = json.dumps(list(tools), separators=(",", ":"), sort_keys=True)
    return Block(f"tools:{encoded}", ITEM_OVERHEAD_TOKENS + text_tokens(encoded), 0)


def item_block(
    key: str, *, text: str = "", user_audio_ms: float = 0.0, assistant_audio_ms: float = 0.0
) -> Block:
    """A conversation item as input: overhead + text tokens, and its audio tokens at the role's rate."""
    audio = user_audio_tokens(user_audio_ms) + assistant_audio_tokens(assistant_audio_ms)
    return Block(key, ITEM_OVERHEAD_TOKENS + text_tokens(text), audio)


def shared_prefix_tokens(previous: Sequence[Block], current: Sequence[Block]) -> int:
    """Tokens of the longest run of equal leading blocks of ``previous`` and ``current``."""
    shared = 0
    for before, now in zip(previous, current, strict=False):
        if before != now:
            break
        shared += now.tokens
    return shared


def cached_tokens(shared: int) -> int:
    """Cached tokens for a shared prefix of ``shared`` tokens: 0 below 1024, else whole 128-token steps."""
    if shared < CACHE_MIN_TOKENS:
        return 0
    return shared // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS


@dataclass(frozen=True)
class InputUsage:
    text_tokens: int
    audio_tokens: int
    cached_text_tokens: int
    cached_audio_tokens: int

    @property
    def tokens(self) -> int:
        return self.text_tokens + self.audio_tokens

    @property
    def cached_tokens(self) -> int:
        return self.cached_text_tokens + self.cached_audio_tokens


def input_usage(current: Sequence[Block], previous: Sequence[Block] | None) -> InputUsage:
    """Input tokens of a response whose input is ``current``; ``previous`` is the last response's input."""
    text = sum(b.text_tokens for b in current)
    audio = sum(b.audio_tokens for b in current)
    cached = cached_tokens(shared_prefix_tokens(previous, current)) if previous else 0
    cached_text = cached_audio = 0
    left = cached
    for block in current:
        if left <= 0:
            break
        take_text = min(left, block.text_tokens)
        take_audio = min(left - take_text, block.audio_tokens)
        cached_text += take_text
        cached_audio += take_audio
        left -= take_text + take_audio
    return InputUsage(text, audio, cached_text, cached_audio)


def response_usage(inputs: InputUsage, output_text_tokens: int, output_audio_tokens: int) -> dict[str, Any]:
    """The ``usage`` object of ``response.done`` (protocols.md §B.1)."""
    output = output_text_tokens + output_audio_tokens
    return {
        "total_tokens": inputs.tokens + output,
        "input_tokens": inputs.tokens,
        "output_tokens": output,
        "input_token_details": {
            "text_tokens": inputs.text_tokens,
            "audio_tokens": inputs.audio_tokens,
            "image_tokens": 0,
            "cached_tokens": inputs.cached_tokens,
            "cached_tokens_details": {
                "text_tokens": inputs.cached_text_tokens,
                "audio_tokens": inputs.cached_audio_tokens,
                "image_tokens": 0,
            },
        },
        "output_token_details": {"text_tokens": output_text_tokens, "audio_tokens": output_audio_tokens},
    }


def zero_usage() -> dict[str, Any]:
    return response_usage(InputUsage(0, 0, 0, 0), 0, 0)


def transcription_usage(audio_ms: float, transcript: str, prompt: str = "") -> dict[str, Any]:
    """``usage`` of ``input_audio_transcription.completed`` (type ``tokens``, protocols.md §A.6)."""
    audio = user_audio_tokens(audio_ms)
    prompt_tokens = text_tokens(prompt)
    output = text_tokens(transcript)
    return {
        "type": "tokens",
        "input_tokens": audio + prompt_tokens,
        "output_tokens": output,
        "total_tokens": audio + prompt_tokens + output,
        "input_token_details": {"text_tokens": prompt_tokens, "audio_tokens": audio},
    }
