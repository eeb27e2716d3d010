"""Parsing and the exactly-once sink, in-process on the shared local[2] SparkSession."""

from __future__ import annotations

import datetime as dt
import json
import shutil

from deltalake import DeltaTable

from marketflow_assets.schema import RAW_COLUMN_NAMES, REJECT_COLUMNS
from marketflow_assets_tests.streaming.streaming_helpers import (
    GARBAGE,
    message,
    read_raw,
    read_rejects,
)
from spark_streaming.kafka_streaming import RawPricesSink, parse_messages

T0 = dt.datetime(2026, 3, 1, 23, 58, tzinfo=dt.UTC)
KAFKA_DDL = "key BINARY, value BINARY, topic STRING, partition INT, offset BIGINT"


def kafka_df(spark, values: list[bytes | None], first_offset: int = 0, partition: int = 0):
    rows = [(b"k", v, "prices", partition, first_offset + i) for i, v in enumerate(values)]
    return spark.createDataFrame(rows, KAFKA_DDL)


def test_parse_flattens_converts_times_and_flags_rejects(spark):
    good = message(3, 0, 123.5)
    good["last_updated"] = "2026-03-01T23:57:53.250+00:00"
    values = [json.dumps(good).encode()] + [v for v, _ in GARBAGE] + [None]
    rows = parse_messages(kafka_df(spark, values)).orderBy("offset").collect()
    assert [r["reason"] for r in rows] == [None] + [reason for _, reason in GARBAGE] + [
        "empty_value"
    ]
    first = rows[0].asDict()
    assert set(RAW_COLUMN_NAMES) <= set(first)
    assert first["id"] == "coin-03" and first["current_price"] == 123.5
    assert first["market_cap_rank"] == 4
    # Session time zone is UTC: naive datetimes from Spark are UTC wall-clock.
    assert first["ts"] == dt.datetime(2026, 3, 1, 23, 58)
    assert first["last_updated"] == dt.datetime(2026, 3, 1, 23, 57, 53, 250000)
    assert first["date"] == dt.date(2026, 3, 1)


def keys(df) -> set[tuple[str, object]]:
    return {(r.id, r.ts.to_pydatetime()) for r in df.itertuples()}


def test_sink_is_exactly_once_across_batches_reruns_and_crashes(spark, tmp_path):
    raw, rejects, ckpt = tmp_path / "raw_prices", tmp_path / "raw_prices_rejects", tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / "metadata").write_text(json.dumps({"id": "query-1"}))  # as Spark writes it
    sink = RawPricesSink(raw, rejects, ckpt)
    assert sink.app_id == "marketflow_raw_prices:query-1"
    poll0 = [json.dumps(message(c, 0, 10.0 + c)).encode() for c in range(4)]
    poll1 = [json.dumps(message(c, 1, 20.0 + c)).encode() for c in range(4)]
    replayed = [json.dumps(message(c, 0, 99.0)).encode() for c in range(4)]  # same (id, ts)

    # Batch 0: poll 0, one in-batch duplicate (later offset, other price) and one garbage record.
    m0 = sink.process(kafka_df(spark, poll0 + [poll0[1].replace(b"11.0", b"77.0"), b"{"]), 0)
    assert (m0["rows_in"], m0["rows_written"], m0["duplicates"], m0["rejects"]) == (6, 4, 1, 1)
    # Batch 1: a replay of poll 0 (all duplicates of batch 0) plus poll 1.
    m1 = sink.process(kafka_df(spark, replayed + poll1, first_offset=6), 1)
    assert (m1["rows_written"], m1["duplicates"]) == (4, 4)
    # Spark re-running a committed batch (crash after our commit, before Spark's): skipped, no
    # new table version.
    version = DeltaTable(str(raw)).version()
    assert sink.process(kafka_df(spark, poll1, first_offset=6), 1)["rows_written"] == 4
    assert DeltaTable(str(raw)).version() == version
    assert DeltaTable(str(raw)).transaction_version(sink.app_id) == 1

    # Batch 2 crashed after writing a data file, before its commit: the file is referenced by no
    # version (invisible to every reader); the re-run commits the batch once.
    poll4 = [json.dumps(message(c, 4, 30.0 + c)).encode() for c in range(4)]  # next day
    date_dir = next(raw.glob("date=*"))
    orphan = date_dir / "part-00000-orphan-of-a-killed-batch-c000.snappy.parquet"
    shutil.copy(next(date_dir.glob("*.parquet")), orphan)
    m2 = sink.process(kafka_df(spark, poll4, first_offset=14), 2)
    assert m2["rows_written"] == 4 and m2["version"] == version + 1

    df = read_raw(tmp_path)
    assert len(df) == 12 and len(keys(df)) == 12
    assert keys(df) == {
        (f"coin-{c:02d}", T0 + dt.timedelta(seconds=30 * p)) for c in range(4) for p in (0, 1, 4)
    }
    # The first-seen version of a duplicated (id, ts) wins; the replayed price never does.
    prices = {(r.id, r.ts.to_pydatetime()): r.current_price for r in df.itertuples()}
    assert prices[("coin-01", T0)] == 11.0
    assert 99.0 not in prices.values()
    assert set(df["date"]) == {"2026-03-01", "2026-03-02"}
    rej = read_rejects(tmp_path)
    assert list(rej.columns) == [name for name, _ in REJECT_COLUMNS]
    assert rej[["partition", "offset", "reason"]].values.tolist() == [[0, 5, "invalid_json"]]

    # A deleted checkpoint (a new query id, batch ids from 0 again) still deduplicates against
    # the table, and commits under its own application id.
    fresh_ckpt = tmp_path / "ck-new"
    fresh_ckpt.mkdir()
    (fresh_ckpt / "metadata").write_text(json.dumps({"id": "query-2"}))
    fresh = RawPricesSink(raw, rejects, fresh_ckpt)
    m = fresh.process(kafka_df(spark, poll1 + poll4), 0)
    assert (m["rows_written"], m["duplicates"]) == (0, 8)
    assert len(read_raw(tmp_path)) == 12
    # The orphan of the killed attempt goes with the next VACUUM (no version references it).
    from marketflow_assets.compaction import compact

    compact(raw, retention_hours=1)
    assert orphan.exists()  # younger than the retention: kept
    DeltaTable(str(raw)).vacuum(
        retention_hours=0, dry_run=False, enforce_retention_duration=False, full=True
    )
    assert not orphan.exists() and len(read_raw(tmp_path)) == 12


def test_split_batch_keeps_the_lowest_topic_partition_offset_of_each_id_ts():
    """The driver-side split of a collected micro-batch (pure, no Spark): usable rows, one per
    (id, ts) - the lowest (topic, partition, offset), whatever the order they arrived in -
    and the rejects with their reject columns."""
    import pyarrow as pa

    from marketflow_assets.schema import RAW_PARTITION_COLUMN, raw_arrow_schema
    from spark_streaming.kafka_streaming import split_batch

    t0, t1 = T0, T0 + dt.timedelta(seconds=30)
    # (id, ts, topic, partition, offset, price, reason)
    rows = [
        ("b", t0, "prices", 2, 1, 5.0, None),
        ("a", t1, "prices", 1, 7, 4.0, None),
        ("b", t0, "prices", 0, 9, 6.0, None),  # lowest partition: wins over partition 2
        ("a", t1, "prices", 1, 3, 3.0, None),  # lowest offset in the same partition: wins
        ("a", t0, "prices", 2, 4, 2.0, None),
        (None, None, "prices", 0, 10, None, "invalid_json"),
        ("b", t0, "older", 5, 0, 1.0, None),  # an earlier topic name sorts first: wins
    ]
    raw = raw_arrow_schema()
    columns = {name: [None] * len(rows) for name in RAW_COLUMN_NAMES}
    columns["id"] = [r[0] for r in rows]
    columns["ts"] = [r[1] for r in rows]
    columns["current_price"] = [r[5] for r in rows]
    parsed = pa.table(
        {
            "topic": [r[2] for r in rows],
            "partition": pa.array([r[3] for r in rows], pa.int32()),
            "offset": pa.array([r[4] for r in rows], pa.int64()),
            "key": [None] * len(rows),
            "value": [None if r[6] is None else "{" for r in rows],
            **{n: pa.array(columns[n], raw.field(n).type) for n in RAW_COLUMN_NAMES},
            RAW_PARTITION_COLUMN: pa.array([r[1] and r[1].date() for r in rows], pa.date32()),
            "reason": [r[6] for r in rows],
            "rejected_at": pa.array([T0] * len(rows), pa.timestamp("us", tz="UTC")),
        }
    )
    good, rejects = split_batch(parsed)
    assert good.column_names == [*RAW_COLUMN_NAMES, RAW_PARTITION_COLUMN]
    got = {(r["id"], r["ts"]): r["current_price"] for r in good.to_pylist()}
    assert got == {("a", t0): 2.0, ("a", t1): 3.0, ("b", t0): 1.0}
    assert rejects.column_names == [name for name, _ in REJECT_COLUMNS]
    assert rejects.to_pylist()[0]["reason"] == "invalid_json" and rejects.num_rows == 1
    empty_good, empty_rejects = split_batch(parsed.slice(0, 0))
    assert empty_good.num_rows == 0 and empty_rejects.num_rows == 0


def test_driver_side_parse_gives_what_parse_messages_gives(spark):
    """The sink parses a collected batch in the driver (parse_collected); the result equals
    ``parse_messages(...).toArrow()`` of Spark, column for column and type for type, for good
    records, duplicates, every kind of garbage and a null value; bytes that are not UTF-8 are
    rejected and kept as text."""
    from spark_streaming.kafka_streaming import arrow_schema_of, kafka_columns, parse_collected

    values = [json.dumps(message(c, p, 10.0 + c)).encode() for p in range(2) for c in range(3)]
    values += [v for v, _ in GARBAGE] + [None]
    df = kafka_df(spark, values, first_offset=5, partition=1)
    expected = parse_messages(df, rejected_at=T0).toArrow()
    schema = arrow_schema_of(parse_messages(df))
    got = parse_collected(kafka_columns(df).toArrow(), schema, rejected_at=T0)
    assert got.schema == expected.schema
    assert got.to_pylist() == expected.to_pylist()

    odd = parse_collected(kafka_columns(kafka_df(spark, [b"\xff\xfe{"])).toArrow(), schema)
    assert odd.column("reason").to_pylist() == ["invalid_json"]
    assert odd.column("value").to_pylist() == ["\ufffd\ufffd{"]
