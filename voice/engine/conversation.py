"""The conversation of an engine session: items, their wire form, ordering and audio truncation.

Item shapes follow protocols.md §A.5 ("Conversation item shapes"): user messages (``input_text``,
``input_audio``, ``input_image``), system messages (``input_text``), assistant messages (``output_text`` or
``output_audio``), ``function_call`` and ``function_call_output``. Clients may create every kind except
assistant audio (§A.5 ``conversation.item.create``). Audio is kept as the wire bytes (in the format it was
sent or produced in), so ``conversation.item.retrieve`` returns it and truncation cuts it exactly.

Truncation (§C.1): only an assistant message's audio (``content_index`` 0) can be truncated; ``audio_end_ms``
beyond the stored audio is an error (``Audio content of {n}ms is already shorter than {m}ms``); the stored
audio is cut and the transcript is deleted (set to ``""``) so that no unheard text stays in the context.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from voice.engine.checks import expect_choice, expect_list, expect_object, expect_str, missing
from voice.engine.formats import AudioFormat
from voice.engine.responder import Turn
from voice.engine.usage import Block, item_block
from voice.errors import RealtimeError

__all__ = ["Content", "Conversation", "Item", "parse_item"]

ItemType = Literal["message", "function_call", "function_call_output"]
Status = Literal["completed", "in_progress", "incomplete"]

ITEM_TYPES: Final = ("message", "function_call", "function_call_output")
_CONTENT_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "user": ("input_text", "input_audio", "input_image"),
    "system": ("input_text",),
    "assistant": ("output_text",),
}


@dataclass
class Content:
    """One content part of a message item."""

    type: str
    text: str | None = None
    transcript: str | None = None
    audio: bytes | None = None
    audio_format: AudioFormat | None = None
    image_url: str | None = None
    detail: str | None = None
    recognized: str | None = None
    """Engine-internal: what recognition heard in caller audio (shown as ``transcript`` only when the
    session asked for input transcription)."""

    @property
    def audio_ms(self) -> float:
        if self.audio is None or self.audio_format is None:
            return 0.0
        return self.audio_format.duration_ms(len(self.audio))

    def to_wire(self, *, with_audio: bool) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.type}
        if self.type in ("input_text", "output_text"):
            wire["text"] = self.text or ""
        elif self.type == "input_audio":
            if with_audio and self.audio is not None:
                wire["audio"] = base64.b64encode(self.audio).decode("ascii")
            wire["transcript"] = self.transcript
        elif self.type == "output_audio":
            if with_audio and self.audio is not None:
                wire["audio"] = base64.b64encode(self.audio).decode("ascii")
            wire["transcript"] = self.transcript or ""
        elif self.type == "input_image":
            wire["image_url"] = self.image_url
            if self.detail is not None:
                wire["detail"] = self.detail
        return wire


@dataclass
class Item:
    """One conversation item (or one output item of an out-of-band response)."""

    id: str
    type: ItemType
    role: str | None = None
    status: Status = "completed"
    content: list[Content] = field(default_factory=list)
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    version: int = 0
    """Bumped whenever the content changes (the prompt cache compares items by id and version)."""

    def to_wire(self, *, with_audio: bool = False) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "object": "realtime.item",
            "status": self.status,
        }
        if self.type == "message":
            wire["role"] = self.role
            wire["content"] = [c.to_wire(with_audio=with_audio) for c in self.content]
        elif self.type == "function_call":
            wire.update(call_id=self.call_id, name=self.name, arguments=self.arguments or "")
        else:
            wire.update(call_id=self.call_id, output=self.output or "")
        return wire

    def text(self) -> str:
        """The item's words: typed text, recognized caller speech, the agent's transcript, a tool output."""
        if self.type == "function_call_output":
            return self.output or ""
        if self.type == "function_call":
            return self.arguments or ""
        parts: list[str] = []
        for c in self.content:
            if c.type in ("input_text", "output_text"):
                parts.append(c.text or "")
            elif c.type == "input_audio":
                parts.append(c.recognized if c.recognized is not None else (c.transcript or ""))
            elif c.type == "output_audio":
                parts.append(c.transcript or "")
        return " ".join(p for p in parts if p)

    def turn(self) -> Turn:
        """The item as the responder sees it."""
        if self.type == "function_call":
            return Turn("function_call", name=self.name, call_id=self.call_id, arguments=self.arguments or "")
        if self.type == "function_call_output":
            return Turn("function_call_output", text=self.output or "", call_id=self.call_id)
        role = self.role if self.role in ("user", "assistant", "system") else "user"
        return Turn(role, text=self.text())  # type: ignore[arg-type]

    def block(self) -> Block:
        """The item as response input (see :mod:`voice.engine.usage`)."""
        key = f"{self.id}#{self.version}"
        if self.type == "function_call":
            return item_block(key, text=(self.name or "") + (self.arguments or ""))
        if self.type == "function_call_output":
            return item_block(key, text=self.output or "")
        text = " ".join(c.text or "" for c in self.content if c.type in ("input_text", "output_text"))
        user_ms = sum(c.audio_ms for c in self.content if c.type == "input_audio")
        agent_ms = sum(c.audio_ms for c in self.content if c.type == "output_audio")
        return item_block(key, text=text, user_audio_ms=user_ms, assistant_audio_ms=agent_ms)

    @property
    def has_audio_output(self) -> bool:
        return (
            self.type == "message"
            and self.role == "assistant"
            and any(c.type == "output_audio" for c in self.content)
        )

    def truncate(self, content_index: int, audio_end_ms: int) -> None:
        """Cut the assistant audio at ``audio_end_ms`` and delete its transcript (protocols.md §C.1)."""
        if not self.has_audio_output:
            raise RealtimeError(
                "Invalid value for 'item_id': only assistant messages with audio can be truncated.",
                code="invalid_value",
                param="item_id",
            )
        if content_index != 0 or content_index >= len(self.content):
            raise RealtimeError(
                f"Invalid value for 'content_index': {content_index}. Only content index 0 can be truncated.",
                code="invalid_value",
                param="content_index",
            )
        part = self.content[content_index]
        if part.type != "output_audio" or part.audio_format is None:
            raise RealtimeError(
                "Invalid value for 'content_index': the content part has no audio.",
                code="invalid_value",
                param="content_index",
            )
        length_ms = int(part.audio_ms)
        if audio_end_ms > length_ms:
            raise RealtimeError(
                f"Audio content of {length_ms}ms is already shorter than {audio_end_ms}ms",
                code="invalid_value",
                param="audio_end_ms",
            )
        part.audio = (part.audio or b"")[: part.audio_format.byte_offset(audio_end_ms)]
        part.transcript = ""
        self.version += 1


def _decode_audio(param: str, value: Any) -> bytes:
    text = expect_str(param, value)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RealtimeError(
            f"Invalid '{param}': expected base64-encoded audio.", code="invalid_value", param=param
        ) from None


def _whole_samples(audio: bytes, fmt: AudioFormat) -> bytes:
    return audio[: len(audio) - len(audio) % fmt.sample_width]


def _parse_content(role: str, index: int, raw: Any, input_format: AudioFormat) -> Content:
    where = f"item.content[{index}]"
    part = expect_object(where, raw)
    allowed = _CONTENT_TYPES[role]
    kind = part.get("type")
    if role == "assistant" and kind == "output_audio":
        raise RealtimeError(
            "Invalid value: 'output_audio'. Assistant audio items cannot be created; "
            "create assistant messages with 'output_text' content.",
            code="invalid_value",
            param=f"{where}.type",
        )
    kind = expect_choice(f"{where}.type", kind, allowed)
    if kind in ("input_text", "output_text"):
        return Content(kind, text=expect_str(f"{where}.text", part.get("text", "")))
    if kind == "input_audio":
        if "audio" not in part:
            raise missing(f"{where}.audio")
        transcript = part.get("transcript")
        return Content(
            kind,
            audio=_whole_samples(_decode_audio(f"{where}.audio", part["audio"]), input_format),
            audio_format=input_format,
            transcript=None if transcript is None else expect_str(f"{where}.transcript", transcript),
        )
    if "image_url" not in part:
        raise missing(f"{where}.image_url")
    detail = part.get("detail")
    return Content(
        kind,
        image_url=expect_str(f"{where}.image_url", part["image_url"]),
        detail=None if detail is None else expect_choice(f"{where}.detail", detail, ("auto", "low", "high")),
    )


def _parse_message(raw: dict[str, Any], item: Item, input_format: AudioFormat) -> None:
    if "role" not in raw:
        raise missing("item.role")
    item.role = expect_choice("item.role", raw["role"], ("user", "assistant", "system"))
    if "content" not in raw:
        raise missing("item.content")
    parts = expect_list("item.content", raw["content"])
    item.content = [_parse_content(item.role, i, p, input_format) for i, p in enumerate(parts)]


def _parse_function_call(raw: dict[str, Any], item: Item, new_id: Callable[[str], str]) -> None:
    if "name" not in raw:
        raise missing("item.name")
    item.name = expect_str("item.name", raw["name"])
    item.arguments = expect_str("item.arguments", raw.get("arguments", ""))
    call_id = raw.get("call_id")
    item.call_id = new_id("call_") if call_id is None else expect_str("item.call_id", call_id)


def _parse_function_call_output(raw: dict[str, Any], item: Item) -> None:
    for key in ("call_id", "output"):
        if key not in raw:
            raise missing(f"item.{key}")
    item.call_id = expect_str("item.call_id", raw["call_id"])
    item.output = expect_str("item.output", raw["output"])


def parse_item(raw: Any, *, input_format: AudioFormat, new_id: Callable[[str], str]) -> Item:
    """An :class:`Item` from the ``item`` of ``conversation.item.create`` (or ``response.input``).

    Caller audio is kept in ``input_format`` (the session's input format). Raises :class:`RealtimeError`.
    """
    data = expect_object("item", raw)
    kind = data.get("type", "message")
    if kind not in ITEM_TYPES and isinstance(kind, str) and kind.startswith("mcp_"):
        raise RealtimeError(
            f"Invalid value: '{kind}'. MCP items are not supported by the local engine.",
            code="invalid_value",
            param="item.type",
        )
    item_type = expect_choice("item.type", kind, ITEM_TYPES)
    item_id = data.get("id")
    item = Item(
        id=new_id("item_") if item_id is None else expect_str("item.id", item_id),
        type=item_type,  # type: ignore[arg-type]
    )
    if item_type == "message":
        _parse_message(data, item, input_format)
    elif item_type == "function_call":
        _parse_function_call(data, item, new_id)
    else:
        _parse_function_call_output(data, item)
    return item


class Conversation:
    """The ordered items of the default conversation."""

    def __init__(self) -> None:
        self._order: list[str] = []
        self._items: dict[str, Item] = {}

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[Item]:
        return (self._items[i] for i in list(self._order))

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def get(self, item_id: str) -> Item | None:
        return self._items.get(item_id)

    @property
    def last_id(self) -> str | None:
        return self._order[-1] if self._order else None

    def previous_id(self, item_id: str) -> str | None:
        index = self._order.index(item_id)
        return self._order[index - 1] if index > 0 else None

    def insert(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Add ``item`` after ``previous_item_id`` (``"root"``: first; ``None``: last); returns the id of
        the item now before it. Raises :class:`RealtimeError` for a duplicate id or an unknown previous id."""
        if item.id in self._items:
            raise RealtimeError(
                f"Invalid 'item.id': an item with id '{item.id}' already exists.",
                code="invalid_value",
                param="item.id",
            )
        if previous_item_id is None:
            position = len(self._order)
        elif previous_item_id == "root":
            position = 0
        elif previous_item_id in self._items:
            position = self._order.index(previous_item_id) + 1
        else:
            raise RealtimeError(
                f"Error adding item: the previous item with id '{previous_item_id}' does not exist.",
                code="invalid_value",
                param="previous_item_id",
            )
        self._order.insert(position, item.id)
        self._items[item.id] = item
        return self._order[position - 1] if position > 0 else None

    def delete(self, item_id: str) -> Item:
        item = self._items.pop(item_id)
        self._order.remove(item_id)
        return item
