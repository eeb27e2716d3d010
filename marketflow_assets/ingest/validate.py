"""Validation of CoinGecko ``/coins/markets`` records and normalisation to the Kafka message.

The message is the CoinGecko record as received (every field that is present, nulls included)
plus ``ts`` (the poll's snapshot time, identical for every coin of one poll) and
``schema_version`` (:data:`marketflow_assets.schema.SCHEMA_VERSION`). Normalisation is limited to
what consumers need to trust the types:

* numeric fields (:data:`~marketflow_assets.schema.MESSAGE_NUMERIC_FIELDS`) that arrive as
  numeric strings (``"24660.5"``) are coerced to numbers; anything else that is not a finite
  number or ``null`` rejects the record with a reason naming the field;
* ``current_price`` must be a positive finite number; ``id`` and ``symbol`` non-empty strings;
  ``last_updated`` a parsable ISO-8601 time (kept verbatim).

A rejected record becomes a dead-letter message ``{"reason", "payload", "ts", "schema_version"}``
(:data:`~marketflow_assets.schema.DLQ_FIELDS`) carrying the original payload untouched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from marketflow_assets.schema import (
    MESSAGE_NUMERIC_FIELDS,
    SCHEMA_VERSION,
)

# Fields whose value is a count/rank: coerced to int when integral.
_INTEGER_FIELDS = frozenset({"market_cap_rank"})


class InvalidRecord(ValueError):
    """A record that cannot be published; ``str(exc)`` is the DLQ reason."""


@dataclass(frozen=True)
class Message:
    """One Kafka message: ``key`` (coin id or None) and a JSON-serialisable ``value``."""

    key: str | None
    value: dict[str, Any]
    raw: Any = field(default=None, compare=False, repr=False)  # the record as received

    def key_bytes(self) -> bytes | None:
        return None if self.key is None else self.key.encode("utf-8")

    def value_bytes(self) -> bytes:
        return json.dumps(self.value, separators=(",", ":"), allow_nan=False).encode("utf-8")


@dataclass
class ValidatedPoll:
    """The outcome of validating one poll: good messages and dead letters."""

    ts: str
    good: list[Message] = field(default_factory=list)
    bad: list[Message] = field(default_factory=list)


def parse_time(value: Any) -> datetime:
    """Parse an ISO-8601 time (``Z`` or offset; naive means UTC) into an aware UTC datetime."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"not an ISO-8601 time: {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO-8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_ts(moment: datetime) -> str:
    """Canonical ``ts`` text: ISO-8601 UTC with milliseconds and ``Z`` (``...T09:49:56.713Z``)."""
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def coerce_number(name: str, value: Any) -> int | float | None:
    """Return ``value`` as a finite number (or None for null); raise :class:`InvalidRecord`."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRecord(f"{name}: expected a number, got boolean {value!r}")
    if isinstance(value, int):
        number: int | float = value
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise InvalidRecord(f"{name}: expected a number, got empty string")
        try:
            number = float(text)
        except ValueError:
            raise InvalidRecord(
                f"{name}: expected a number, got non-numeric string {_short(value)}"
            ) from None
    else:
        raise InvalidRecord(f"{name}: expected a number, got {type(value).__name__}")
    if isinstance(number, float) and not math.isfinite(number):
        raise InvalidRecord(f"{name}: expected a finite number, got {_short(value)}")
    if name in _INTEGER_FIELDS and isinstance(number, float) and number.is_integer():
        number = int(number)
    return number


def normalise_record(record: Any, ts: str) -> dict[str, Any]:
    """Validate one CoinGecko market record and return the Kafka message value.

    Raises :class:`InvalidRecord` with a one-line reason when the record cannot be published.
    """
    if not isinstance(record, dict):
        raise InvalidRecord(f"record is not a JSON object but {type(record).__name__}")
    coin_id = record.get("id")
    if not isinstance(coin_id, str) or not coin_id.strip():
        raise InvalidRecord(f"id: missing or not a non-empty string ({_short(coin_id)})")
    symbol = record.get("symbol")
    if not isinstance(symbol, str) or not symbol.strip():
        raise InvalidRecord(f"symbol: missing or not a non-empty string ({_short(symbol)})")
    name = record.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidRecord(f"name: expected a string, got {type(name).__name__}")
    if record.get("current_price") is None:
        raise InvalidRecord("current_price: missing or null")
    value = dict(record)
    for key in MESSAGE_NUMERIC_FIELDS:
        if key in value:
            value[key] = coerce_number(key, value[key])
    price = value["current_price"]
    if price <= 0:
        raise InvalidRecord(
            f"current_price: must be positive, got {_short(record['current_price'])}"
        )
    if "last_updated" not in record or record["last_updated"] is None:
        raise InvalidRecord("last_updated: missing or null")
    try:
        parse_time(record["last_updated"])
    except ValueError as exc:
        raise InvalidRecord(f"last_updated: {exc}") from None
    value["ts"] = ts
    value["schema_version"] = SCHEMA_VERSION
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        bad = sorted(k for k, v in value.items() if isinstance(v, float) and not math.isfinite(v))
        raise InvalidRecord(
            f"{', '.join(bad) or 'record'}: NaN or Infinity is not valid JSON"
        ) from None
    return value


def dead_letter(payload: Any, reason: str, ts: str) -> Message:
    """The DLQ message for ``payload`` (kept as received) rejected for ``reason``."""
    key = None
    if isinstance(payload, dict) and isinstance(payload.get("id"), str) and payload["id"]:
        key = payload["id"]
    value = {"reason": reason, "payload": payload, "ts": ts, "schema_version": SCHEMA_VERSION}
    return Message(key=key, value=value)


def _json_safe(payload: Any) -> Any:
    """``payload`` made strict-JSON: NaN/Infinity (accepted by lax parsers) become strings."""
    if isinstance(payload, float) and not math.isfinite(payload):
        return "NaN" if math.isnan(payload) else ("Infinity" if payload > 0 else "-Infinity")
    if isinstance(payload, dict):
        return {str(k): _json_safe(v) for k, v in payload.items()}
    if isinstance(payload, list | tuple):
        return [_json_safe(v) for v in payload]
    if payload is None or isinstance(payload, str | int | float | bool):
        return payload
    return repr(payload)


def validate_poll(records: Iterable[Any], ts: str) -> ValidatedPoll:
    """Split one poll's records into good messages (key = coin id) and dead letters.

    A coin id seen twice in one poll keeps its first record; the repeat is a dead letter, so the
    raw dataset never receives two rows for one (id, ts).
    """
    result = ValidatedPoll(ts=ts)
    seen: set[str] = set()
    for record in records:
        try:
            value = normalise_record(record, ts)
            if value["id"] in seen:
                raise InvalidRecord(f"id: duplicate {value['id']!r} within one poll")
        except InvalidRecord as exc:
            result.bad.append(dead_letter(_json_safe(record), str(exc), ts))
            continue
        seen.add(value["id"])
        result.good.append(Message(key=value["id"], value=value, raw=record))
    return result
