"""The per-call cost meter and the cost figures the store and the CLI report (pure; exact ``Decimal``).

Every ``response.done`` usage and every input-transcription usage is priced by
:mod:`voice.realtime.pricing` (protocols.md §B) and added to :class:`CostTotals`. Responses and
transcriptions are kept apart: transcriptions are billed at the ASR model's price and never cached, so the
cache figures (``cached_share``, ``savings_usd``) are over response input only.

:class:`CostMeter` is the live meter of one call: the running total after every usage, the final breakdown
(:meth:`CostMeter.breakdown`) and an optional budget. The budget is exposed as state, not acted on: the
call runner polls :meth:`CostMeter.budget_action` after each usage and warns the model at
:data:`WARN_SHARE` (80 %) of the budget, then ends the call when it is used up.

Money stays exact: sums of token x price are exact decimals. Only ratios (per minute, cached share, budget
used) divide; they are rounded half-even to :data:`RATIO_PLACES` decimal places.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any, Final, Literal

from voice.errors import ConfigError, RecordError
from voice.realtime.pricing import CostBreakdown, PriceTable, price_transcription, price_usage

__all__ = [
    "BUDGET_WARNING_INSTRUCTIONS",
    "RATIO_PLACES",
    "WARN_SHARE",
    "BudgetAction",
    "CostMeter",
    "CostTotals",
    "UsageKind",
    "breakdown_from_dict",
    "per_minute",
    "ratio",
]

UsageKind = Literal["response", "transcription"]
BudgetAction = Literal["warn", "end"]

WARN_SHARE: Final = Decimal("0.8")
RATIO_PLACES: Final = 6
BUDGET_WARNING_INSTRUCTIONS: Final = (
    "This call is close to its cost limit. Wrap up now: give a short answer, tell the caller the call will "
    "end soon, and say goodbye."
)
"""What the runner may send the model (``response.create`` instructions) on a ``"warn"`` action."""

_CONTEXT: Final = Context(prec=34)


def ratio(numerator: Decimal, denominator: Decimal, *, places: int = RATIO_PLACES) -> Decimal | None:
    """``numerator / denominator`` rounded half-even to ``places`` decimals; None for a zero denominator."""
    if denominator == 0:
        return None
    return _CONTEXT.divide(numerator, denominator).quantize(
        Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN
    )


def per_minute(cost: Decimal, duration_ms: int | None) -> Decimal | None:
    """USD per minute of call (``cost / (duration_ms / 60000)``); None without a positive duration."""
    if not duration_ms or duration_ms <= 0:
        return None
    return ratio(cost * 60_000, Decimal(duration_ms))


_BREAKDOWN_FIELDS: Final = {f.name: f for f in fields(CostBreakdown)}


def breakdown_from_dict(data: Mapping[str, Any]) -> CostBreakdown:
    """Rebuild a :class:`CostBreakdown` from its ``to_dict()`` (extra keys such as ``total`` are ignored)."""
    values: dict[str, Any] = {}
    try:
        for name, spec in _BREAKDOWN_FIELDS.items():
            if name not in data:
                continue
            raw = data[name]
            values[name] = int(raw) if spec.type in ("int", int) else Decimal(str(raw))
    except (ValueError, ArithmeticError) as exc:
        raise RecordError(f"not a cost breakdown: {exc}") from exc
    return CostBreakdown(**values)


@dataclass
class CostTotals:
    """Sums of priced usage, responses and transcriptions apart (one call, or many for a summary)."""

    response: CostBreakdown = field(default_factory=CostBreakdown)
    transcription: CostBreakdown = field(default_factory=CostBreakdown)
    responses: int = 0
    transcriptions: int = 0

    def add(self, kind: UsageKind | str, cost: CostBreakdown) -> None:
        """Add one priced usage of ``kind`` (``"response"`` or ``"transcription"``)."""
        if kind == "response":
            self.response = self.response + cost
            self.responses += 1
        elif kind == "transcription":
            self.transcription = self.transcription + cost
            self.transcriptions += 1
        else:
            raise RecordError(f"usage kind must be 'response' or 'transcription', got {kind!r}")

    def merge(self, other: CostTotals) -> None:
        """Add another call's totals to these."""
        self.response = self.response + other.response
        self.transcription = self.transcription + other.transcription
        self.responses += other.responses
        self.transcriptions += other.transcriptions

    @property
    def all(self) -> CostBreakdown:
        """Responses and transcriptions together."""
        return self.response + self.transcription

    @property
    def total(self) -> Decimal:
        """Everything, in USD."""
        return self.response.total + self.transcription.total

    @property
    def savings(self) -> Decimal:
        """What prompt caching saved (only responses are cached)."""
        return self.response.cache_savings

    @property
    def cache_hit_rate(self) -> Decimal | None:
        """Cached input tokens / input tokens of the responses (None when no response had input)."""
        return ratio(Decimal(self.response.cached_input_tokens), Decimal(self.response.input_tokens))

    def usage(self) -> dict[str, Any]:
        """Token totals (the ``usage`` column of a call)."""
        r, t = self.response, self.transcription
        return {
            "responses": self.responses,
            "transcriptions": self.transcriptions,
            "input_tokens": r.input_tokens,
            "cached_input_tokens": r.cached_input_tokens,
            "output_tokens": r.output_tokens,
            "text_input_tokens": r.text_input_fresh_tokens + r.text_input_cached_tokens,
            "audio_input_tokens": r.audio_input_fresh_tokens + r.audio_input_cached_tokens,
            "image_input_tokens": r.image_input_fresh_tokens + r.image_input_cached_tokens,
            "text_output_tokens": r.text_output_tokens,
            "audio_output_tokens": r.audio_output_tokens,
            "transcription_input_tokens": t.input_tokens,
            "transcription_output_tokens": t.output_tokens,
            "transcription_seconds": str(t.duration_seconds),
        }

    def report(self, duration_ms: int | None = None) -> dict[str, Any]:
        """The cost figures, JSON-ready (money as decimal text).

        ``total_usd``; ``response_usd`` and ``transcription_usd``; input ``fresh_input_usd`` and
        ``cached_input_usd``; ``output_usd``; by modality ``text_usd``, ``audio_usd``, ``image_usd`` and
        ``duration_usd`` (per-minute transcription); tokens ``input_tokens``, ``cached_input_tokens``,
        ``output_tokens``; ``cached_share`` (of response input tokens, None without input);
        ``savings_usd``; ``duration_ms`` and ``per_minute_usd`` (None without a duration); and the two
        breakdowns in full under ``response`` and ``transcription``.
        """
        both = self.all
        share = self.cache_hit_rate
        minute = per_minute(self.total, duration_ms)
        return {
            "total_usd": str(self.total),
            "response_usd": str(self.response.total),
            "transcription_usd": str(self.transcription.total),
            "fresh_input_usd": str(both.fresh_input_cost),
            "cached_input_usd": str(both.cached_input_cost),
            "output_usd": str(both.output_cost),
            "text_usd": str(both.text_cost),
            "audio_usd": str(both.audio_cost),
            "image_usd": str(both.image_cost),
            "duration_usd": str(both.duration_cost),
            "input_tokens": self.response.input_tokens,
            "cached_input_tokens": self.response.cached_input_tokens,
            "output_tokens": self.response.output_tokens,
            "cached_share": str(share) if share is not None else None,
            "savings_usd": str(self.savings),
            "responses": self.responses,
            "transcriptions": self.transcriptions,
            "duration_ms": duration_ms,
            "per_minute_usd": str(minute) if minute is not None else None,
            "response": self.response.to_dict(),
            "transcription": self.transcription.to_dict(),
        }


class CostMeter:
    """The live cost of one call.

    ``model`` is the Realtime model whose price applies to ``response.done`` usage; transcriptions are priced
    at the model named with each (or ``transcription_model``). Unknown models raise
    :class:`~voice.errors.ConfigError` from the price table. ``budget_usd`` (optional, > 0) is the most the
    call may cost; see :meth:`budget_action`.
    """

    def __init__(
        self,
        model: str,
        table: PriceTable,
        budget_usd: Decimal | None = None,
        *,
        transcription_model: str | None = None,
        warn_share: Decimal = WARN_SHARE,
    ) -> None:
        if budget_usd is not None:
            if isinstance(budget_usd, float):
                raise ConfigError("the call budget must be a Decimal (exact money), not a float")
            budget_usd = Decimal(budget_usd)
            if not budget_usd.is_finite() or budget_usd <= 0:
                raise ConfigError(f"the call budget must be a positive amount of USD, got {budget_usd}")
        if not Decimal(0) < warn_share <= Decimal(1):
            raise ConfigError(f"the budget warning share must be in (0, 1], got {warn_share}")
        table.price(model)  # fail now, not at the first response
        self.model = model
        self.table = table
        self.budget_usd = budget_usd
        self.transcription_model = transcription_model
        self.warn_share = warn_share
        self.totals = CostTotals()
        self.last: CostBreakdown | None = None
        """The cost of the usage added last (what the runner stores with it)."""
        self._warned = False
        self._ended = False

    # -- adding usage ---------------------------------------------------------------------------------

    def add_response_usage(self, usage: Any) -> CostBreakdown:
        """Price a ``response.done.response.usage`` (dict or SDK model), add it; return the running total."""
        cost = price_usage(self.model, usage, self.table)
        self.totals.add("response", cost)
        self.last = cost
        return self.cost

    def add_transcription_usage(self, model: str | None, usage: Any) -> CostBreakdown:
        """Price an input transcription's ``usage`` at ``model`` (default ``transcription_model``), add it;
        return the running total."""
        name = model or self.transcription_model
        if not name:
            raise ConfigError("transcription usage needs the transcription model's name to be priced")
        cost = price_transcription(name, usage, self.table)
        self.totals.add("transcription", cost)
        self.last = cost
        return self.cost

    # -- reading --------------------------------------------------------------------------------------

    @property
    def cost(self) -> CostBreakdown:
        """The running total as one breakdown (responses and transcriptions)."""
        return self.totals.all

    @property
    def total(self) -> Decimal:
        """The running total in USD."""
        return self.totals.total

    def breakdown(self, duration_ms: int | None = None) -> dict[str, Any]:
        """The call's cost figures (:meth:`CostTotals.report`) plus ``model``, the budget and its state."""
        used = ratio(self.total, self.budget_usd) if self.budget_usd is not None else None
        return {
            "model": self.model,
            **self.totals.report(duration_ms),
            "budget_usd": str(self.budget_usd) if self.budget_usd is not None else None,
            "budget_used": str(used) if used is not None else None,
            "near_budget": self.near_budget,
            "over_budget": self.over_budget,
        }

    def usage(self) -> dict[str, Any]:
        """Token totals (:meth:`CostTotals.usage`)."""
        return self.totals.usage()

    # -- budget ---------------------------------------------------------------------------------------

    @property
    def near_budget(self) -> bool:
        """The total has reached ``warn_share`` (80 %) of the budget (also true when over it)."""
        return self.budget_usd is not None and self.total >= self.budget_usd * self.warn_share

    @property
    def over_budget(self) -> bool:
        """The total has reached the budget: the call should end."""
        return self.budget_usd is not None and self.total >= self.budget_usd

    def budget_action(self) -> BudgetAction | None:
        """What the runner should do now, each at most once per call: ``"warn"`` (tell the model to wrap up,
        e.g. with :data:`BUDGET_WARNING_INSTRUCTIONS`) when 80 % is first reached, ``"end"`` (end the call)
        when the budget is first used up, else None. Jumping straight past 100 % gives ``"end"`` only."""
        if self.over_budget and not self._ended:
            self._ended = self._warned = True
            return "end"
        if self.near_budget and not self._warned:
            self._warned = True
            return "warn"
        return None
