"""How caller key presses reach the model (DESIGN.md "DTMF", protocols.md §D.1).

The Realtime API has no DTMF input event outside SIP (and even there the docs do not say the model perceives
the key), so the call forwards keys as conversation items: a user ``input_text`` message, then
``response.create`` (§D.1). The agent profile's :class:`~voice.profiles.DtmfPolicy` picks the grouping:

- ``each``: every key at once, ``"Caller pressed 5"``;
- ``collect``: keys gather until the terminator (``#`` by default, not included) or until ``timeout_ms``
  pass with no key, then go as one entry, ``"Caller entered 1234"``. A terminator pressed on its own is
  forwarded as ``"Caller pressed #"``.

Whether a key also barges in (``barge_in``) is decided by the call core. Pure: the call clock drives the
timeout through :meth:`DtmfCollector.tick`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridges.base import is_dtmf_digit
from voice.profiles import DtmfPolicy


@dataclass(frozen=True, slots=True)
class DtmfForward:
    """Keys to forward to the model: ``text`` for the conversation item, ``digits`` for the transcript,
    ``t_ms`` when the first of them was pressed, ``why`` what ended the group."""

    text: str
    digits: str
    t_ms: int
    why: str  # "key" (each mode), "terminator", "timeout", "flush"


class DtmfCollector:
    """Groups key presses according to a :class:`DtmfPolicy`."""

    def __init__(self, policy: DtmfPolicy) -> None:
        self.policy = policy
        self._digits = ""
        self._first_ms = 0
        self._last_ms = 0

    @property
    def pending(self) -> str:
        """Keys gathered so far in ``collect`` mode."""
        return self._digits

    def deadline_ms(self) -> int | None:
        """When the gathered keys will be forwarded if no other key comes (``None``: nothing gathered)."""
        return self._last_ms + self.policy.timeout_ms if self._digits else None

    def press(self, digit: str, now_ms: int) -> list[DtmfForward]:
        """One key; returns what to forward now. Invalid keys raise ``ValueError`` (check them first)."""
        if not is_dtmf_digit(digit):
            raise ValueError(f"not a DTMF key: {digit!r}")
        if self.policy.mode == "each":
            return [DtmfForward(f"Caller pressed {digit}", digit, now_ms, "key")]
        terminator = self.policy.terminator
        if terminator and digit == terminator:
            if not self._digits:
                return [DtmfForward(f"Caller pressed {digit}", digit, now_ms, "terminator")]
            return [self._take("terminator")]
        if not self._digits:
            self._first_ms = now_ms
        self._digits += digit
        self._last_ms = now_ms
        return []

    def tick(self, now_ms: int) -> list[DtmfForward]:
        """Forward the gathered keys if ``timeout_ms`` passed since the last one."""
        deadline = self.deadline_ms()
        if deadline is None or now_ms < deadline:
            return []
        return [self._take("timeout")]

    def flush(self) -> list[DtmfForward]:
        """Forward whatever is gathered (the call is ending)."""
        return [self._take("flush")] if self._digits else []

    def _take(self, why: str) -> DtmfForward:
        digits, self._digits = self._digits, ""
        return DtmfForward(f"Caller entered {digits}", digits, self._first_ms, why)
