"""The record contract: whether one Kafka price message is usable, and the raw row it stands for.

One pure decision shared by every reader and writer of the ``crypto_prices`` topic: the ingest
(before publishing; a rejected record goes to the dead-letter topic with the reason), the Spark
job (``spark_streaming.kafka_streaming.parse_messages``; a rejected message goes to
``raw_prices_rejects/`` with the reason) and the live consumer (``marketflow_assets.live``; a
rejected message is counted and skipped). So a message becomes a raw row, a live row and a
published message under the same rule, and is rejected by all three with the same reason code.

The message value is a JSON object (decoded as Python's :func:`json.loads` decodes it, whose
``NaN`` / ``Infinity`` literals and overflowing numbers such as ``1e999`` come out as non-finite
floats and are then refused below; :func:`loads` tries orjson first, ~2x faster, and leaves every
value orjson refuses to :func:`json.loads`, so the outcome is the same). It is valid when

* ``id`` is a string that is not blank;
* ``ts`` is an ISO-8601 time string (``Z`` or an offset; without one it means UTC) within the
  int64-nanosecond range (years 1677 to 2262) the indicators compute in;
* ``current_price`` is a JSON number (not a string, not a boolean), finite and positive;
* the other raw fields, when present and not null, have their type: ``symbol`` / ``name``
  strings, ``last_updated`` an ISO-8601 time string, the numeric fields
  (:data:`~marketflow_assets.schema.MESSAGE_NUMERIC_FIELDS`) finite JSON numbers, and
  ``market_cap_rank`` an integral one;
* no number anywhere in the object (nested ones included) is NaN or infinite: the message must
  be strict JSON.

Numbers are never read from strings (``"5"`` is not a price) and booleans are not numbers. Fields
beyond these are carried as they are. Each rule has one reason code (:data:`REASONS`); the checks
run in the order listed there, and the first failing one names the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from marketflow_assets.schema import MESSAGE_NUMERIC_FIELDS, RAW_COLUMN_NAMES

# Reason codes (the ``reason`` of a Spark reject and of a dead letter), in checking order.
EMPTY_VALUE = "empty_value"
INVALID_JSON = "invalid_json"
MISSING_ID = "missing_id"
INVALID_ID = "invalid_id"
MISSING_TS = "missing_ts"
INVALID_TS = "invalid_ts"
MISSING_PRICE = "missing_price"
INVALID_PRICE = "invalid_price"
NON_POSITIVE_PRICE = "non_positive_price"
INVALID_FIELD = "invalid_field"
#: Not a property of one message: the ingest's second record of one coin within one poll.
DUPLICATE_IN_POLL = "duplicate_in_poll"

#: Every reason code and what it means.
REASONS: dict[str, str] = {
    EMPTY_VALUE: "no value, or only whitespace",
    INVALID_JSON: "not JSON, or JSON that is not an object",
    MISSING_ID: "id absent, null or blank",
    INVALID_ID: "id not a string",
    MISSING_TS: "ts absent or null",
    INVALID_TS: "ts not an ISO-8601 time string",
    MISSING_PRICE: "current_price absent or null",
    INVALID_PRICE: "current_price not a finite JSON number (strings, booleans, NaN, infinities)",
    NON_POSITIVE_PRICE: "current_price zero or negative",
    INVALID_FIELD: "another field of the wrong type, or a NaN/infinite number anywhere",
    DUPLICATE_IN_POLL: "ingest only: a second record of the same id in one poll",
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_INT64_MAX = 2**63 - 1
_MIN_US, _MAX_US = -(2**63) // 1000 + 1, _INT64_MAX // 1000
_OTHER_NUMERIC = tuple(f for f in MESSAGE_NUMERIC_FIELDS if f not in ("current_price",))
_INTEGER_FIELDS = frozenset({"market_cap_rank"})
_RAW_NUMERIC = frozenset(RAW_COLUMN_NAMES) & frozenset(MESSAGE_NUMERIC_FIELDS)


class Invalid(NamedTuple):
    """A rejected message: ``reason`` (one of :data:`REASONS`) and a one-line ``detail``."""

    reason: str
    detail: str


#: A valid message's raw row: the values of :data:`~marketflow_assets.schema.RAW_COLUMN_NAMES`
#: in that order; ``last_updated`` and ``ts`` as integer microseconds since the epoch (UTC).
RawRow = tuple


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_time(value: Any) -> datetime:
    """Parse an ISO-8601 time (``Z`` or offset; naive means UTC) into an aware UTC datetime."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"not an ISO-8601 time: {_short(value)}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO-8601 time: {_short(value)}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@lru_cache(maxsize=65_536)
def time_us(text: str) -> int:
    """:func:`parse_time` of ``text`` as integer microseconds since the epoch (cached: every
    message of one poll carries the same ``ts``). Raises ValueError, also for a time outside
    the int64-nanosecond range (1677-09-21 .. 2262-04-11) the indicators compute in."""
    micros = (parse_time(text) - _EPOCH) // _US
    if not _MIN_US <= micros <= _MAX_US:
        raise ValueError(f"outside the int64-nanosecond range: {_short(text)}")
    return micros


def _non_finite(value: Any) -> bool:
    """Whether a NaN or an infinity is anywhere in the decoded JSON ``value``."""
    kind = type(value)
    if kind is float:
        return not math.isfinite(value)
    if kind is dict:
        return any(_non_finite(v) for v in value.values())
    if kind is list:
        return any(_non_finite(v) for v in value)
    return False


def check_message(message: Any) -> RawRow | Invalid:
    """The raw row of one decoded message value, or why it is invalid (see the module doc)."""
    return _check(message, strict=False)


#: Per numeric field other than the price: (name, integral, stored as a double in the raw row).
_NUMERIC_PLAN = tuple((f, f in _INTEGER_FIELDS, f in _RAW_NUMERIC) for f in _OTHER_NUMERIC)


def _check(message: Any, strict: bool) -> RawRow | Invalid:
    """:func:`check_message`; ``strict``: ``message`` came from orjson, which never yields a
    NaN or an infinity (it refuses ``NaN`` literals and numbers that overflow a double), so the
    last check - a non-finite number anywhere - is known to pass and is skipped."""
    if type(message) is not dict:
        return Invalid(INVALID_JSON, f"not a JSON object but {type(message).__name__}")
    get = message.get
    coin = get("id")
    if type(coin) is not str:
        if coin is None:
            return Invalid(MISSING_ID, "id: missing or null")
        return Invalid(INVALID_ID, f"id: expected a string, got {type(coin).__name__}")
    if not coin.strip():
        return Invalid(MISSING_ID, f"id: blank ({_short(coin)})")
    ts = get("ts")
    if ts is None:
        return Invalid(MISSING_TS, "ts: missing or null")
    try:
        ts_us = time_us(ts)
    except (ValueError, TypeError, OverflowError):
        return Invalid(INVALID_TS, f"ts: not an ISO-8601 time: {_short(ts)}")
    price = get("current_price")
    kind = type(price)
    if kind is float:
        if not math.isfinite(price):
            return Invalid(INVALID_PRICE, f"current_price: not finite ({_short(price)})")
    elif kind is int:
        try:
            price = float(price)
        except OverflowError:
            return Invalid(INVALID_PRICE, "current_price: too large for a double")
    elif price is None:
        return Invalid(MISSING_PRICE, "current_price: missing or null")
    else:
        return Invalid(INVALID_PRICE, f"current_price: expected a number, got {_short(price)}")
    if price <= 0:
        return Invalid(NON_POSITIVE_PRICE, f"current_price: must be positive, got {price!r}")
    numbers: dict[str, Any] = {}
    for name, integral, raw_double in _NUMERIC_PLAN:
        value = get(name)
        if value is None:
            numbers[name] = None
            continue
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                return Invalid(INVALID_FIELD, f"{name}: not finite ({_short(value)})")
        elif kind is not int:
            return Invalid(INVALID_FIELD, f"{name}: expected a number, got {_short(value)}")
        if integral:
            if kind is float:
                if not value.is_integer():
                    return Invalid(INVALID_FIELD, f"{name}: expected an integer, got {value!r}")
                value = int(value)
            if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
                return Invalid(INVALID_FIELD, f"{name}: out of the int64 range")
        elif kind is int and raw_double:
            try:
                value = float(value)
            except OverflowError:
                return Invalid(INVALID_FIELD, f"{name}: too large for a double")
        numbers[name] = value
    symbol, name = get("symbol"), get("name")
    if symbol is not None and type(symbol) is not str:
        return Invalid(INVALID_FIELD, f"symbol: expected a string, got {type(symbol).__name__}")
    if name is not None and type(name) is not str:
        return Invalid(INVALID_FIELD, f"name: expected a string, got {type(name).__name__}")
    updated = get("last_updated")
    if updated is not None:
        try:
            updated = time_us(updated)
        except (ValueError, TypeError, OverflowError):
            return Invalid(INVALID_FIELD, f"last_updated: not an ISO-8601 time: {_short(updated)}")
    if not strict:
        for key, value in message.items():
            if type(value) in (float, dict, list) and _non_finite(value):
                return Invalid(INVALID_FIELD, f"{key}: holds NaN or an infinity (not strict JSON)")
    return (
        coin,
        symbol,
        name,
        price,
        numbers["market_cap"],
        numbers["market_cap_rank"],
        numbers["total_volume"],
        numbers["high_24h"],
        numbers["low_24h"],
        numbers["price_change_percentage_24h"],
        numbers["circulating_supply"],
        updated,
        ts_us,
    )


#: orjson reads an integer literal beyond the 64-bit range as a float (json.loads keeps it an
#: exact int); any such float has at least this magnitude.
_BEYOND_64_BITS = float(2**63)


def _holds_big_float(obj: Any) -> bool:
    """Whether a float of magnitude >= 2**63 is anywhere in the decoded ``obj`` (iterative: no
    recursion limit on deep nesting)."""
    if type(obj) is dict:  # a flat object (most messages): one pass over its values
        nested = False
        for item in obj.values():
            kind = type(item)
            if kind is float:
                if not -_BEYOND_64_BITS < item < _BEYOND_64_BITS:
                    return True
            elif kind is dict or kind is list:
                nested = True
        if not nested:
            return False
    stack = [obj]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is float and not -_BEYOND_64_BITS < item < _BEYOND_64_BITS:
            return True
    return False


def loads(value: bytes | str) -> Any:
    """:func:`json.loads` of ``value``, through orjson when that gives the same object: a value
    orjson refuses (``NaN`` literals, non-UTF-8 encodings, invalid JSON) or may have read
    otherwise (a float of magnitude >= 2**63 in its result: an integer beyond 64 bits, which
    json.loads keeps exact) is decoded, or refused, by :func:`json.loads` itself."""
    return _decode(value)[0]


def _decode(value: bytes | str, look: bool = True) -> tuple[Any, bool]:
    """:func:`loads` of ``value`` and whether orjson decoded it (then no number in it is NaN or
    infinite). ``look=False``: orjson's object as it is, even where it holds a float of
    magnitude >= 2**63 (maybe an integer beyond 64 bits that json.loads keeps exact)."""
    try:
        decoded = _orjson_loads(value)
    except ValueError:  # orjson.JSONDecodeError is one
        return json.loads(value), False
    if look and _holds_big_float(decoded):
        return json.loads(value), False
    return decoded, True


def dumps(value: Any, finite: bool = False) -> bytes:
    """Compact strict JSON of ``value`` as UTF-8: what ``json.dumps(value, separators=(",",
    ":"), allow_nan=False)`` writes, up to the spelling of numbers and of non-ASCII text (both
    decode to the same object: ``1e-05`` / ``1e-5``, ``\\u00e9`` / ``é``), through orjson
    (a 15,000-coin poll's messages in 66 against 142 ms) where it can write ``value``.

    orjson writes NaN and the infinities as ``null``; json.dumps refuses them (ValueError), and
    so does this: ``value`` is first looked through for one (2 us a message) unless ``finite``
    (the caller knows it holds none: a message the contract accepted, a dead letter made JSON
    safe). What orjson refuses (an integer beyond 64 bits, a key that is not a string) is
    written by json.dumps."""
    if not finite and _non_finite(value):
        raise ValueError("Out of range float values are not JSON compliant")
    try:
        return _orjson_dumps(value)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")


class _NoOrjson(TypeError, ValueError):
    """orjson is not installed: every caller falls back to the json module."""


def _no_orjson(value: Any) -> Any:
    raise _NoOrjson("orjson is not installed")


try:
    from orjson import dumps as _orjson_dumps
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - a dependency of confluent-kafka
    _orjson_dumps = _orjson_loads = _no_orjson


def _big_integral(message: dict) -> bool:
    """Whether an integral field of ``message`` holds a float of magnitude >= 2**63.

    Where orjson read an integer beyond 64 bits (as a float, where json.loads keeps the exact
    int), only this can change :func:`_check`'s answer for an object: ``-2**63 - 1`` read as the
    float ``-2**63`` would pass as an int64. Elsewhere both readings give the same answer: the
    price and the raw doubles become that float either way (orjson rounds an integer literal
    as ``float(int)`` does), and of other numbers only the type and finiteness are checked."""
    for name in _INTEGER_FIELDS:
        value = message.get(name)
        if type(value) is float and not -_BEYOND_64_BITS < value < _BEYOND_64_BITS:
            return True
    return False


def parse_value(value: bytes | str | None) -> RawRow | Invalid:
    """The raw row of one Kafka message value (UTF-8 JSON bytes or text), or why it is invalid.

    The answer :func:`check_message` gives for ``json.loads(value)``: orjson's object is looked
    through for a number it may have read otherwise (:func:`loads`) only where that can change
    the answer - not an object, or :func:`_big_integral` (a walk of every value costs 0.7 us a
    message, 15 % of this function)."""
    if value is None or not value.strip():
        return Invalid(EMPTY_VALUE, "empty value")
    try:
        message, strict = _decode(value, look=False)
        if strict and (type(message) is not dict or _big_integral(message)):
            message, strict = _decode(value)
    except (ValueError, RecursionError) as exc:
        return Invalid(INVALID_JSON, f"not JSON: {_short(str(exc), 80)}")
    return _check(message, strict)


def parse_values(values: Iterable[bytes | str | None]):
    """Batch form of :func:`parse_value`: ``(table, reasons)``.

    ``table`` is a pyarrow table with one row per value and the raw columns
    (:func:`~marketflow_assets.schema.raw_arrow_schema`); the row of an invalid value is all
    nulls. ``reasons[i]`` is None for a valid value, else its reason code.
    """
    import pyarrow as pa

    from marketflow_assets.schema import raw_arrow_schema

    schema = raw_arrow_schema()
    width = len(schema)
    empty = (None,) * width
    rows: list[tuple] = []
    reasons: list[str | None] = []
    for value in values:
        result = parse_value(value)
        if type(result) is Invalid:
            rows.append(empty)
            reasons.append(result.reason)
        else:
            rows.append(result)
            reasons.append(None)
    columns = list(zip(*rows, strict=True)) if rows else [()] * width
    arrays = [
        pa.array(column, type=field.type) for column, field in zip(columns, schema, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=schema), reasons
