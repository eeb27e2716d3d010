"""Synthetic raw price history for the benchmarks: vectorised, deterministic, cached.

``N`` coins polled every ``interval`` seconds, prices following independent geometric random
walks, stored as the ``raw_prices`` Delta table (:mod:`marketflow_assets.raw_dataset`: data files
``date=YYYY-MM-DD/part-*.parquet`` in ``schema.raw_arrow_schema()``, partition column ``date``),
one data file per poll (as the streaming job's micro-batches leave them) or per hour (a
compacted layout). The same seed always gives the same rows, and a history of ``h`` hours is
exactly the last ``h`` hours of any longer history with the same end, so the 1 h / 1 d / 7 d
datasets are nested.

How the table is built: the data files are written with pyarrow (row groups of
``raw_dataset.ROW_GROUP_ROWS`` rows, Snappy, like delta-rs writes them) and then added to the
table in ONE commit of ``add`` actions carrying each file's statistics
(:func:`register_files`). The table then references exactly the files a streaming job would
have left, without paying one delta-rs commit per poll (20,160 commits for 7 days). Only the
file layout matters to the benchmarks using these histories (engine, incremental, scale: what a
refresh lists and reads); the commit history itself is what :mod:`benchmarks.costs` measures,
and it builds its tables commit by commit. A Parquet file written under ``raw_prices/`` after the
table exists is NOT part of it until registered: use :func:`register_files` or
``raw_dataset.append_batch``.

Datasets are cached under :func:`bench_dir` (``$MARKETFLOW_BENCH_DIR`` or ``./data/bench``) in a
directory named after their parameters; a ``_COMPLETE`` marker makes a half-written dataset be
rebuilt rather than reused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from marketflow_assets.schema import raw_arrow_schema

logger = logging.getLogger(__name__)

# The fixed end of every benchmark history (exclusive): histories are [END - hours, END).
HISTORY_END = pd.Timestamp("2026-01-08T00:00:00Z")
HOURS = {"1h": 1, "1d": 24, "7d": 24 * 7}
#: Bumped when the generated files change, so stale caches are regenerated.
DATA_VERSION = 3


def bench_dir() -> Path:
    """Root of the benchmark scratch data (datasets, Postgres, Spark temp files)."""
    from marketflow_assets.settings import load_settings

    return load_settings().bench_dir


@dataclass(frozen=True)
class History:
    """Parameters of one synthetic history; ``end`` is exclusive."""

    coins: int = 250
    interval_s: int = 30
    hours: int = 1
    end: str = HISTORY_END.isoformat()
    seed: int = 7
    #: Parquet files per hour: ``"poll"`` = one per poll, like the streaming job (one micro-batch
    #: per poll, named ``part-<sink>-b<batch>-<k>-<min ts us>-<max ts us>.parquet``), or
    #: ``"hour"`` = one file per hour (a compacted dataset, named the same way).
    files: str = "poll"

    @property
    def start_ts(self) -> pd.Timestamp:
        return pd.Timestamp(self.end) - pd.Timedelta(hours=self.hours)

    @property
    def end_ts(self) -> pd.Timestamp:
        return pd.Timestamp(self.end)

    @property
    def polls(self) -> int:
        return self.hours * 3600 // self.interval_s

    @property
    def rows(self) -> int:
        return self.polls * self.coins

    @property
    def name(self) -> str:
        end = self.end_ts.strftime("%Y%m%dT%H%M")
        return (
            f"raw{DATA_VERSION}_c{self.coins}_i{self.interval_s}_h{self.hours}_e{end}"
            f"_s{self.seed}_{self.files}"
        )


def coin_table(coins: int, seed: int) -> pd.DataFrame:
    """Static per-coin attributes: id, symbol, name, initial price, supply, volatility."""
    rng = np.random.default_rng(seed)
    ids = [f"coin-{i:04d}" for i in range(coins)]
    if coins >= 2:
        ids[0], ids[1] = "bitcoin", "ethereum"
    price0 = np.exp(rng.uniform(np.log(0.001), np.log(60_000.0), coins))
    if coins >= 2:
        price0[:2] = (60_000.0, 3_000.0)
    return pd.DataFrame(
        {
            "id": ids,
            "symbol": [
                ("btc", "eth")[i] if i < 2 and coins >= 2 else f"c{i:04d}" for i in range(coins)
            ],
            "name": [
                f"Coin {i}" if i >= 2 or coins < 2 else ("Bitcoin", "Ethereum")[i]
                for i in range(coins)
            ],
            "price0": price0,
            "supply": np.exp(rng.uniform(np.log(1e6), np.log(1e11), coins)),
            "sigma": rng.uniform(0.0002, 0.003, coins),  # log-return std per poll
        }
    )


def generate_hour(history: History, hour_index: int):
    """pyarrow Table of hour ``hour_index`` (0 = first hour of the history), raw schema.

    Prices are a deterministic function of (seed, absolute hour), so nested histories agree:
    each hour's random walk starts near the coin's base price (seeded by the absolute hour) and
    is continuous within the hour; the small level jump at hour boundaries is harmless for the
    benchmarks and keeps generation O(rows of the hour).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    coins = coin_table(history.coins, history.seed)
    hour_start = history.start_ts + pd.Timedelta(hours=hour_index)
    absolute_hour = int(hour_start.value // (3600 * 10**9))
    rng = np.random.default_rng([history.seed, absolute_hour])
    per_hour = 3600 // history.interval_s
    n = len(coins)
    rows = per_hour * n
    level = coins["price0"].to_numpy() * np.exp(rng.normal(0.0, 0.01, n))
    steps = rng.normal(0.0, 1.0, (per_hour, n)) * coins["sigma"].to_numpy()
    steps[0] = 0.0
    price = (level * np.exp(np.cumsum(steps, axis=0))).reshape(-1)  # poll-major, coin-minor
    ts_us = hour_start.value // 1000 + np.repeat(
        np.arange(per_hour, dtype=np.int64) * history.interval_s * 1_000_000, n
    )
    lag_us = rng.integers(1_000_000, 25_000_000, rows)
    coin_idx = pa.array(np.tile(np.arange(n, dtype=np.int32), per_hour))
    supply = np.tile(coins["supply"].to_numpy(), per_hour)
    tstype = pa.timestamp("us", tz="UTC")

    def strings(column: str):
        return pc.take(pa.array(coins[column].tolist(), pa.string()), coin_idx)

    columns = {
        "id": strings("id"),
        "symbol": strings("symbol"),
        "name": strings("name"),
        "current_price": pa.array(price),
        "market_cap": pa.array(price * supply),
        "market_cap_rank": pa.array(np.tile(np.arange(1, n + 1, dtype=np.int64), per_hour)),
        "total_volume": pa.array(price * supply * rng.uniform(0.01, 0.2, rows)),
        "high_24h": pa.array(price * 1.03),
        "low_24h": pa.array(price * 0.97),
        "price_change_percentage_24h": pa.array(rng.normal(0.0, 3.0, rows)),
        "circulating_supply": pa.array(supply),
        "last_updated": pa.array(ts_us - lag_us).cast(tstype),
        "ts": pa.array(ts_us).cast(tstype),
    }
    return pa.Table.from_pydict(columns, schema=raw_arrow_schema())


def _write_hour(table, root: Path, hour_start: pd.Timestamp, history: History) -> list[Path]:
    """Data files of one hour under ``root/date=.../`` (not yet part of the table)."""
    import pyarrow.parquet as pq

    from marketflow_assets.raw_dataset import ROW_GROUP_ROWS

    folder = root / f"date={hour_start:%Y-%m-%d}"
    folder.mkdir(parents=True, exist_ok=True)
    ts_us = table.column("ts").cast("int64").to_numpy()

    def write(part, name: str) -> Path:
        path = folder / name
        pq.write_table(part, path, row_group_size=ROW_GROUP_ROWS, compression="snappy")
        return path

    if history.files == "hour":
        # named like per-poll files (min/max ts in the name), so _file_start works on both
        hour_id = hour_start.value // 3_600_000_000_000
        lo, hi = int(ts_us.min()), int(ts_us.max())
        return [write(table, f"part-{history.seed:012x}-b{hour_id:010d}-000-{lo}-{hi}.parquet")]
    n = history.coins
    first_poll = hour_start.value // 1_000_000_000 // history.interval_s
    out = []
    for i in range(len(table) // n):
        lo = int(ts_us[i * n])
        name = f"part-{history.seed:012x}-b{first_poll + i:010d}-000-{lo}-{lo}.parquet"
        out.append(write(table.slice(i * n, n), name))
    return out


def _file_start(path: Path) -> pd.Timestamp:
    """First ``ts`` a file of :func:`_write_hour` holds (from its name)."""
    return pd.Timestamp(int(path.stem.rsplit("-", 2)[1]) * 1000, tz="UTC")


def _stat_value(value):
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


def add_action(raw: Path, path: Path):
    """The Delta ``add`` action of one data file under ``raw`` (statistics from its data)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from deltalake.transaction import AddAction

    table = pq.read_table(path)
    lo, hi, nulls = {}, {}, {}
    for name in table.column_names:
        column = table[name]
        nulls[name] = column.null_count
        if column.null_count < len(column):
            bounds = pc.min_max(column).as_py()
            lo[name], hi[name] = _stat_value(bounds["min"]), _stat_value(bounds["max"])
    stats = {"numRecords": table.num_rows, "minValues": lo, "maxValues": hi, "nullCount": nulls}
    st = path.stat()
    day = path.parent.name.split("=", 1)[1]
    return AddAction(
        path=path.relative_to(raw).as_posix(),
        size=st.st_size,
        partition_values={"date": day},
        modification_time=st.st_mtime_ns // 1_000_000,
        data_change=True,
        stats=json.dumps(stats),
    )


def register_files(raw: Path, paths: list[Path], operation: str = "append") -> int:
    """Add the data files ``paths`` (already under ``raw/date=.../``) to the ``raw_prices``
    table in ONE commit (the table is created when missing); returns the version."""
    from deltalake import DeltaTable
    from deltalake.transaction import create_table_with_add_actions

    from marketflow_assets import raw_dataset as rd
    from marketflow_assets.schema import RAW_PARTITION_COLUMN, raw_table_schema
    from marketflow_assets.settings import load_raw_retention_hours

    actions = [add_action(raw, p) for p in paths]
    props = rd.commit_properties(operation, {"files": len(actions)})
    if rd.is_table(raw):
        table = DeltaTable(str(raw))
        table.create_write_transaction(
            actions,
            mode="append",
            schema=raw_table_schema(),
            partition_by=[RAW_PARTITION_COLUMN],
            commit_properties=props,
        )
        table.update_incremental()
        return table.version()
    from deltalake import Schema

    create_table_with_add_actions(
        str(raw),
        Schema.from_arrow(raw_table_schema()),
        actions,
        mode="error",
        partition_by=[RAW_PARTITION_COLUMN],
        name="raw_prices",
        configuration=rd.table_configuration(load_raw_retention_hours()),
        commit_properties=props,
    )
    return DeltaTable(str(raw)).version()


def ensure_history(history: History, source: History | None = None) -> Path:
    """Path of the ``raw_prices`` table for ``history`` (generated once, then cached).

    With ``source`` (a longer, otherwise identical history), the data files are hard links to
    the source's newest files instead of being generated again (registered in a table of their
    own).
    """
    root = bench_dir() / "datasets" / history.name
    raw = root / "raw_prices"
    marker = root / "_COMPLETE"
    if marker.exists():
        return raw
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    logger.info("generating %s (%d rows) ...", history.name, history.rows)
    paths: list[Path] = []
    if (
        source is not None
        and source.name != history.name
        and source.hours >= history.hours
        and source.end == history.end
    ):
        source_raw = ensure_history(source)
        for path in sorted(source_raw.glob("date=*/*.parquet")):
            if _file_start(path) >= history.start_ts:
                target = raw / path.parent.name / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)
                paths.append(target)
    else:
        for h in range(history.hours):
            hour_start = history.start_ts + pd.Timedelta(hours=h)
            paths += _write_hour(generate_hour(history, h), raw, hour_start, history)
    register_files(raw, paths)
    marker.write_text(json.dumps(asdict(history) | {"rows": history.rows}))
    logger.info("generated %s in %.1f s", history.name, time.perf_counter() - started)
    return raw


def nested_histories(
    coins: int = 250, interval_s: int = 30, files: str = "poll"
) -> dict[str, History]:
    """The 1 h / 1 d / 7 d histories (same end, same seed, so the shorter are suffixes)."""
    return {
        label: History(coins=coins, interval_s=interval_s, hours=h, files=files)
        for label, h in HOURS.items()
    }


def read_history(raw: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The newest version of the table into pandas (benchmarks only)."""
    from deltalake import DeltaTable

    return DeltaTable(str(raw)).to_pandas(columns=columns)
