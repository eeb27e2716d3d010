"""Parsing and the exactly-once sink, in-process on the shared local[2] SparkSession."""

from __future__ import annotations

import datetime as dt
import json
import shutil

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
    sink = RawPricesSink(raw, rejects, ckpt)
    poll0 = [json.dumps(message(c, 0, 10.0 + c)).encode() for c in range(4)]
    poll1 = [json.dumps(message(c, 1, 20.0 + c)).encode() for c in range(4)]
    replayed = [json.dumps(message(c, 0, 99.0)).encode() for c in range(4)]  # same (id, ts)

    # Batch 0: poll 0, one in-batch duplicate (later offset, other price) and one garbage record.
    m0 = sink.process(kafka_df(spark, poll0 + [poll0[1].replace(b"11.0", b"77.0"), b"{"]), 0)
    assert (m0["rows_in"], m0["rows_written"], m0["duplicates"], m0["rejects"]) == (6, 4, 1, 1)
    # Batch 1: a replay of poll 0 (all duplicates of batch 0) plus poll 1.
    m1 = sink.process(kafka_df(spark, replayed + poll1, first_offset=6), 1)
    assert (m1["rows_written"], m1["duplicates"]) == (4, 4)
    # Spark re-running a committed batch (crash after our commit, before Spark's): skipped.
    files = sorted(p.name for p in raw.rglob("*.parquet"))
    assert sink.process(kafka_df(spark, poll1, first_offset=6), 1)["rows_written"] == 4
    assert sorted(p.name for p in raw.rglob("*.parquet")) == files

    # Batch 2 crashed after moving one file into place, before committing: the re-run must
    # remove that file and redo the batch (the poll-4 rows must appear exactly once).
    poll4 = [json.dumps(message(c, 4, 30.0 + c)).encode() for c in range(4)]  # next day
    date_dir = next(raw.glob("date=*"))
    partial = date_dir / f"{sink._prefix(2)}000-0-99999999999999999.parquet"
    shutil.copy(next(date_dir.glob("*.parquet")), partial)  # stands for a half-published batch
    (sink.state / "pending" / "2.json").write_text(json.dumps({"files": [str(partial)]}))
    (sink._staging(2) / "raw").mkdir(parents=True)
    m2 = sink.process(kafka_df(spark, poll4, first_offset=14), 2)
    assert m2["rows_written"] == 4
    assert not partial.exists() and not (sink.state / "pending" / "2.json").exists()
    assert not sink._staging(2).exists()

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

    # A deleted checkpoint (new sink id, batch ids from 0 again) still deduplicates against the
    # Parquet already there, and never touches the old files.
    fresh = RawPricesSink(raw, rejects, tmp_path / "ck-new")
    assert fresh.sink_id != sink.sink_id
    m = fresh.process(kafka_df(spark, poll1 + poll4), 0)
    assert (m["rows_written"], m["duplicates"]) == (0, 8)
    assert len(read_raw(tmp_path)) == 12
