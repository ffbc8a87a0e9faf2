"""The call records database: one embedded SQLite file, opened by the service itself.

Four tables (schema version 1, ``PRAGMA user_version``):

- ``calls``: one row per call (who, which leg and agent, times, how it ended, cost and usage totals).
- ``transcript_events``: the transcript (:class:`~voice.call.transcript.TranscriptEvent`), keyed
  ``(call_id, seq)``.
- ``usage_events``: every priced usage, one row per ``response.done`` and per input transcription, keyed
  ``(call_id, seq)``, with its exact cost as decimal text (and its breakdown as JSON in ``cost_json``).
- ``spent_tokens``: ids (``jti``) of single-use browser caller tokens that started a call, with their expiry,
  kept until the token has expired (:meth:`CallStore.claim_token`, see :mod:`voice.auth`). Created with
  ``IF NOT EXISTS`` on open, so databases made before it get it without a schema version change.

Durability: the database runs in WAL mode with ``synchronous=NORMAL`` and every write method is one short
transaction committed before it returns. A committed transaction is in the WAL file (at least in the OS page
cache), so killing the process (``kill -9``) loses nothing already written; only a power loss can drop the
last transactions. On start-up :meth:`CallStore.mark_interrupted_calls` closes the calls a crash left open.

Concurrency: one connection guarded by a lock, so the store can be shared by threads and used from asyncio
(each call is a sub-millisecond write without fsync; wrap in :func:`asyncio.to_thread` if a checkpoint's
fsync must never touch the loop). Other processes (``voice calls``) can read while the service writes.

Money is :class:`~decimal.Decimal` in Python and decimal text in the database, never a float. Times are
ISO 8601 UTC text with milliseconds (``2025-01-31T12:00:00.000+00:00``), so they sort as text.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, Literal

from voice.call.cost import CostTotals, breakdown_from_dict, per_minute, ratio
from voice.call.transcript import TranscriptEvent, check_kind, check_t_ms
from voice.errors import RecordError, UnknownCallError
from voice.logs import get_logger
from voice.realtime.pricing import CostBreakdown

__all__ = [
    "CALL_STATUSES",
    "SCHEMA_VERSION",
    "SPENT_TOKEN_GRACE_S",
    "CallStatus",
    "CallStore",
    "RecordError",
    "UnknownCallError",
    "format_time",
    "parse_time",
]

SCHEMA_VERSION: Final = 1
CallStatus = Literal["ringing", "live", "ended"]
CALL_STATUSES: Final[frozenset[str]] = frozenset({"ringing", "live", "ended"})
UsageKind = Literal["response", "transcription"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id TEXT PRIMARY KEY,
    leg TEXT NOT NULL,
    caller TEXT,
    callee TEXT,
    agent TEXT,
    model TEXT,
    started_at TEXT NOT NULL,
    answered_at TEXT,
    ended_at TEXT,
    end_reason TEXT,
    status TEXT NOT NULL,
    duration_ms INTEGER,
    cost_usd TEXT NOT NULL DEFAULT '0',
    usage_json TEXT,
    cost_json TEXT,
    recording_path TEXT,
    metadata_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS calls_started_at ON calls (started_at);
CREATE INDEX IF NOT EXISTS calls_status ON calls (status);
CREATE TABLE IF NOT EXISTS transcript_events (
    call_id TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    t_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL DEFAULT '',
    data_json TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (call_id, seq)
);
CREATE TABLE IF NOT EXISTS usage_events (
    call_id TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    t_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    usage_json TEXT NOT NULL,
    cost_usd TEXT NOT NULL,
    cost_json TEXT NOT NULL,
    PRIMARY KEY (call_id, seq)
);
CREATE TABLE IF NOT EXISTS spent_tokens (
    jti TEXT PRIMARY KEY,
    exp INTEGER NOT NULL,
    spent_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS spent_tokens_exp ON spent_tokens (exp);
"""

SPENT_TOKEN_GRACE_S: Final = 300
"""Spent token ids are kept this long past their token's expiry, so a wall clock stepped back a little
cannot make an expired-and-forgotten token valid and unspent again."""

# Python field name -> (column, encoder kind) for update_call().
_FIELDS: Final[dict[str, tuple[str, str]]] = {
    "leg": ("leg", "text"),
    "caller": ("caller", "text"),
    "callee": ("callee", "text"),
    "agent": ("agent", "text"),
    "model": ("model", "text"),
    "started_at": ("started_at", "time"),
    "answered_at": ("answered_at", "time"),
    "ended_at": ("ended_at", "time"),
    "end_reason": ("end_reason", "text"),
    "status": ("status", "status"),
    "duration_ms": ("duration_ms", "int"),
    "cost_usd": ("cost_usd", "decimal"),
    "usage": ("usage_json", "json"),
    "cost": ("cost_json", "json"),
    "recording_path": ("recording_path", "text"),
    "metadata": ("metadata_json", "json"),
}

_log = get_logger(component="store")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    """ISO 8601 UTC with milliseconds; a naive datetime is taken to be UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds")


def parse_time(value: str) -> datetime:
    """The inverse of :func:`format_time` (accepts any ISO 8601 text; naive means UTC)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise RecordError(f"not an ISO 8601 time: {value!r}") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _time_arg(value: datetime | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return format_time(parse_time(value))
    return format_time(value)


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, Path):
        return str(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"cannot store a {type(value).__name__} as JSON")


def _dumps(value: object) -> str:
    try:
        return json.dumps(value, default=_json_default, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise RecordError(f"value cannot be stored as JSON: {exc}") from exc


def _as_mapping(value: object) -> dict[str, Any]:
    """A usage object from the SDK (pydantic) or a plain mapping, as a plain dict."""
    if isinstance(value, Mapping):
        return dict(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        result = dump(mode="json", exclude_none=True)
        if isinstance(result, dict):
            return result
    raise RecordError(f"usage must be a mapping or an SDK model, got {type(value).__name__}")


def _decimal(value: object, what: str) -> Decimal:
    if isinstance(value, float):
        raise RecordError(f"{what} must be a Decimal, int or decimal string, not a float (exact money)")
    try:
        result = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation as exc:
        raise RecordError(f"{what} is not a decimal number: {value!r}") from exc
    if not result.is_finite():
        raise RecordError(f"{what} must be finite, got {value!r}")
    return result


def _encode(name: str, kind: str, value: object) -> object:
    if value is None:
        if name in ("leg", "started_at", "status", "cost_usd", "metadata"):
            raise RecordError(f"{name} cannot be set to None")
        return None
    if kind == "text":
        return str(value)
    if kind == "time":
        if not isinstance(value, datetime | str):
            raise RecordError(f"{name} must be a datetime or ISO 8601 text, got {type(value).__name__}")
        return _time_arg(value)
    if kind == "status":
        if value not in CALL_STATUSES:
            raise RecordError(f"status must be one of {sorted(CALL_STATUSES)}, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RecordError(f"{name} must be a non-negative int, got {value!r}")
        return value
    if kind == "decimal":
        return str(_decimal(value, name))
    return _dumps(value)


def _call_row(row: sqlite3.Row) -> dict[str, Any]:
    """A ``calls`` row as the dict the API returns: JSON columns decoded under names without ``_json``."""
    out: dict[str, Any] = {}
    for key in row.keys():  # noqa: SIM118 (sqlite3.Row is not iterable by key)
        value = row[key]
        if key.endswith("_json"):
            out[key[: -len("_json")]] = json.loads(value) if value is not None else None
        else:
            out[key] = value
    if out.get("metadata") is None:
        out["metadata"] = {}
    return out


def _usage_row(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "call_id": row["call_id"],
        "seq": row["seq"],
        "t_ms": row["t_ms"],
        "kind": row["kind"],
        "model": row["model"],
        "usage": json.loads(row["usage_json"]),
        "cost_usd": row["cost_usd"],
        "cost": json.loads(row["cost_json"]) if row["cost_json"] is not None else None,
    }


class CallStore:
    """Calls, transcripts and usage in one SQLite database (created with its directory when missing)."""

    def __init__(
        self, path: Path, *, clock: Callable[[], datetime] = _utcnow, timeout_s: float = 10.0
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise RecordError(f"cannot open the call database {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        self._conn: sqlite3.Connection | None = conn
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RecordError(f"{self.path}: the database could not be switched to WAL mode ({mode})")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RecordError(
                    f"{self.path} has schema version {version}; this program knows up to {SCHEMA_VERSION}"
                )
            with self._lock:
                conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
        except sqlite3.DatabaseError as exc:
            conn.close()
            self._conn = None
            raise RecordError(f"{self.path} is not a usable call database: {exc}") from exc
        except RecordError:
            conn.close()
            self._conn = None
            raise

    # -- plumbing -----------------------------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RecordError(f"the call store {self.path} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed when the block exits (rolled back on error)."""
        with self._lock:
            db = self._db
            if db.in_transaction:  # a re-entrant call inside another write: join it
                yield db
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _read(self, sql: str, params: Iterable[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def _require_call(self, db: sqlite3.Connection, call_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM calls WHERE id = ?", (call_id,)).fetchone()
        if row is None:
            raise UnknownCallError(call_id)
        result: sqlite3.Row = row
        return result

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close. Safe to call twice."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # another process may hold a read transaction
                _log.debug("wal checkpoint skipped", error=str(exc))
            self._conn.close()
            self._conn = None

    def __enter__(self) -> CallStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------------------

    def create_call(
        self,
        call_id: str | None = None,
        *,
        leg: str,
        caller: str | None = None,
        callee: str | None = None,
        agent: str | None = None,
        model: str | None = None,
        started_at: datetime | None = None,
        status: CallStatus = "live",
        recording_path: Path | str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Insert a new call (status ``live`` unless told ``ringing``) and return its id.

        ``call_id`` defaults to ``call_`` + 24 hex digits; an id already stored is a :class:`RecordError`.
        """
        call_id = call_id or f"call_{uuid.uuid4().hex[:24]}"
        if not leg:
            raise RecordError("a call needs its leg type (twilio, sip, webrtc, browser...)")
        if status not in ("ringing", "live"):
            raise RecordError(f"a new call is 'ringing' or 'live', not {status!r}")
        start = format_time(started_at or self._clock())
        values = {
            "id": call_id,
            "leg": leg,
            "caller": caller,
            "callee": callee,
            "agent": agent,
            "model": model,
            "started_at": start,
            "answered_at": start if status == "live" else None,
            "status": status,
            "cost_usd": "0",
            "recording_path": str(recording_path) if recording_path is not None else None,
            "metadata_json": _dumps(dict(metadata or {})),
        }
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._write() as db:
            if db.execute("SELECT 1 FROM calls WHERE id = ?", (call_id,)).fetchone() is not None:
                raise RecordError(f"a call with id {call_id!r} already exists")
            db.execute(f"INSERT INTO calls ({columns}) VALUES ({marks})", tuple(values.values()))
        return call_id

    def add_transcript_event(self, event: TranscriptEvent) -> None:
        """Store one transcript event (committed before returning)."""
        check_t_ms(event.t_ms)
        check_kind(event.kind)
        data_json = _dumps(event.data)
        with self._write() as db:
            self._require_call(db, event.call_id)
            try:
                db.execute(
                    "INSERT INTO transcript_events (call_id, seq, t_ms, kind, text, data_json)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (event.call_id, event.seq, event.t_ms, event.kind, event.text, data_json),
                )
            except sqlite3.IntegrityError as exc:
                raise RecordError(
                    f"call {event.call_id!r} already has a transcript event with seq {event.seq}"
                ) from exc

    def add_usage(
        self,
        call_id: str,
        *,
        t_ms: int,
        kind: UsageKind,
        model: str,
        usage: Mapping[str, Any] | object,
        cost: CostBreakdown,
    ) -> int:
        """Store one priced usage and add its cost to the call's running ``cost_usd``; return its ``seq``.

        ``usage`` is the ``usage`` object of ``response.done`` (``kind="response"``) or of an input
        transcription (``kind="transcription"``), as a dict or the SDK model; ``cost`` is its price
        (``CostMeter.last``, or :func:`~voice.realtime.pricing.price_usage`).
        """
        check_t_ms(t_ms)
        if kind not in ("response", "transcription"):
            raise RecordError(f"usage kind must be 'response' or 'transcription', got {kind!r}")
        if not isinstance(cost, CostBreakdown):
            raise RecordError(f"cost must be a CostBreakdown, got {type(cost).__name__}")
        usage_json = _dumps(_as_mapping(usage))
        cost_json = _dumps(cost.to_dict())
        with self._write() as db:
            row = self._require_call(db, call_id)
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), -1) + 1 FROM usage_events WHERE call_id = ?", (call_id,)
            ).fetchone()[0]
            db.execute(
                "INSERT INTO usage_events (call_id, seq, t_ms, kind, model, usage_json, cost_usd, cost_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (call_id, seq, t_ms, kind, model, usage_json, str(cost.total), cost_json),
            )
            total = Decimal(row["cost_usd"]) + cost.total
            db.execute("UPDATE calls SET cost_usd = ? WHERE id = ?", (str(total), call_id))
        return int(seq)

    def update_call(self, call_id: str, **fields: Any) -> None:
        """Set some of a call's fields: any of ``leg caller callee agent model started_at answered_at
        ended_at end_reason status duration_ms cost_usd usage cost recording_path metadata``."""
        if not fields:
            return
        unknown = sorted(set(fields) - set(_FIELDS))
        if unknown:
            raise RecordError(f"unknown call field(s) {unknown}; known: {sorted(_FIELDS)}")
        assignments: list[str] = []
        params: list[object] = []
        for name, value in fields.items():
            column, kind = _FIELDS[name]
            assignments.append(f"{column} = ?")
            params.append(_encode(name, kind, value))
        with self._write() as db:
            self._require_call(db, call_id)
            db.execute(f"UPDATE calls SET {', '.join(assignments)} WHERE id = ?", (*params, call_id))

    def end_call(
        self,
        call_id: str,
        reason: str,
        *,
        ended_at: datetime | None = None,
        duration_ms: int | None = None,
        cost_usd: Decimal | None = None,
        usage: Mapping[str, Any] | None = None,
        cost: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Mark a call ended and return its row. The first end wins: ending an ended call changes nothing.

        Missing values are derived: ``ended_at`` from the clock, ``duration_ms`` from ``started_at``, and
        ``cost_usd``, ``usage`` (token totals) and ``cost`` (the breakdown) from the stored usage events.
        The runner normally passes ``duration_ms`` from the call clock and ``cost=meter.breakdown(...)``.
        """
        if not reason:
            raise RecordError("end_call needs a reason (hangup, agent_end_call, transfer, error, ...)")
        with self._write() as db:
            row = self._require_call(db, call_id)
            if row["status"] == "ended":
                _log.debug("call already ended", call_id=call_id, end_reason=row["end_reason"])
                return _call_row(row)
            end = parse_time(format_time(ended_at or self._clock()))  # aware UTC even if given naive
            if duration_ms is None:
                start = parse_time(row["started_at"])
                duration_ms = max(0, (end - start) // timedelta(milliseconds=1))
            totals = self._cost_totals(db, call_id)
            db.execute(
                "UPDATE calls SET status = 'ended', end_reason = ?, ended_at = ?, duration_ms = ?,"
                " cost_usd = ?, usage_json = ?, cost_json = ? WHERE id = ?",
                (
                    reason,
                    format_time(end),
                    _encode("duration_ms", "int", duration_ms),
                    str(_decimal(cost_usd, "cost_usd") if cost_usd is not None else totals.total),
                    _dumps(dict(usage) if usage is not None else totals.usage()),
                    _dumps(dict(cost) if cost is not None else _report(row, totals, duration_ms)),
                    call_id,
                ),
            )
            return _call_row(self._require_call(db, call_id))

    def mark_interrupted_calls(self) -> list[str]:
        """Close the calls a crash left ``live`` or ``ringing``; return their ids.

        Each becomes ``ended`` with ``end_reason='crashed'``; its duration is the time of its last stored
        event (transcript or usage), ``ended_at`` is ``started_at`` plus that, and its cost, usage and cost
        breakdown are rebuilt from the stored usage events. Call this once at start-up, before taking calls.
        """
        closed: list[str] = []
        with self._write() as db:
            rows = db.execute("SELECT * FROM calls WHERE status IN ('live', 'ringing')").fetchall()
            for row in rows:
                call_id = row["id"]
                last = db.execute(
                    "SELECT MAX(t) FROM (SELECT MAX(t_ms) AS t FROM transcript_events WHERE call_id = ?"
                    " UNION ALL SELECT MAX(t_ms) FROM usage_events WHERE call_id = ?)",
                    (call_id, call_id),
                ).fetchone()[0]
                duration = int(last or 0)
                ended_at = parse_time(row["started_at"]) + timedelta(milliseconds=duration)
                totals = self._cost_totals(db, call_id)
                db.execute(
                    "UPDATE calls SET status = 'ended', end_reason = 'crashed', ended_at = ?,"
                    " duration_ms = ?, cost_usd = ?, usage_json = ?, cost_json = ? WHERE id = ?",
                    (
                        format_time(ended_at),
                        duration,
                        str(totals.total),
                        _dumps(totals.usage()),
                        _dumps(_report(row, totals, duration)),
                        call_id,
                    ),
                )
                closed.append(call_id)
        if closed:
            _log.warning("closed calls interrupted by a crash", calls=closed)
        return closed

    def claim_token(self, jti: str, exp: int, now: float) -> bool:
        """Record the single-use token ``jti`` (valid until ``exp``, Unix seconds) as spent at ``now``;
        False if it was spent before. Ids whose token expired more than :data:`SPENT_TOKEN_GRACE_S` before
        ``now`` are deleted in the same transaction, so the table holds only tokens that could still be
        presented. One ``INSERT`` on the primary key: of two simultaneous claims exactly one succeeds."""
        with self._write() as db:
            db.execute("DELETE FROM spent_tokens WHERE exp < ?", (now - SPENT_TOKEN_GRACE_S,))
            inserted = db.execute(
                "INSERT OR IGNORE INTO spent_tokens (jti, exp, spent_at) VALUES (?, ?, ?)", (jti, exp, now)
            ).rowcount
        return inserted == 1

    def spent_token_count(self) -> int:
        """How many spent token ids are kept (expired ones go at the next :meth:`claim_token`)."""
        return int(self._read("SELECT COUNT(*) FROM spent_tokens")[0][0])

    def delete_call(self, call_id: str) -> None:
        """Remove a call with its transcript and usage (the recording file is the caller's business)."""
        with self._write() as db:
            self._require_call(db, call_id)
            db.execute("DELETE FROM calls WHERE id = ?", (call_id,))

    # -- reads ----------------------------------------------------------------------------------------

    def _cost_totals(self, db: sqlite3.Connection, call_id: str) -> CostTotals:
        totals = CostTotals()
        for row in db.execute(
            "SELECT kind, cost_json FROM usage_events WHERE call_id = ? ORDER BY seq", (call_id,)
        ):
            totals.add(row["kind"], breakdown_from_dict(json.loads(row["cost_json"])))
        return totals

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        """The call's row (JSON columns decoded: ``usage``, ``cost``, ``metadata``), or None if unknown."""
        rows = self._read("SELECT * FROM calls WHERE id = ?", (call_id,))
        return _call_row(rows[0]) if rows else None

    def call_detail(self, call_id: str) -> dict[str, Any]:
        """The call's row plus its ``transcript`` and ``usage_events``; :class:`UnknownCallError` if none."""
        with self._lock:
            call = self.get_call(call_id)
            if call is None:
                raise UnknownCallError(call_id)
            call["transcript"] = self.transcript(call_id)
            call["usage_events"] = self.usage(call_id)
            return call

    def _where(
        self,
        *,
        status: str | None,
        leg: str | None,
        agent: str | None,
        since: datetime | str | None,
        until: datetime | str | None,
        caller: str | None = None,
        model: str | None = None,
    ) -> tuple[str, list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        if status is not None:
            if status not in CALL_STATUSES:
                raise RecordError(f"status must be one of {sorted(CALL_STATUSES)}, got {status!r}")
            clauses.append("status = ?")
            params.append(status)
        for column, value in (("leg", leg), ("agent", agent), ("caller", caller), ("model", model)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("started_at >= ?")
            params.append(_time_arg(since))
        if until is not None:
            clauses.append("started_at < ?")
            params.append(_time_arg(until))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def list_calls(
        self,
        status: str | None = None,
        leg: str | None = None,
        agent: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        caller: str | None = None,
        model: str | None = None,
    ) -> list[dict[str, Any]]:
        """Calls, newest first, filtered by status, leg, agent, caller, model and ``since <= started_at <
        until``; ``limit``/``offset`` page through them."""
        if limit < 0 or offset < 0:
            raise RecordError(f"limit and offset must be >= 0, got {limit} and {offset}")
        where, params = self._where(
            status=status, leg=leg, agent=agent, since=since, until=until, caller=caller, model=model
        )
        rows = self._read(
            f"SELECT * FROM calls{where} ORDER BY started_at DESC, id LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [_call_row(row) for row in rows]

    def count_calls(
        self,
        status: str | None = None,
        leg: str | None = None,
        agent: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> int:
        """How many calls :meth:`list_calls` would return without a limit."""
        where, params = self._where(status=status, leg=leg, agent=agent, since=since, until=until)
        return int(self._read(f"SELECT COUNT(*) FROM calls{where}", params)[0][0])

    def transcript(self, call_id: str) -> list[dict[str, Any]]:
        """The call's transcript events in ``seq`` order (``TranscriptEvent.to_dict`` shape)."""
        with self._lock:
            self._require_call(self._db, call_id)
            rows = self._read("SELECT * FROM transcript_events WHERE call_id = ? ORDER BY seq", (call_id,))
        return [TranscriptEvent.from_dict(row_dict).to_dict() for row_dict in map(dict, rows)]

    def usage(self, call_id: str) -> list[dict[str, Any]]:
        """The call's usage events in ``seq`` order (usage and cost decoded; ``cost_usd`` as decimal text)."""
        with self._lock:
            self._require_call(self._db, call_id)
            rows = self._read("SELECT * FROM usage_events WHERE call_id = ? ORDER BY seq", (call_id,))
        return [_usage_row(row) for row in rows]

    def cost_summary(
        self,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        *,
        agent: str | None = None,
        leg: str | None = None,
        model: str | None = None,
        status: str | None = None,
    ) -> dict[str, Any]:
        """Cost over the calls matching the filters (``since <= started_at < until``), for ``voice cost``.

        Returns ``calls``; ``duration_ms`` and ``minutes`` (of the calls with a duration, i.e. ended);
        ``total_usd``, ``response_usd``, ``transcription_usd``; ``per_call_usd`` (mean over the calls);
        ``per_minute_usd`` (cost of the calls with a duration / their minutes); ``input_tokens``,
        ``cached_input_tokens`` and ``cache_hit_rate`` (cached / input tokens of the responses, None without
        input); ``savings_usd`` (what caching saved); and ``by_call``, the same figures per call, newest
        first. Money is exact decimal text; rates and means are rounded to 6 places.
        """
        where, params = self._where(
            status=status, leg=leg, agent=agent, since=since, until=until, model=model
        )
        with self._lock:
            calls = self._read(
                "SELECT id, started_at, agent, leg, model, status, duration_ms, end_reason"
                f" FROM calls{where} ORDER BY started_at DESC, id",
                params,
            )
            per_call: dict[str, CostTotals] = {row["id"]: CostTotals() for row in calls}
            ids = list(per_call)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                for row in self._read(
                    f"SELECT call_id, kind, cost_json FROM usage_events WHERE call_id IN ({marks})"
                    " ORDER BY call_id, seq",
                    chunk,
                ):
                    per_call[row["call_id"]].add(
                        row["kind"], breakdown_from_dict(json.loads(row["cost_json"]))
                    )
        everything = CostTotals()
        timed = CostTotals()
        duration_ms = 0
        by_call: list[dict[str, Any]] = []
        for row in calls:
            totals = per_call[row["id"]]
            everything.merge(totals)
            if row["duration_ms"]:
                timed.merge(totals)
                duration_ms += row["duration_ms"]
            by_call.append(
                {
                    key: row[key]
                    for key in (
                        "id",
                        "started_at",
                        "agent",
                        "leg",
                        "model",
                        "status",
                        "end_reason",
                        "duration_ms",
                    )
                }
                | _figures(totals, row["duration_ms"])
            )
        minutes = ratio(Decimal(duration_ms), Decimal(60_000))
        mean = ratio(everything.total, Decimal(len(calls)))
        return {
            "calls": len(calls),
            "duration_ms": duration_ms,
            "minutes": str(minutes if minutes is not None else Decimal(0)),
            **_figures(everything, None),
            "per_call_usd": str(mean) if mean is not None else None,
            "per_minute_usd": _text(per_minute(timed.total, duration_ms)),
            "by_call": by_call,
        }


def _text(value: Decimal | None) -> str | None:
    return str(value) if value is not None else None


def _figures(totals: CostTotals, duration_ms: int | None) -> dict[str, Any]:
    """The summary figures of some usage (one call's or many calls')."""
    return {
        "total_usd": str(totals.total),
        "response_usd": str(totals.response.total),
        "transcription_usd": str(totals.transcription.total),
        "per_minute_usd": _text(per_minute(totals.total, duration_ms)),
        "input_tokens": totals.response.input_tokens,
        "cached_input_tokens": totals.response.cached_input_tokens,
        "cache_hit_rate": _text(totals.cache_hit_rate),
        "savings_usd": str(totals.savings),
    }


def _report(row: sqlite3.Row, totals: CostTotals, duration_ms: int | None) -> dict[str, Any]:
    """The ``cost`` column derived from stored usage (when the runner did not give a meter's breakdown)."""
    return {"model": row["model"], **totals.report(duration_ms)}
