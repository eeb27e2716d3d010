"""The three readers of a price message agree: the ingest's validation (before publishing), the
Spark job's ``parse_messages`` (local SparkSession) and the live consumer's parsing give every
valid and poison value the same outcome and the same reason code, so a live row exists only for
a message that also becomes a raw row."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from marketflow_assets.contract import DUPLICATE_IN_POLL
from marketflow_assets.ingest.validate import InvalidRecord, normalise_record, validate_poll
from marketflow_assets.live.consumer import parse_records
from marketflow_assets.schema import RAW_COLUMN_NAMES
from marketflow_assets_tests.contract_cases import CASES
from spark_streaming.kafka_streaming import parse_messages

KAFKA_DDL = "key BINARY, value BINARY, topic STRING, partition INT, offset BIGINT"
VALUES = [value for _, value, _ in CASES]
EXPECTED = [reason for _, _, reason in CASES]


def ingest_reason(value: bytes | None) -> str | None:
    """What the ingest makes of the record behind ``value`` (its ``ts`` is the poll's)."""
    record = json.loads(value)  # the CoinGecko client decodes the page the same lax way
    ts = None
    if isinstance(record, dict):
        record = dict(record)
        ts = record.pop("ts", None)
    try:
        normalise_record(record, ts)
    except InvalidRecord as exc:
        return exc.reason
    return None


def decodable(value: bytes | None) -> bool:
    try:
        json.loads(value)
    except (TypeError, ValueError):
        return False  # no record: the ingest never sees one (a page that is not JSON fails)
    return True


@pytest.fixture(scope="module")
def spark_rows(spark):
    rows = [(b"k", v, "prices", 0, i) for i, v in enumerate(VALUES)]
    parsed = parse_messages(spark.createDataFrame(rows, KAFKA_DDL))
    return [r.asDict() for r in parsed.orderBy("offset").collect()]


def test_spark_live_and_ingest_give_the_same_reason(spark_rows):
    spark = [r["reason"] for r in spark_rows]
    frame, market, live = parse_records(VALUES)
    ingest = [ingest_reason(v) if decodable(v) else "n/a" for v in VALUES]
    table = [
        (label, expected, s, lv, ing)
        for (label, _, expected), s, lv, ing in zip(CASES, spark, live, ingest, strict=True)
    ]
    disagreements = [
        row for row in table if not (row[1] == row[2] == row[3] and row[4] in (row[1], "n/a"))
    ]
    assert disagreements == [], "(label, expected, spark, live, ingest)"
    assert ingest.count("n/a") == 5  # only the undecodable values never reach the ingest
    # the live rows are exactly the Spark rows, with the same id, ts and price
    valid = [r for r in spark_rows if r["reason"] is None]
    assert list(frame["id"]) == [r["id"] for r in valid]
    assert list(frame["current_price"]) == [r["current_price"] for r in valid]
    live_ts = [t.to_pydatetime().replace(tzinfo=None) for t in frame["ts"]]
    assert live_ts == [r["ts"] for r in valid]  # Spark: naive UTC (session time zone)


def test_spark_rejects_keep_the_value_and_null_raw_columns(spark_rows):
    for row, value in zip(spark_rows, VALUES, strict=True):
        expected = None if value is None else value.decode("utf-8")
        assert row["value"] == expected
        assert row["key"] == "k" and row["topic"] == "prices"
        assert isinstance(row["rejected_at"], dt.datetime)
        if row["reason"] is not None:
            assert {row[name] for name in RAW_COLUMN_NAMES} == {None} and row["date"] is None
        else:
            assert row["date"] == row["ts"].date()


def test_ingest_publishes_exactly_what_spark_and_live_accept():
    """A whole poll through the ingest: the published values, read back as Kafka values, are
    all valid for the contract; the dead letters carry the same codes."""
    records = []
    for value in VALUES:
        if decodable(value):
            record = json.loads(value)
            if isinstance(record, dict):
                record.pop("ts", None)
            records.append(record)
    poll = validate_poll(records, "2026-03-01T23:58:00.000Z")
    published = [m.value_bytes() for m in poll.good]
    frame, market, reasons = parse_records(published)
    assert reasons == [None] * len(published) and len(frame) == len(market) == len(published)
    assert {m.value["reason"] for m in poll.bad} <= set(EXPECTED) - {None} | {DUPLICATE_IN_POLL}
