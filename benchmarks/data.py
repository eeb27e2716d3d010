"""Synthetic raw price history for the benchmarks: vectorised, deterministic, cached.

``N`` coins polled every ``interval`` seconds, prices following independent geometric random
walks, written as the raw Parquet dataset (``schema.raw_arrow_schema()``, hive partitions
``date=YYYY-MM-DD``, one file per hour of data, the way a streaming job leaves many files per
day). The same seed always gives the same rows, and a history of ``h`` hours is exactly the last
``h`` hours of any longer history with the same end, so the 1 h / 1 d / 7 d datasets are nested.

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
from pathlib import Path

import numpy as np
import pandas as pd

from marketflow_assets.schema import raw_arrow_schema

logger = logging.getLogger(__name__)

# The fixed end of every benchmark history (exclusive): histories are [END - hours, END).
HISTORY_END = pd.Timestamp("2026-01-08T00:00:00Z")
HOURS = {"1h": 1, "1d": 24, "7d": 24 * 7}
#: Bumped when the generated files change, so stale caches are regenerated.
DATA_VERSION = 2


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


def _write_hour(table, root: Path, hour_start: pd.Timestamp, history: History) -> None:
    import pyarrow.parquet as pq

    folder = root / f"date={hour_start:%Y-%m-%d}"
    folder.mkdir(parents=True, exist_ok=True)
    ts_us = table.column("ts").cast("int64").to_numpy()
    if history.files == "hour":
        # named like the streaming job's files (min/max ts in the name), so the assets can
        # prune them by time exactly as they prune real data
        hour_id = hour_start.value // 3_600_000_000_000
        lo, hi = int(ts_us.min()), int(ts_us.max())
        name = f"part-{history.seed:012x}-b{hour_id:010d}-000-{lo}-{hi}.parquet"
        pq.write_table(table, folder / name)
        return
    n = history.coins
    first_poll = hour_start.value // 1_000_000_000 // history.interval_s
    for i in range(len(table) // n):
        lo = int(ts_us[i * n])
        name = f"part-{history.seed:012x}-b{first_poll + i:010d}-000-{lo}-{lo}.parquet"
        pq.write_table(table.slice(i * n, n), folder / name)


def _file_start(path: Path) -> pd.Timestamp:
    """First ``ts`` a file of :func:`_write_hour` holds (from its name)."""
    return pd.Timestamp(int(path.stem.rsplit("-", 2)[1]) * 1000, tz="UTC")


def ensure_history(history: History, source: History | None = None) -> Path:
    """Path of the ``raw_prices`` dataset for ``history`` (generated once, then cached).

    With ``source`` (a longer, otherwise identical history), the files are hard links to the
    source's newest files instead of being generated again.
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
    else:
        for h in range(history.hours):
            hour_start = history.start_ts + pd.Timedelta(hours=h)
            _write_hour(generate_hour(history, h), raw, hour_start, history)
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
    """Whole dataset into pandas (benchmarks only)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(raw, format="parquet", partitioning="hive")
    return dataset.to_table(columns=columns).to_pandas()
