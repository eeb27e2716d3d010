"""Sizing inputs of docs/DEPLOY.md, measured with the project's own code.

``python -m benchmarks.sizing [--coins 15000] [--interval 30] [--polls 20]``

Measures, on simulated polls of ``--coins`` coins (the recorded real CoinGecko page for the
message size when ``../shared`` is there):

* bytes of one Kafka message (key + JSON value exactly as ``marketflow ingest`` publishes it);
* bytes per raw Parquet row, one file per poll (as the streaming job leaves them, snappy) and one
  file per hour (after ``marketflow compact``);
* bytes per ``price_indicators`` / ``market_movers`` row in PostgreSQL (heap + indexes, the
  project's DDL, rows computed by ``indicators.py`` and written by ``PostgresResource``), on a
  throw-away embedded PostgreSQL;

then prints the per-second and per-day arithmetic for ``--coins`` at ``--interval``. Sizes, not
speeds: the numbers do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RECORDED_PAGE = REPO_ROOT.parent / "shared" / "coingecko" / "markets_top9_2023-03-15_usd.json"
START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def message_bytes(polls) -> tuple[float, float]:
    """Mean key+value bytes of the published messages: (recorded real page, simulated)."""
    from marketflow_assets.ingest.validate import normalise_record

    def mean_size(records, ts) -> float:
        sizes = [
            len(r["id"].encode()) + len(json.dumps(normalise_record(r, ts)).encode())
            for r in records
        ]
        return sum(sizes) / len(sizes)

    ts, records = polls[0]
    real = float("nan")
    if RECORDED_PAGE.is_file():
        real = mean_size(json.loads(RECORDED_PAGE.read_text()), ts)
    return real, mean_size(records, ts)


def raw_frame(polls):
    import pandas as pd

    from marketflow_assets.schema import RAW_COLUMN_NAMES

    rows = [dict(r, ts=ts) for ts, records in polls for r in records]
    frame = pd.DataFrame(rows)
    for col in ("ts", "last_updated"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame.reindex(columns=list(RAW_COLUMN_NAMES))


def parquet_bytes_per_row(frame) -> tuple[float, float]:
    """(one file per poll, one file per hour-like batch of all polls) bytes per row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from marketflow_assets.schema import raw_arrow_schema

    schema = raw_arrow_schema()

    def size(part) -> int:
        table = pa.Table.from_pandas(part, schema=schema, preserve_index=False)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="snappy")
        return buf.tell()

    per_poll = sum(size(group) for _, group in frame.groupby("ts"))
    return per_poll / len(frame), size(frame) / len(frame)


def postgres_bytes_per_row(frame) -> tuple[float, float, int, int]:
    """(price_indicators, market_movers) bytes per row, and their row counts."""
    import pandas as pd

    from marketflow_assets.indicators import compute_indicators, compute_movers
    from marketflow_assets.resources.postgres import PostgresResource
    from marketflow_assets.runtime.services import EmbeddedPostgres

    indicators = compute_indicators(frame[["id", "symbol", "ts", "current_price"]])
    movers = compute_movers(indicators)
    with tempfile.TemporaryDirectory(prefix="marketflow-sizing-") as tmp:
        with EmbeddedPostgres(Path(tmp) / "pgdata") as url:
            pg = PostgresResource(url=url)
            pg.ensure_tables()
            start, end = frame["ts"].min(), frame["ts"].max() + pd.Timedelta(microseconds=1)
            pg.replace_period("price_indicators", indicators, start, end)
            pg.replace_period("market_movers", movers, start, end, ts_column="snapshot_ts")
            out = []
            with pg.get_connection() as conn, conn.cursor() as cur:
                for table in ("price_indicators", "market_movers"):
                    cur.execute(f"SELECT pg_total_relation_size('{table}'), count(*) FROM {table}")
                    size, count = cur.fetchone()
                    out.append((size / count, count))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def main(argv: list[str] | None = None) -> int:
    from marketflow_assets.ingest.sources import simulate_polls

    parser = argparse.ArgumentParser(prog="python -m benchmarks.sizing", description=__doc__)
    parser.add_argument("--coins", type=int, default=15_000)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--polls", type=int, default=20, help="polls measured (default 20)")
    args = parser.parse_args(argv)

    polls = list(
        simulate_polls(args.coins, seed=1, start=START, interval_s=args.interval, count=args.polls)
    )
    real_msg, sim_msg = message_bytes(polls)
    frame = raw_frame(polls)
    pq_poll, pq_hour = parquet_bytes_per_row(frame)
    pi_row, mm_row, pi_rows, mm_rows = postgres_bytes_per_row(frame)

    per_day = 86_400 / args.interval
    msgs_s = args.coins / args.interval
    msg = real_msg if real_msg == real_msg else sim_msg  # NaN check: recorded page absent
    rows_day = args.coins * per_day
    print(f"measured on {args.polls} simulated polls of {args.coins} coins")
    print(
        f"kafka message bytes (key + value): recorded real page {real_msg:.0f}, "
        f"simulated {sim_msg:.0f}"
    )
    print(f"parquet bytes/row: one file per poll {pq_poll:.1f}, one file per hour {pq_hour:.1f}")
    print(
        f"postgres bytes/row incl. indexes: price_indicators {pi_row:.1f} ({pi_rows} rows), "
        f"market_movers {mm_row:.1f} ({mm_rows} rows)"
    )
    print(f"--- {args.coins} coins every {args.interval:g} s ---")
    print(
        f"polls/day {per_day:.0f}; messages/s {msgs_s:.0f}; "
        f"kafka bytes/s {msgs_s * msg / 1e3:.0f} kB; kafka bytes/day {rows_day * msg / 1e9:.1f} GB"
    )
    print(
        f"raw rows/day {rows_day / 1e6:.1f} M; parquet/day {rows_day * pq_poll / 1e9:.2f} GB "
        f"(per-poll files), {rows_day * pq_hour / 1e9:.2f} GB (hourly files)"
    )
    movers_day = per_day * 10
    print(
        f"postgres rows/day: price_indicators {rows_day / 1e6:.1f} M "
        f"({rows_day * pi_row / 1e9:.1f} GB), market_movers {movers_day:.0f} "
        f"({movers_day * mm_row / 1e6:.1f} MB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
