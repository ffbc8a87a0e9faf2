"""Exact (``Decimal``) pricing of Realtime and transcription usage (protocols.md §B).

Prices are USD per 1M tokens (and USD per minute for ``duration`` transcription usage). The default table is
protocols.md §B.3 for the speech-to-speech models and OpenAI's published transcription prices; dated model ids
(``gpt-realtime-2025-08-28``) resolve to their family (``gpt-realtime``). Override or extend it with
:class:`voice.config.ModelPriceOverride` entries (``settings.prices``, then the agent profile's ``prices``)
through :func:`with_overrides`. **Re-check the live price pages before billing anyone** (§B.3).

Per response (§B.1): cached tokens are a subset of input tokens, so fresh input = input − cached, per
modality (text, audio, image), each at its own fresh or cached price; output is text and audio. Missing usage
fields count as 0. "Savings" is what the cached tokens would have cost fresh minus what they cost.

An unknown model is a :class:`voice.errors.ConfigError` (raised by :meth:`PriceTable.price`), never a silent
zero: a deployment with its own name (Azure) or a new model needs a ``[prices."name"]`` entry. Call
``table.price(model)`` at start-up to fail early.

Arithmetic is exact: token counts are integers, prices are decimals and per-token cost is ``count × price``
shifted by six decimal places (``scaleb(-6)``, no rounding). Only ``duration`` pricing divides (seconds / 60);
it runs in a local 34-digit context and is quantized to 1e-12 USD.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from decimal import Context, Decimal
from typing import Any

from pydantic import BaseModel

from voice.config import ModelPriceOverride
from voice.errors import ConfigError, RemoteProtocolError

ZERO = Decimal(0)
_MICRO = -6
_DURATION_QUANTUM = Decimal("1e-12")
_DURATION_CONTEXT = Context(prec=34)
_DATED = re.compile(r"^(?P<family>.+?)-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class ModelPrice:
    """One model's prices: USD per 1M tokens, and USD per minute for ``duration`` usage (whisper-1)."""

    text_input: Decimal = ZERO
    text_cached_input: Decimal = ZERO
    text_output: Decimal = ZERO
    audio_input: Decimal = ZERO
    audio_cached_input: Decimal = ZERO
    audio_output: Decimal = ZERO
    image_input: Decimal = ZERO
    image_cached_input: Decimal = ZERO
    per_minute: Decimal = ZERO

    @classmethod
    def of(cls, **prices: str | int | Decimal) -> ModelPrice:
        """Build from strings or numbers (``ModelPrice.of(text_input="4.00", ...)``)."""
        return cls(**{k: Decimal(str(v)) for k, v in prices.items()})

    def merged(self, override: ModelPriceOverride) -> ModelPrice:
        """This price with the fields ``override`` sets replaced."""
        changes = {k: v for k, v in override.model_dump(exclude_none=True).items()}
        return replace(self, **changes)


def _p(*prices: str) -> ModelPrice:
    """Text in / cached / out, audio in / cached / out, image in / cached (USD per 1M tokens)."""
    names = ("text_input", "text_cached_input", "text_output", "audio_input", "audio_cached_input",
             "audio_output", "image_input", "image_cached_input")  # fmt: skip
    return ModelPrice.of(**dict(zip(names, prices, strict=True)))


DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    # protocols.md §B.3, USD per 1M tokens: text in/cached/out, audio in/cached/out, image in/cached.
    "gpt-realtime": _p("4.00", "0.40", "16.00", "32.00", "0.40", "64.00", "5.00", "0.50"),
    "gpt-realtime-1.5": _p("4.00", "0.40", "16.00", "32.00", "0.40", "64.00", "5.00", "0.50"),
    "gpt-realtime-mini": _p("0.60", "0.06", "2.40", "10.00", "0.30", "20.00", "0.80", "0.08"),
    "gpt-realtime-2": _p("4.00", "0.40", "24.00", "32.00", "0.40", "64.00", "5.00", "0.50"),
    "gpt-realtime-2.1": _p("4.00", "0.40", "24.00", "32.00", "0.40", "64.00", "5.00", "0.50"),
    "gpt-realtime-2.1-mini": _p("0.60", "0.06", "2.40", "10.00", "0.30", "20.00", "0.80", "0.08"),
    # Transcription (OpenAI pricing page): text in, audio in, text out; whisper-1 per minute.
    "gpt-4o-transcribe": ModelPrice.of(text_input="2.50", audio_input="6.00", text_output="10.00"),
    "gpt-4o-mini-transcribe": ModelPrice.of(text_input="1.25", audio_input="3.00", text_output="5.00"),
    "whisper-1": ModelPrice.of(per_minute="0.006"),
}
"""The built-in table. Dated ids resolve to these families."""


def model_family(model: str) -> str:
    """``gpt-realtime-mini-2025-12-15`` -> ``gpt-realtime-mini``; other ids unchanged."""
    match = _DATED.match(model)
    return match.group("family") if match else model


@dataclass(frozen=True)
class PriceTable:
    """Model id -> :class:`ModelPrice`. Lookup: the exact id first, then its family (dated ids)."""

    prices: Mapping[str, ModelPrice]

    def price(self, model: str) -> ModelPrice:
        """The price of ``model``; :class:`ConfigError` naming the known models if there is none."""
        found = self.prices.get(model) or self.prices.get(model_family(model))
        if found is None:
            known = ", ".join(sorted(self.prices))
            raise ConfigError(
                f"no price for model {model!r}: add [prices.{model!r}] (USD per 1M tokens: text_input, "
                f"text_cached_input, text_output, audio_input, audio_cached_input, audio_output, ...) to the "
                f"settings or the agent profile. Known models: {known}"
            )
        return found

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and (model in self.prices or model_family(model) in self.prices)


def default_price_table() -> PriceTable:
    return PriceTable(dict(DEFAULT_PRICES))


def with_overrides(
    table: PriceTable, overrides: Mapping[str, ModelPriceOverride | Mapping[str, Any]]
) -> PriceTable:
    """``table`` with ``overrides`` applied (apply settings.prices, then profile.prices).

    An override of a known model (or of a dated id of a known family) keeps the fields it leaves out; an
    override of a new model starts from all-zero prices, so give every price that model bills.
    """
    prices = dict(table.prices)
    for model, raw in overrides.items():
        override = raw if isinstance(raw, ModelPriceOverride) else ModelPriceOverride.model_validate(raw)
        for name, value in override.model_dump(exclude_none=True).items():
            if value < 0:
                raise ConfigError(f"price {name} of {model!r} is negative: {value}")
        base = prices.get(model) or prices.get(model_family(model)) or ModelPrice()
        prices[model] = base.merged(override)
    return PriceTable(prices)


# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostBreakdown:
    """Token counts and their cost in USD (``Decimal``), one response or the sum over a call (``a + b``).

    ``*_fresh``/``*_cached`` are input; cached tokens are billed at the cached price. ``duration_seconds`` and
    ``duration_cost`` come from per-minute transcription usage.
    """

    text_input_fresh_tokens: int = 0
    text_input_cached_tokens: int = 0
    audio_input_fresh_tokens: int = 0
    audio_input_cached_tokens: int = 0
    image_input_fresh_tokens: int = 0
    image_input_cached_tokens: int = 0
    text_output_tokens: int = 0
    audio_output_tokens: int = 0
    duration_seconds: Decimal = ZERO

    text_input_fresh_cost: Decimal = ZERO
    text_input_cached_cost: Decimal = ZERO
    audio_input_fresh_cost: Decimal = ZERO
    audio_input_cached_cost: Decimal = ZERO
    image_input_fresh_cost: Decimal = ZERO
    image_input_cached_cost: Decimal = ZERO
    text_output_cost: Decimal = ZERO
    audio_output_cost: Decimal = ZERO
    duration_cost: Decimal = ZERO
    cache_savings: Decimal = ZERO
    """What the cached input tokens would have cost at the fresh price, minus what they cost."""

    def __add__(self, other: CostBreakdown) -> CostBreakdown:
        if not isinstance(other, CostBreakdown):
            return NotImplemented
        return CostBreakdown(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __radd__(self, other: object) -> CostBreakdown:
        if other == 0:  # sum(breakdowns)
            return self
        if isinstance(other, CostBreakdown):
            return other + self
        return NotImplemented

    # Totals ------------------------------------------------------------------------------------------

    @property
    def input_tokens(self) -> int:
        return self.fresh_input_tokens + self.cached_input_tokens

    @property
    def fresh_input_tokens(self) -> int:
        return self.text_input_fresh_tokens + self.audio_input_fresh_tokens + self.image_input_fresh_tokens

    @property
    def cached_input_tokens(self) -> int:
        return self.text_input_cached_tokens + self.audio_input_cached_tokens + self.image_input_cached_tokens

    @property
    def output_tokens(self) -> int:
        return self.text_output_tokens + self.audio_output_tokens

    @property
    def fresh_input_cost(self) -> Decimal:
        return self.text_input_fresh_cost + self.audio_input_fresh_cost + self.image_input_fresh_cost

    @property
    def cached_input_cost(self) -> Decimal:
        return self.text_input_cached_cost + self.audio_input_cached_cost + self.image_input_cached_cost

    @property
    def input_cost(self) -> Decimal:
        return self.fresh_input_cost + self.cached_input_cost

    @property
    def output_cost(self) -> Decimal:
        return self.text_output_cost + self.audio_output_cost

    @property
    def text_cost(self) -> Decimal:
        return self.text_input_fresh_cost + self.text_input_cached_cost + self.text_output_cost

    @property
    def audio_cost(self) -> Decimal:
        return self.audio_input_fresh_cost + self.audio_input_cached_cost + self.audio_output_cost

    @property
    def image_cost(self) -> Decimal:
        return self.image_input_fresh_cost + self.image_input_cached_cost

    @property
    def total(self) -> Decimal:
        return self.input_cost + self.output_cost + self.duration_cost

    @property
    def cached_share(self) -> Decimal:
        """Cached input tokens / input tokens (0 when there is no input), exact up to 28 digits."""
        if self.input_tokens == 0:
            return ZERO
        return Decimal(self.cached_input_tokens) / Decimal(self.input_tokens)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: token counts as ints, money and seconds as plain decimal strings (``"0.005044"``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = decimal_str(value) if isinstance(value, Decimal) else value
        out.update(
            input_tokens=self.input_tokens,
            cached_input_tokens=self.cached_input_tokens,
            output_tokens=self.output_tokens,
            fresh_input_cost=decimal_str(self.fresh_input_cost),
            cached_input_cost=decimal_str(self.cached_input_cost),
            input_cost=decimal_str(self.input_cost),
            output_cost=decimal_str(self.output_cost),
            text_cost=decimal_str(self.text_cost),
            audio_cost=decimal_str(self.audio_cost),
            image_cost=decimal_str(self.image_cost),
            total=decimal_str(self.total),
            cached_share=decimal_str(self.cached_share),
        )
        return out


def decimal_str(value: Decimal) -> str:
    """Plain notation without trailing zeros: ``Decimal("6E-8")`` -> ``"0.00000006"``, 0 -> ``"0"``."""
    return format(value.normalize(), "f")


def sum_costs(breakdowns: Iterable[CostBreakdown]) -> CostBreakdown:
    total = CostBreakdown()
    for b in breakdowns:
        total = total + b
    return total


# --------------------------------------------------------------------------------------------------


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    if isinstance(obj, BaseModel):
        return getattr(obj, key, None)
    raise RemoteProtocolError(f"usage parts must be objects, not {type(obj).__name__}: {obj!r:.80}")


def _count(obj: Any, key: str) -> int:
    """A token count: missing, ``None`` or negative counts are 0; bools and non-integers are rejected."""
    value = _get(obj, key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return max(0, int(value))
        raise RemoteProtocolError(f"usage field {key!r} must be an integer, not {value!r}")
    return max(0, value)


def _cost(tokens: int, price_per_million: Decimal) -> Decimal:
    return (Decimal(tokens) * price_per_million).scaleb(_MICRO)


def price_usage(model: str, usage: Any, table: PriceTable) -> CostBreakdown:
    """Price one ``response.done.response.usage`` (SDK ``RealtimeResponseUsage`` or its dict), §B.1.

    Cached tokens are split by ``cached_tokens_details``; when only a bare ``cached_tokens`` is present it is
    attributed to text first, then audio, then image (in that order, up to each modality's input count). A
    cached count larger than its modality's input is clamped to it.
    """
    price = table.price(model)
    details = _get(usage, "input_token_details")
    out_details = _get(usage, "output_token_details")
    text_in, audio_in, image_in = (
        _count(details, k) for k in ("text_tokens", "audio_tokens", "image_tokens")
    )
    cached_details = _get(details, "cached_tokens_details")
    if cached_details is not None:
        text_cached = min(_count(cached_details, "text_tokens"), text_in)
        audio_cached = min(_count(cached_details, "audio_tokens"), audio_in)
        image_cached = min(_count(cached_details, "image_tokens"), image_in)
    else:
        remaining = _count(details, "cached_tokens")
        text_cached = min(remaining, text_in)
        remaining -= text_cached
        audio_cached = min(remaining, audio_in)
        remaining -= audio_cached
        image_cached = min(remaining, image_in)
    text_out = _count(out_details, "text_tokens")
    audio_out = _count(out_details, "audio_tokens")

    savings = (
        _cost(text_cached, price.text_input - price.text_cached_input)
        + _cost(audio_cached, price.audio_input - price.audio_cached_input)
        + _cost(image_cached, price.image_input - price.image_cached_input)
    )
    return CostBreakdown(
        text_input_fresh_tokens=text_in - text_cached,
        text_input_cached_tokens=text_cached,
        audio_input_fresh_tokens=audio_in - audio_cached,
        audio_input_cached_tokens=audio_cached,
        image_input_fresh_tokens=image_in - image_cached,
        image_input_cached_tokens=image_cached,
        text_output_tokens=text_out,
        audio_output_tokens=audio_out,
        text_input_fresh_cost=_cost(text_in - text_cached, price.text_input),
        text_input_cached_cost=_cost(text_cached, price.text_cached_input),
        audio_input_fresh_cost=_cost(audio_in - audio_cached, price.audio_input),
        audio_input_cached_cost=_cost(audio_cached, price.audio_cached_input),
        image_input_fresh_cost=_cost(image_in - image_cached, price.image_input),
        image_input_cached_cost=_cost(image_cached, price.image_cached_input),
        text_output_cost=_cost(text_out, price.text_output),
        audio_output_cost=_cost(audio_out, price.audio_output),
        cache_savings=savings,
    )


def price_transcription(model: str, usage: Any, table: PriceTable) -> CostBreakdown:
    """Price the ``usage`` of ``conversation.item.input_audio_transcription.completed`` (§A.6).

    ``{"type": "tokens", "input_tokens", "output_tokens", "input_token_details": {"text_tokens",
    "audio_tokens"}}``: input by modality (input tokens the details do not account for are counted as audio,
    the normal input of a transcription), output as text. ``{"type": "duration", "seconds"}``: seconds / 60
    × the model's ``per_minute`` price. Transcription has no cached pricing.
    """
    price = table.price(model)
    kind = _get(usage, "type")
    if kind == "duration":
        raw_seconds = _get(usage, "seconds")
        if isinstance(raw_seconds, bool) or not isinstance(raw_seconds, int | float | Decimal):
            raise RemoteProtocolError(f"duration usage needs numeric 'seconds', not {raw_seconds!r}")
        seconds = Decimal(str(raw_seconds))
        if not seconds.is_finite():
            raise RemoteProtocolError(f"duration usage has non-finite 'seconds': {raw_seconds!r}")
        seconds = max(ZERO, seconds)
        cost = _DURATION_CONTEXT.divide(_DURATION_CONTEXT.multiply(seconds, price.per_minute), Decimal(60))
        return CostBreakdown(duration_seconds=seconds, duration_cost=cost.quantize(_DURATION_QUANTUM))
    if kind not in ("tokens", None):
        raise RemoteProtocolError(f"unknown transcription usage type {kind!r}")
    details = _get(usage, "input_token_details")
    text_in = _count(details, "text_tokens")
    audio_in = _count(details, "audio_tokens")
    audio_in += max(0, _count(usage, "input_tokens") - text_in - audio_in)
    text_out = _count(usage, "output_tokens")
    return CostBreakdown(
        text_input_fresh_tokens=text_in,
        audio_input_fresh_tokens=audio_in,
        text_output_tokens=text_out,
        text_input_fresh_cost=_cost(text_in, price.text_input),
        audio_input_fresh_cost=_cost(audio_in, price.audio_input),
        text_output_cost=_cost(text_out, price.text_output),
    )
