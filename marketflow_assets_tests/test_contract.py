"""The record contract as a pure function: each poison value's reason, the raw row of valid ones,
and the batch form."""

from __future__ import annotations

import datetime as dt
import json
import math

import pyarrow as pa
import pytest

from marketflow_assets import contract as c
from marketflow_assets.schema import (
    MESSAGE_NUMERIC_FIELDS,
    MESSAGE_STRING_FIELDS,
    RAW_COLUMN_NAMES,
    raw_arrow_schema,
)
from marketflow_assets_tests.contract_cases import CASES, TS, encoded, message


@pytest.mark.parametrize(("label", "value", "reason"), CASES, ids=[c[0] for c in CASES])
def test_each_value_gets_its_reason(label, value, reason):
    result = c.parse_value(value)
    if reason is None:
        assert type(result) is tuple and len(result) == len(RAW_COLUMN_NAMES), label
    else:
        assert type(result) is c.Invalid and result.reason == reason, (label, result)
        assert result.detail and "\n" not in result.detail
    # text and bytes, and the decoded object, get the same answer
    if value is not None:
        assert c.parse_value(value.decode("utf-8")) == result
        try:
            decoded = json.loads(value)
        except ValueError:
            return
        assert c.check_message(decoded) == result


def test_every_reason_is_documented_and_used():
    codes = {reason for _, _, reason in CASES if reason}
    assert codes == set(c.REASONS) - {c.DUPLICATE_IN_POLL}
    assert len(set(c.REASONS)) == len(c.REASONS)


def test_the_raw_row_of_a_valid_message():
    row = dict(zip(RAW_COLUMN_NAMES, c.parse_value(encoded(low_24h=63000)), strict=True))
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert row == {
        "id": "bitcoin",
        "symbol": "btc",
        "name": "Bitcoin",
        "current_price": 64250.5,
        "market_cap": 1.26e12,
        "market_cap_rank": 1,
        "total_volume": 3.1e10,
        "high_24h": 65000.0,
        "low_24h": 63000.0,
        "price_change_percentage_24h": -0.19,
        "circulating_supply": 19_650_000.0,
        "last_updated": (dt.datetime(2026, 3, 1, 23, 57, 53, 250000, tzinfo=dt.UTC) - epoch)
        // dt.timedelta(microseconds=1),
        "ts": (dt.datetime(2026, 3, 1, 23, 58, tzinfo=dt.UTC) - epoch)
        // dt.timedelta(microseconds=1),
    }
    assert type(row["current_price"]) is float and type(row["low_24h"]) is float
    assert type(row["market_cap_rank"]) is int
    # an offset or no zone at all: the same instant in UTC
    same = [c.parse_value(encoded(ts=t))[-1] for t in (TS, "2026-03-02T00:58:00+01:00")]
    assert same == [row["ts"]] * 2
    assert c.parse_value(encoded(ts="2026-03-01T23:58:00"))[-1] == row["ts"]


def test_the_message_is_not_modified():
    value = message(current_price="5")
    before = json.dumps(value, sort_keys=True)
    c.check_message(value)
    assert json.dumps(value, sort_keys=True) == before


def test_batch_form_one_row_per_value_nulls_for_invalid_ones():
    values = [value for _, value, _ in CASES]
    table, reasons = c.parse_values(values)
    assert table.schema == raw_arrow_schema()
    assert table.num_rows == len(values)
    assert reasons == [reason for _, _, reason in CASES]
    rows = table.to_pylist()
    for row, reason, value in zip(rows, reasons, values, strict=True):
        if reason is None:
            single = c.parse_value(value)
            assert row["id"] == single[0] and row["current_price"] == single[3]
            assert row["ts"] == dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
                microseconds=single[-1]
            )
        else:
            assert set(row.values()) == {None}
    empty, none = c.parse_values([])
    assert none == [] and empty.num_rows == 0 and empty.schema == raw_arrow_schema()


def test_integers_beyond_64_bits_anywhere_get_json_loads_answer():
    """orjson reads an integer literal beyond 64 bits as a float where json.loads keeps it
    exact; whatever field holds one, a value gets the answer ``json.loads`` leads to."""
    import random

    rng = random.Random(7)
    fields = ["current_price", "market_cap", "market_cap_rank", "total_volume", "ath", "roi"]
    for _ in range(400):
        field = rng.choice(fields)
        bits = rng.choice([62, 63, 64, 65, 70, 200])
        number = rng.choice([-1, 1]) * (2**bits + rng.randint(-3, 3))
        value = encoded(**{field: "@@"}).replace(b'"@@"', str(number).encode())
        got = c.parse_value(value)
        assert got == c.check_message(json.loads(value)), (field, number, got)
        assert c.parse_values([value])[1] == [got.reason if type(got) is c.Invalid else None]
    # not an object: the reason names json.loads' type
    assert c.parse_value(str(2**70).encode()) == c.Invalid(
        c.INVALID_JSON, "not a JSON object but int"
    )


def test_batch_form_is_fast_enough_for_a_15000_coin_poll():
    import time

    values = [encoded(id=f"coin-{i}", current_price=1.0 + i) for i in range(15_000)]
    c.parse_values(values[:10])  # imports
    started = time.perf_counter()
    table, reasons = c.parse_values(values)
    elapsed = time.perf_counter() - started
    assert reasons == [None] * 15_000 and table.num_rows == 15_000
    assert pa.compute.sum(table["current_price"]).as_py() == pytest.approx(15_000 * 7_500.5)
    assert elapsed < 2.0, f"{elapsed:.2f} s for 15,000 values"


@pytest.mark.parametrize(
    "value",
    [
        b'{"id": "a", "current_price": 1.5, "n": [1, 2.0, -0.0, 1e-320]}',
        b'{"price": NaN}',
        b'{"price": Infinity, "x": -Infinity}',
        b'{"price": 1e999}',
        b'{"big": 1180591620717411303424}',
        b'{"big": -9999999999999999999, "u64": 18446744073709551615}',
        b'{"big": 1' + b"0" * 400 + b"}",
        b'{"small": 0.000123456789012345678901, "u64": 9223372036854775808}',
        b'{"nested": [[{"big": -9223372036854775809}]], "float": 1e19}',
        b'{"deep": ' + b"[" * 900 + b"1e300" + b"]" * 900 + b"}",
        '{"big": 1180591620717411303424}',
        b'{"a": 1, "a": 2}',
        b'{"s": "\\ud800"}',
        '{"name": "caf\u00e9 \u20bf"}'.encode(),
        b"\xef\xbb\xbf" + b'{"bom": 1}',
        '{"utf16": 1}'.encode("utf-16"),
        b"[" * 2000 + b"]" * 2000,
        b'{"broken": ',
        b"\xff\xfe\xfa",
        '{"text": "as str"}',
    ],
)
def test_loads_decodes_exactly_as_json_loads(value):
    """The faster decoding (orjson first) gives json.loads' object, or fails where it fails."""
    try:
        expected = json.loads(value)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            c.loads(value)
        return
    got = c.loads(value)
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert repr(got) == repr(expected)


@pytest.mark.parametrize(
    "value",
    [
        {"id": "a", "current_price": 1.5, "n": [1, 2.0, -0.0, 1e-320, 1e-05, 1e16, 5e-324]},
        {"big": 1180591620717411303424, "u64": 18446744073709551615, "neg": -(2**63) - 1},
        {"name": "caf\u00e9 \u20bf", "quote": 'a"b\\c\n', "control": "\x00\x1f"},
        {"surrogate": "\ud800"},
        {"nested": [[{"x": None, "t": True, "f": False}]], "empty": {}, "list": []},
        {"deep": [[[[1e300]]]] * 3},
        {"keys": {1: "int key", "s": "str key"}},
        [1, "two", 3.0],
        "text",
    ],
    ids=lambda v: repr(v)[:30],
)
def test_dumps_writes_what_json_dumps_writes_decoded(value):
    """The faster encoding (orjson) decodes to the object json.dumps' text decodes to."""
    expected = json.dumps(value, separators=(",", ":"), allow_nan=False)
    got = c.dumps(value)
    assert isinstance(got, bytes)
    assert repr(json.loads(got)) == repr(json.loads(expected))
    assert repr(c.loads(got)) == repr(json.loads(expected))  # the contract reads it the same


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_dumps_refuses_nan_and_infinities_as_json_dumps_does(bad):
    value = {"id": "a", "nested": [{"x": bad}]}
    with pytest.raises(ValueError):
        json.dumps(value, separators=(",", ":"), allow_nan=False)
    with pytest.raises(ValueError):
        c.dumps(value)  # never orjson's null


def _same_answers(values: list) -> None:
    """``parse_values(values)`` gives each value exactly :func:`parse_value`'s answer: its
    reason, or its raw row with the same values and Python types."""
    table, reasons = c.parse_values(values)
    assert table.schema == raw_arrow_schema() and table.num_rows == len(values)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    for value, row, reason in zip(values, table.to_pylist(), reasons, strict=True):
        single = c.parse_value(value)
        if type(single) is c.Invalid:
            assert reason == single.reason, (value, reason, single)
            assert set(row.values()) == {None}, value
            continue
        assert reason is None, (value, reason)
        expected = dict(zip(RAW_COLUMN_NAMES, single, strict=True))
        for name in ("last_updated", "ts"):
            if expected[name] is not None:
                expected[name] = epoch + dt.timedelta(microseconds=expected[name])
        assert row == expected, value
        floats = [repr(v) for v in row.values() if type(v) is float]
        assert floats == [repr(v) for v in expected.values() if type(v) is float], value  # -0.0
        assert [type(v) for v in row.values()] == [type(v) for v in expected.values()], value


#: Values a field may be given in the fuzzed messages below: every JSON type, the numbers at
#: the edges of int64, uint64 and a double's exact integers, and times in every form.
_FIELD_VALUES = [
    None,
    True,
    False,
    "",
    "  ",
    "5",
    "btc",
    "\u00e9\u20bf",
    0,
    -1,
    1,
    2,
    1.5,
    -0.0,
    3.0,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    2**70 + 1,
    1e308,
    5e-324,
    1e-9,
    [1],
    {"a": 1},
    {"times": 1.5, "currency": "usd"},
    TS,
    "2026-03-01T23:58:00Z",
    "2026-03-01T23:58:00.123456Z",
    "2026-03-01T23:58:00.1234567Z",
    "2026-03-01T23:58:00+01:00",
    "2026-03-01T23:58:00",
    " 2026-03-01T23:58:00.000Z ",
    "2026-03-01t23:58:00z",
    "2026-02-30T00:00:00Z",
    "2026-03-01T24:00:00Z",
    "2262-04-12T00:00:00Z",
    "1677-09-21T00:12:44Z",
    "1500-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "later",
    "btc\ud800",
    "\udfff",
    "2026-03-01T23:58:00\ud800Z",
]
#: Every field the contract checks, and two it carries as they are.
_FUZZED_FIELDS = [*MESSAGE_STRING_FIELDS, *MESSAGE_NUMERIC_FIELDS, "ath", "roi"]


def test_batch_form_gives_every_value_the_answer_of_the_single_form():
    """The bulk reading (orjson over the whole batch, column checks) accepts only what
    ``parse_value`` accepts, with the same row, and leaves everything else to it: checked on
    every poison case and on thousands of messages with fields of every type, mixed into large
    batches of valid messages (so the bulk path is taken and halved around the odd ones)."""
    import random

    rng = random.Random(11)
    fuzzed: list[bytes | str | None] = []
    for i in range(3000):
        change = {"id": f"coin-{i}"}
        for name in rng.sample(_FUZZED_FIELDS, rng.choice([1, 1, 2, 3])):
            change[name] = rng.choice(_FIELD_VALUES)
        value = encoded(**change)
        fuzzed.append(value if rng.random() < 0.9 else value.replace(b", ", b","))
    poison = [value for _, value, _ in CASES] + [
        b'{"id": "a", "ts": "' + TS.encode() + b'", "current_price": 1}, {"id": "b"}',
        b'{"id": "a", "id": "b", "ts": "' + TS.encode() + b'", "current_price": 1}',
        b'{"id": "x\\ud800", "ts": "' + TS.encode() + b'", "current_price": 1}',
        b"\xef\xbb\xbf" + encoded(id="bom"),
        encoded(id="text").decode(),
        b'{"id": "deep", "ts": "'
        + TS.encode()
        + b'", "current_price": 1, "x": '
        + b"[" * 1100
        + b"]" * 1100
        + b"}",
    ]
    _same_answers(fuzzed + poison)
    valid = [encoded(id=f"coin-{i}", current_price=1.0 + i) for i in range(3000)]
    for odd in poison:  # one odd value among many valid ones, at a random place
        batch = valid[:300]
        batch.insert(rng.randrange(len(batch)), odd)
        _same_answers(batch)
    mixed = valid + fuzzed + poison
    rng.shuffle(mixed)
    _same_answers(mixed)


#: JSON texts a field is given in the batches Arrow's reader reads (below): the literals where
#: Arrow and json.loads could part - non-finite and overflowing numbers, ``-0``, integers beyond
#: 64 bits and beyond a double, escapes, nesting, every JSON type.
_LITERALS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "9.99e308",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "1" + "0" * 400,
    "1" + "0" * 400 + ".0",
    "1" + "0" * 300 + "e10",
    "-0",
    "-0.0",
    "0",
    "0.0",
    "1E2",
    "1e-400",
    "5e-324",
    "2.2250738585072011e-308",
    "0.1",
    "123456789012345678901234567890",
    "18446744073709551616",
    "9223372036854775808",
    "-9223372036854775809",
    "9007199254740993",
    "true",
    "null",
    '"x"',
    '"5"',
    '""',
    '" "',
    '"\\u0020btc"',
    '"btc\\u0009"',
    '"a\\u0000b"',
    '"\\ud800"',
    '"\\ud83d\\ude00"',
    '"caf\\u00e9"',
    '"café"',
    '"2026-03-01T23:58:00Z"',
    '"2026-03-01T23:58:00.1234567Z"',
    '"2026-03-01T23:58:00+01:00"',
    '"2026-02-30T00:00:00Z"',
    '"2262-04-12T00:00:00Z"',
    "{}",
    "[]",
    "[1, NaN]",
    '{"times": NaN}',
    '{"times": 1e400, "currency": "usd"}',
    '{"times": 1, "currency": "usd", "percentage": -0}',
    '{"times": 1' + "0" * 400 + "}",
    '{"times": 1, "other": 2}',
    "[" * 1100 + "]" * 1100,
]
#: The fields those literals go to: the checked ones, carried ones, and one no layout has.
_LITERAL_FIELDS = [
    *MESSAGE_STRING_FIELDS,
    *MESSAGE_NUMERIC_FIELDS,
    "roi",
    "ath",
    "image",
    "schema_version",
    "unknown",
]


def _literal_message(rng) -> bytes:
    """A valid message with one to three fields given a :data:`_LITERALS` text (or a random
    double in one of its spellings), in one of several JSON spellings."""
    import struct

    change = {}
    for name in rng.sample(_LITERAL_FIELDS, rng.choice([1, 1, 2, 3])):
        change[name] = f"@@{len(change)}"
    value = encoded(**change)
    for i in range(len(change)):
        if rng.random() < 0.3:  # any finite double, spelled as repr, %.17e or %.25g do
            number = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
            while not math.isfinite(number):
                number = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
            literal = rng.choice([repr(number), f"{number:.17e}", f"{number:.25g}"])
        else:
            literal = rng.choice(_LITERALS)
        value = value.replace(f'"@@{i}"'.encode(), literal.encode())
    if rng.random() < 0.3:
        value = value.replace(b", ", b",")
    if rng.random() < 0.1:
        value = value.replace(b"{", b"{\t", 1)
    if rng.random() < 0.05:
        value = value.replace(b"}", b', "id": "twice"}', 1) if value.endswith(b"}") else value
    return value


def test_arrows_json_reader_gives_every_value_the_answer_of_the_single_form(monkeypatch):
    """A batch Arrow's JSON reader reads (every value a line of UTF-8 beginning with ``{``)
    gets the answers parse_value gives - the rows it may not decide left to it - whatever one
    of its values holds: thousands of messages with literals where Arrow's reading and
    json.loads' could part, each in a batch of valid messages; Arrow reads most of them (the
    rest: orjson, as tested above)."""
    import random

    monkeypatch.setattr(c, "_ARROW_MIN_VALUES", 1)  # these small batches too
    rng = random.Random(5)
    schema = raw_arrow_schema()
    valid = [encoded(id=f"coin-{i}", current_price=1.0 + i) for i in range(20)]
    read_by_arrow = slow_in_arrow = 0
    for _ in range(2500):
        batch = list(valid)
        batch.insert(rng.randrange(len(batch)), _literal_message(rng))
        arrow = c._read_arrow(batch, schema)
        if arrow is not None:
            read_by_arrow += 1
            slow_in_arrow += bool(arrow[1])
        _same_answers(batch)
    assert read_by_arrow > 500 and slow_in_arrow > 100, (read_by_arrow, slow_in_arrow)


def test_arrows_json_reader_reads_a_whole_market_and_the_recorded_coingecko_records(
    shared_dir, monkeypatch
):
    """The layout is the published one: a simulated whole-market poll and CoinGecko's recorded
    records (every field, ``roi`` objects) are read by Arrow, with parse_value's rows."""
    from marketflow_assets.ingest.sources import simulate_polls
    from marketflow_assets.ingest.validate import validate_poll

    monkeypatch.setattr(c, "_ARROW_MIN_VALUES", 1)  # the recorded records alone too
    schema = raw_arrow_schema()
    markets = shared_dir / "coingecko" / "markets_top9_2023-03-15_usd.json"
    ts, records = next(simulate_polls(2000, 3, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), 30, 1))
    simulated = [m.value_bytes() for m in validate_poll(records, ts).good]
    recorded = [m.value_bytes() for m in validate_poll(json.loads(markets.read_text()), TS).good]
    assert any(json.loads(v)["roi"] for v in recorded)
    for values in (simulated, recorded, simulated + recorded):
        table, slow = c._read_arrow(values, schema)
        assert slow == [] and table.num_rows == len(values)
        _same_answers(values)


def test_a_large_batch_is_read_by_arrow_and_a_small_one_by_orjson(monkeypatch):
    """parse_values asks Arrow's reader for a batch of at least ``_ARROW_MIN_VALUES`` messages
    (and takes its answer), never for a smaller one, whose answers come from orjson's reading."""
    calls: list[int] = []
    read_arrow = c._read_arrow

    def spied(values, schema):
        answer = read_arrow(values, schema)
        calls.append(answer is not None)
        return answer

    monkeypatch.setattr(c, "_read_arrow", spied)
    values = [encoded(id=f"coin-{i}", current_price=1.0 + i) for i in range(c._ARROW_MIN_VALUES)]
    table, reasons = c.parse_values(values)
    assert calls == [True] and reasons == [None] * len(values) and table.num_rows == len(values)
    small, _ = c.parse_values(values[:-1])
    assert calls == [True] and small == table.slice(0, len(values) - 1)


def _same_refusals(messages: list) -> None:
    expected = {}
    for i, m in enumerate(messages):
        result = c.check_message(m)
        if type(result) is c.Invalid:
            expected[i] = result
    assert c.refusals(messages) == expected


def test_refusals_give_every_decoded_message_the_answer_of_check_message():
    """The ingest's check of a whole poll (column by column) refuses exactly the messages
    ``check_message`` refuses, with its reason and detail: fuzzed messages as a lax JSON parser
    or a Python source gives them (NaN and infinities anywhere, integers beyond any double),
    polls whose records all have the same fields and polls whose records do not."""
    import random

    rng = random.Random(5)
    lax = [float("nan"), float("inf"), -float("inf"), 2**1100, -(2**1100), {"n": [float("nan")]}]
    pool = _FIELD_VALUES + lax
    uniform, ragged = [], []
    for i in range(2000):
        change = {"id": f"coin-{i}"}
        for name in rng.sample(_FUZZED_FIELDS, rng.choice([0, 1, 1, 2])):
            change[name] = rng.choice(pool)
        uniform.append(message(**change))
        ragged.append(message(**{k: v for k, v in change.items() if rng.random() < 0.8}))
    ragged += [None, 5, "text", [message()], message(extra=float("nan"))]
    _same_refusals(uniform)
    _same_refusals(ragged)
    valid = [message(id=f"coin-{i}") for i in range(2000)]
    assert c.refusals(valid) == {}
    for odd in [message(ath=v) for v in lax] + [message(current_price=v) for v in lax]:
        batch = valid[:]
        batch.insert(rng.randrange(len(batch)), odd)
        _same_refusals(batch)
