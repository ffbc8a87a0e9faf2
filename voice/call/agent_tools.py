"""Example function tools for the restaurant agent (``prompts/restaurant.*``), deterministic for tests.

``book_table`` returns a confirmation code derived from the booking (the same booking gives the same code),
``check_availability`` says whether the restaurant takes bookings on a date (closed on Mondays, as the
agent's instructions say). They show both declaration styles of :mod:`voice.call.tools`: plain annotated
parameters and a pydantic model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from voice.call.tools import Tool, ToolRegistry, tool

__all__ = ["AvailabilityQuery", "book_table", "check_availability", "restaurant_registry"]

_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: easy to read back on the phone


@tool(description="Book a table. Returns a confirmation code to read back to the caller.")
def book_table(
    party_size: int = Field(ge=1, le=20, description="Number of guests"),
    time: str = Field(description="Time of the booking, e.g. 19:30"),
    name: str = Field(min_length=1, description="Name for the booking"),
) -> dict[str, Any]:
    digest = hashlib.sha256(f"{party_size}|{time.strip().lower()}|{name.strip().lower()}".encode()).digest()
    code = "".join(_CODE_ALPHABET[b % len(_CODE_ALPHABET)] for b in digest[:6])
    return {"confirmation": code, "party_size": party_size, "time": time, "name": name}


class AvailabilityQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    date: dt.date = Field(description="ISO date, e.g. 2026-12-24")


@tool(description="Check whether tables are free on a date.")
def check_availability(query: AvailabilityQuery) -> dict[str, Any]:
    if query.date.weekday() == 0:
        return {"date": query.date.isoformat(), "available": False, "reason": "closed on Mondays"}
    return {"date": query.date.isoformat(), "available": True, "hours": "12:00-22:00"}


def restaurant_registry() -> ToolRegistry:
    """The restaurant agent's tools with the built-ins (end_call, transfer_call, send_dtmf)."""
    tools: list[Tool] = [book_table, check_availability]
    return ToolRegistry(tools)
