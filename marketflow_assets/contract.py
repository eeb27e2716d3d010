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
* ``id``, ``symbol`` and ``name`` are text UTF-8 can hold (no lone surrogate such as
  ``"\\ud800"``, which JSON allows: no table could store it);
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
    INVALID_ID: "id not a string, or not UTF-8 text (a lone surrogate)",
    MISSING_TS: "ts absent or null",
    INVALID_TS: "ts not an ISO-8601 time string",
    MISSING_PRICE: "current_price absent or null",
    INVALID_PRICE: "current_price not a finite JSON number (strings, booleans, NaN, infinities)",
    NON_POSITIVE_PRICE: "current_price zero or negative",
    INVALID_FIELD: "another field of the wrong type (symbol or name not UTF-8 text too), or a "
    "NaN/infinite number anywhere",
    DUPLICATE_IN_POLL: "ingest only: a second record of the same id in one poll",
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_INT64_MAX = 2**63 - 1
_INT64 = range(-_INT64_MAX - 1, _INT64_MAX + 1)  # `int in range`: two comparisons in C
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


def _utf8(text: str) -> bool:
    """Whether UTF-8 can encode ``text`` (it cannot a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    if not coin.isascii() and not _utf8(coin):
        return Invalid(INVALID_ID, f"id: not UTF-8 text (a lone surrogate): {_short(coin)}")
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
            if value not in _INT64:
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
    for field, text in (("symbol", symbol), ("name", name)):
        if text is not None and not text.isascii() and not _utf8(text):
            return Invalid(
                INVALID_FIELD, f"{field}: not UTF-8 text (a lone surrogate): {_short(text)}"
            )
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
    """Batch form of :func:`parse_value`: ``(table, reasons)``, the same answers.

    ``table`` is a pyarrow table with one row per value and the raw columns
    (:func:`~marketflow_assets.schema.raw_arrow_schema`); the row of an invalid value is all
    nulls. ``reasons[i]`` is None for a valid value, else its reason code.

    Values are decoded in bulk and checked column by column (:func:`_read_batch`); a value
    the bulk reading or a column check does not accept gets :func:`parse_value`'s answer one by
    one (which is where every reason comes from).
    """
    values = values if isinstance(values, list) else list(values)
    fast, slow = _read_batch(values)
    if not slow:
        return fast, [None] * len(values)
    return _merge(values, fast, slow)


def _merge(values: list, fast, slow: list[int]):
    """``(table, reasons)`` of ``values`` whose rows outside ``slow`` (sorted indices) are
    ``fast``'s, in order, and whose ``slow`` rows get :func:`parse_value`'s answers."""
    import numpy as np
    import pyarrow as pa

    from marketflow_assets.schema import raw_arrow_schema

    schema = raw_arrow_schema()
    empty = (None,) * len(schema)
    reasons: list[str | None] = [None] * len(values)
    rows: list[tuple] = []
    for i in slow:
        result = parse_value(values[i])
        if type(result) is Invalid:
            rows.append(empty)
            reasons[i] = result.reason
        else:
            rows.append(result)
    columns = list(zip(*rows, strict=True))
    table = pa.Table.from_arrays(
        [pa.array(column, type=field.type) for column, field in zip(columns, schema, strict=True)],
        schema=schema,
    )
    if fast.num_rows:
        keep = np.ones(len(values), dtype=bool)
        keep[slow] = False
        where = np.concatenate([np.flatnonzero(keep), np.asarray(slow, dtype=np.int64)])
        table = pa.concat_tables([fast, table]).take(np.argsort(where, kind="stable"))
    return table, reasons


# --------------------------------------------------------------------------------------------
# The bulk reader behind parse_values.
# --------------------------------------------------------------------------------------------
#: A time string Arrow's cast to ``timestamp[us, UTC]`` reads as :func:`time_us` does (checked
#: against it in the tests); any other form is read by :func:`time_us` itself.
_CANONICAL_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$"
#: Chunks of at most this many values that orjson does not read as one array are parsed one
#: by one.
_LEAF = 32
_NONE = type(None)
_NUMBER = {int, float}
_NUMBER_OR_NONE = {int, float, _NONE}
_TEXT_OR_NONE = {str, _NONE}
#: The fields the contract checks, in the order _accepted reads them.
_COLUMN_FIELDS = ("id", "symbol", "name", "ts", "last_updated", *MESSAGE_NUMERIC_FIELDS)


def _read_chunk(values: list) -> list | None:
    """The decoded objects of ``values`` read as one JSON array by orjson - each what
    ``_decode(value, look=False)`` gives - or None when orjson refuses the array or it does not
    hold exactly one object per value (a value like ``1, 2`` is two elements)."""
    try:
        decoded = _orjson_loads(b"[" + b",".join(values) + b"]")
    except ValueError:  # orjson.JSONDecodeError; _NoOrjson
        return None
    if len(decoded) != len(values) or set(map(type, decoded)) != {dict}:
        return None
    return decoded


def _times(strings):
    """Integer microseconds (int64, null where :func:`time_us` raises) of an Arrow string
    array: each distinct string once, by Arrow's cast where all are in the canonical form, else
    by time_us."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = strings.dictionary_encode()
    distinct = encoded.dictionary
    if pc.all(pc.match_substring_regex(distinct, _CANONICAL_TIME)).as_py():
        try:
            micros = pc.cast(distinct, pa.timestamp("us", tz="UTC")).cast(pa.int64())
        except pa.ArrowInvalid:  # a day that does not exist: time_us says which
            pass
        else:
            inside = pc.and_(pc.greater_equal(micros, _MIN_US), pc.less_equal(micros, _MAX_US))
            if not pc.all(inside).as_py():
                micros = pc.if_else(inside, micros, pa.scalar(None, pa.int64()))
            return micros.take(encoded.indices)
    out = np.zeros(len(distinct), dtype=np.int64)
    valid = np.zeros(len(distinct), dtype=bool)
    for i, text in enumerate(distinct.to_pylist()):
        try:
            out[i] = time_us(text)
            valid[i] = True
        except (ValueError, TypeError, OverflowError):
            pass
    return pa.array(out, mask=~valid).take(encoded.indices)


def _misfits(column: list, allowed: set, check=None) -> set[int]:
    """Positions of ``column`` whose value's type is not in ``allowed`` (or, with ``check``, of
    an allowed type but failing it)."""
    if set(map(type, column)) <= allowed and (check is None or check(column)):
        return set()
    return {
        i
        for i, value in enumerate(column)
        if type(value) not in allowed or (check is not None and not check([value]))
    }


def _fits_int64(column: list) -> bool:
    return all(value in _INT64 for value in column if value is not None)


def _uniform_columns(objects: list[dict]) -> dict[str, tuple] | None:
    """Every field's values, by field, when every object has the fields of the first (as one
    source's records do: read at C speed); else None."""
    from operator import itemgetter

    fields = tuple(objects[0]) if objects else ()
    if len(fields) < 2 or set(map(len, objects)) != {len(fields)}:
        return None
    try:
        rows = list(map(itemgetter(*fields), objects))
    except KeyError:
        return None
    return dict(zip(fields, zip(*rows, strict=True), strict=True))


def _accepted(objects: list, uniform: dict[str, tuple] | None = None) -> tuple[dict, set[int]]:
    """The columns of the decoded ``objects`` as Python lists, and the positions of the objects
    the column checks do not accept (decided one by one: every accepted one is a valid message
    whose raw row these columns hold). ``uniform``: :func:`_uniform_columns` of ``objects``."""
    from operator import itemgetter

    if uniform is not None:
        absent = (None,) * len(objects)
        columns = {name: list(uniform.get(name, absent)) for name in _COLUMN_FIELDS}
    else:
        try:  # every object has every checked field: at C speed
            rows = list(map(itemgetter(*_COLUMN_FIELDS), objects))
        except KeyError:
            rows = [tuple(map(o.get, _COLUMN_FIELDS)) for o in objects]
        columns = dict(zip(_COLUMN_FIELDS, map(list, zip(*rows, strict=True)), strict=True))
    bad = _misfits(columns["id"], {str}, lambda ids: all(map(str.strip, ids)))
    bad |= _misfits(columns["ts"], {str})
    bad |= _misfits(columns["current_price"], _NUMBER)
    for name in ("symbol", "name", "last_updated"):
        bad |= _misfits(columns[name], _TEXT_OR_NONE)
    for name in _OTHER_NUMERIC:
        if name in _INTEGER_FIELDS:  # a float here: 2.0, or an integer beyond 64 bits (orjson)
            bad |= _misfits(columns[name], {int, _NONE}, _fits_int64)
        else:
            bad |= _misfits(columns[name], _NUMBER_OR_NONE)
    return columns, bad


def _array(column: list, kind, refused: set[int]):
    """``pa.array(column, kind)``, and the positions of values Arrow cannot hold added to
    ``refused`` (as nulls): text with a lone surrogate (json.loads gives one), integers too
    large for a double (json.loads' exact integers). A double column's integers are read as
    ``float()`` reads them (Arrow refuses one beyond 2**53, where a double is no longer exact)."""
    import pyarrow as pa

    try:
        return pa.array(column, type=kind)
    except UnicodeEncodeError:
        texts = []
        for i, value in enumerate(column):
            if type(value) is str and not value.isascii() and not _utf8(value):
                refused.add(i)
                value = None
            texts.append(value)
        return pa.array(texts, type=kind)
    except pa.ArrowInvalid:
        if not pa.types.is_floating(kind):
            raise
    doubles = []
    for i, value in enumerate(column):
        if type(value) is int:
            try:
                value = float(value)
            except OverflowError:
                refused.add(i)
                value = None
        doubles.append(value)
    return pa.array(doubles, type=kind)


def _arrays(columns: dict, schema) -> tuple[dict, set[int]]:
    """The Arrow arrays of the raw columns (``ts`` and ``last_updated`` in microseconds) and
    the positions of the rows the value checks refuse: a price not above zero, a time
    :func:`time_us` refuses, a value Arrow cannot hold (:func:`_array`)."""
    import numpy as np
    import pyarrow as pa

    unfit: set[int] = set()  # values Arrow cannot hold
    arrays = {
        field.name: _array(columns[field.name], field.type, unfit)
        for field in schema
        if field.name not in ("ts", "last_updated")
    }
    arrays["ts"], arrays["last_updated"], refused = _time_columns(
        _array(columns["ts"], pa.string(), unfit),
        _array(columns["last_updated"], pa.string(), unfit),
    )
    refused |= ~(arrays["current_price"].to_numpy(zero_copy_only=False) > 0)
    return arrays, set(np.flatnonzero(refused).tolist()) | unfit


def _time_columns(ts, updated):
    """``(ts, last_updated, refused)``: the two time columns (Arrow strings) in microseconds
    (:func:`_times`), and per row (numpy) whether a time the contract requires is missing or
    unread: ``ts`` null or not read, ``last_updated`` given but not read."""
    ts_us, updated_us = _times(ts), _times(updated)
    refused = ts_us.is_null().to_numpy(zero_copy_only=False)
    refused |= updated_us.is_null().to_numpy(zero_copy_only=False) & updated.is_valid().to_numpy(
        zero_copy_only=False
    )
    return ts_us, updated_us, refused


def _raw_table(arrays: dict, schema):
    """The raw table of ``arrays`` (the raw columns, the times in integer microseconds)."""
    import pyarrow as pa

    for name in ("ts", "last_updated"):
        arrays[name] = arrays[name].cast(schema.field(name).type)
    return pa.Table.from_arrays([arrays[field.name] for field in schema], schema=schema)


def _column_check(objects: list[dict], strict: bool):
    """``(arrays, kept)``: the raw columns' Arrow arrays of the decoded ``objects`` the column
    checks accept (``ts`` and ``last_updated`` in microseconds), and their positions (a numpy
    array); the others are left to :func:`_check`. ``strict``: the objects come from orjson,
    which never yields a NaN or an infinity; else every value of every object is looked at."""
    from itertools import compress

    import numpy as np

    from marketflow_assets.schema import raw_arrow_schema

    schema = raw_arrow_schema()
    uniform = None if strict else _uniform_columns(objects)  # strict: the checked fields only
    columns, bad = _accepted(objects, uniform)
    if not strict:
        bad |= _non_finite_rows(objects, uniform)
    kept = np.arange(len(objects))
    while True:  # twice at most: the rows the value checks refuse are left out of the second
        if bad:
            keep = np.ones(len(kept), dtype=bool)
            keep[list(bad)] = False
            kept = kept[keep]
            columns = {k: list(compress(c, keep)) for k, c in columns.items()}
        arrays, bad = _arrays(columns, schema)
        if not bad:
            return arrays, kept


_FLOAT_OR_NESTED = (float, dict, list)


def _non_finite_rows(objects: list[dict], uniform: dict[str, tuple] | None) -> set[int]:
    """Positions of the objects holding a NaN or an infinity anywhere (:func:`_non_finite`):
    field by field where every object has the same fields (``uniform``: their
    :func:`_uniform_columns`), else object by object."""
    if uniform is None:
        return {
            i
            for i, o in enumerate(objects)
            if any(type(v) in _FLOAT_OR_NESTED and _non_finite(v) for v in o.values())
        }
    import pyarrow as pa
    import pyarrow.compute as pc

    bad: set[int] = set()
    for column in uniform.values():
        types = set(map(type, column))
        if types.isdisjoint(_FLOAT_OR_NESTED):
            continue
        if types <= _NUMBER_OR_NONE:  # numbers: at once (unless an integer is beyond 2**53)
            try:
                finite = pc.fill_null(pc.is_finite(pa.array(column, type=pa.float64())), True)
            except pa.ArrowInvalid:
                pass
            else:
                if not pc.all(finite).as_py():
                    bad.update(pc.indices_nonzero(pc.invert(finite)).to_pylist())
                continue
        bad.update(
            i for i, v in enumerate(column) if type(v) in _FLOAT_OR_NESTED and _non_finite(v)
        )
    return bad


def refusals(messages: list) -> dict[int, Invalid]:
    """The decoded messages :func:`check_message` refuses, by position, with its answer: the
    column checks first (a 15,000-coin poll in a fraction of the time of a check per message),
    then :func:`check_message` for the messages they do not accept."""
    if not messages:
        return {}
    at = [i for i, m in enumerate(messages) if type(m) is dict]
    doubtful = set(range(len(messages))) - set(at)
    if at:
        import numpy as np

        objects = messages if len(at) == len(messages) else [messages[i] for i in at]
        _, kept = _column_check(objects, strict=False)
        doubtful.update(np.delete(np.asarray(at), kept).tolist())
    refused = {}
    for i in sorted(doubtful):
        result = check_message(messages[i])
        if type(result) is Invalid:
            refused[i] = result
    return refused


def _read_batch(values: list):
    """``(table, slow)``: the raw rows of the values read in bulk and accepted by the column
    checks, in order, and the sorted indices of the others (for :func:`parse_value`).

    In bulk: Arrow's JSON reader, typing every field of the published layout, where the batch
    is large (:data:`_ARROW_MIN_VALUES`) and Arrow can answer (:func:`_read_arrow`: every value
    a line of UTF-8 that begins with ``{``, no field beyond the layout); else orjson reads
    chunks of the values as one JSON array (halved where it refuses one: what it refuses alone,
    parse_value decides), then each column is checked at once; orjson never yields a NaN or an
    infinity, so only the types, the price's sign, the times and the integral fields' range
    are left to check, as :func:`_check` does with ``strict``."""
    import numpy as np

    from marketflow_assets.schema import raw_arrow_schema

    schema = raw_arrow_schema()
    slow: set[int] = set()
    if set(map(type, values)) == {bytes}:
        bulk, at = values, None
        read = _read_arrow(values, schema) if len(values) >= _ARROW_MIN_VALUES else None
        if read is not None:
            return read
    else:  # a value that is not bytes is decided one by one
        at = [i for i, v in enumerate(values) if type(v) is bytes]
        slow = set(range(len(values))) - set(at)
        bulk = [values[i] for i in at]
    pieces: list[tuple[int, list]] = []
    todo = [(0, len(bulk))] if bulk else []
    while todo:
        lo, hi = todo.pop()
        objects = _read_chunk(bulk[lo:hi])
        if objects is not None:
            pieces.append((lo, objects))
        elif hi - lo <= _LEAF:
            slow.update(range(lo, hi) if at is None else at[lo:hi])
        else:  # halves: what orjson refuses is found in a few more reads
            mid = (lo + hi) // 2
            todo += [(mid, hi), (lo, mid)]
    if not pieces:
        return schema.empty_table(), sorted(slow)
    pieces.sort(key=lambda piece: piece[0])
    objects = [o for _, chunk in pieces for o in chunk] if len(pieces) > 1 else pieces[0][1]
    where = np.concatenate([np.arange(lo, lo + len(chunk)) for lo, chunk in pieces])
    if at is not None:
        where = np.asarray(at, dtype=np.int64)[where]
    arrays, kept = _column_check(objects, strict=True)
    slow.update(np.delete(where, kept).tolist())
    return _raw_table(arrays, schema), sorted(slow)


# --------------------------------------------------------------------------------------------
# Arrow's JSON reader: the bulk reader of a batch of messages with the published layout.
# --------------------------------------------------------------------------------------------
#: Bytes each of Arrow's reading threads takes at a time (a simulated 15,000-coin poll: 8 blocks).
_ARROW_BLOCK = 1 << 20
#: Smaller batches are read by orjson: Arrow's reading costs ~1.3 ms a batch more, and less
#: CPU only from about this many messages (measured: 250 messages 2.6 against 1.4 ms, 3,000
#: 14.5 against 13.3 ms, 6,000 25.8 against 29.8 ms, 15,000 63 against 77 ms).
_ARROW_MIN_VALUES = 5000


@lru_cache(maxsize=1)
def _arrow_layout():
    """Every field a published message may have, typed as Arrow's JSON reader reads it: the
    raw schema's (the times as the strings they are), the other numeric fields the contract
    checks and the fields the ingest carries as they are
    (:data:`~marketflow_assets.schema.MESSAGE_CARRIED_FIELDS`) as doubles, strings or the
    ``roi`` object."""
    import pyarrow as pa

    from marketflow_assets.schema import MESSAGE_CARRIED_FIELDS, raw_arrow_schema

    kinds = {
        "double": pa.float64(),
        "string": pa.string(),
        "roi": pa.struct(
            [("times", pa.float64()), ("currency", pa.string()), ("percentage", pa.float64())]
        ),
    }
    fields = [
        f.with_type(pa.string()) if pa.types.is_timestamp(f.type) else f for f in raw_arrow_schema()
    ]
    fields += [
        pa.field(name, pa.float64()) for name in _OTHER_NUMERIC if name not in RAW_COLUMN_NAMES
    ]
    fields += [pa.field(name, kinds[kind]) for name, kind in MESSAGE_CARRIED_FIELDS]
    return pa.schema(fields)


def _plain_batch(values: list[bytes]) -> bytes | None:
    """The values joined by newlines when each is one line of valid UTF-8 beginning with
    ``{`` (so Arrow reads one row or more from each, or refuses it; the row count is checked
    after reading); else None. json.loads reads a BOM, UTF-16 or UTF-32, Arrow does not."""
    if min(values)[:1] != b"{" or max(values)[:1] != b"{":
        return None
    joined = b"\n".join(values)
    if joined.count(b"\n") != len(values) - 1 or b"\r" in joined:
        return None
    if not joined.isascii():
        try:
            joined.decode("utf-8")  # strict: an encoded surrogate is refused too
        except UnicodeDecodeError:
            return None
    return joined


def _finite(array):
    """Per row: whether no double in ``array`` (a struct's fields included) is NaN or infinite
    (a numpy bool array; a null counts as finite)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_floating(array.type):
        return pc.fill_null(pc.is_finite(array), True).to_numpy(zero_copy_only=False)
    finite = np.ones(len(array), dtype=bool)
    if pa.types.is_struct(array.type):
        for child in array.flatten():
            finite &= _finite(child)
    return finite


def _read_arrow(values: list[bytes], schema):
    """:func:`_read_batch`'s answer for ``values`` (bytes, not empty) read by Arrow's JSON
    reader - typing every field, in C++ threads: half the time of orjson into Python objects
    and the column checks for the simulated messages, a quarter for CoinGecko's full records
    (docs/PERFORMANCE.md, fifteenth round) - or None when Arrow cannot answer: the batch is not
    :func:`_plain_batch`, or Arrow refuses it (a field the layout does not have
    (:func:`_arrow_layout`), a value of another type - ``2.0`` as ``market_cap_rank`` too -,
    a key twice, a lone surrogate, any invalid JSON). orjson reads it then.

    Rows the contract might refuse are left to :func:`parse_value` (``slow``): an ``id`` that
    is null or does not begin and end with a visible ASCII character (blank ones among them), a
    time :func:`time_us` does not read, a price that is null or not positive, any number that
    is not finite (Arrow reads ``NaN`` and an overflowing literal as such; json.loads keeps an
    integer beyond a double exact, which the contract may accept), a raw double ``-0.0``
    (``-0`` is the integer 0 to json.loads)."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    joined = _plain_batch(values)
    if joined is None:
        return None
    try:
        table = pj.read_json(
            io.BytesIO(joined),
            read_options=pj.ReadOptions(use_threads=True, block_size=_ARROW_BLOCK),
            parse_options=pj.ParseOptions(
                explicit_schema=_arrow_layout(), unexpected_field_behavior="error"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(values):  # a line of two objects
        return None
    arrays = {
        name: column.combine_chunks()
        for name, column in zip(table.column_names, table.columns, strict=True)
    }
    ids = arrays["id"]
    good = pc.fill_null(
        pc.and_(pc.match_substring_regex(ids, "^[!-~]"), pc.match_substring_regex(ids, "[!-~]$")),
        False,
    ).to_numpy(zero_copy_only=False)
    good &= pc.fill_null(pc.greater(arrays["current_price"], 0.0), False).to_numpy(
        zero_copy_only=False
    )
    for name, array in arrays.items():
        good &= _finite(array)
        if name in schema.names and pa.types.is_floating(array.type):
            column = array.to_numpy(zero_copy_only=False)
            good &= ~((column == 0) & np.signbit(column))
    arrays["ts"], arrays["last_updated"], unread = _time_columns(
        arrays["ts"], arrays["last_updated"]
    )
    good &= ~unread
    raw = _raw_table(arrays, schema)
    slow = np.flatnonzero(~good)
    if len(slow):
        raw = raw.filter(pa.array(good))
    return raw, slow.tolist()
