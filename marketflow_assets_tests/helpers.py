"""Helpers shared by the test packages: an independent plain-Python reference of the indicator
formulas (docs/INDICATORS.md), irregular test data, real raw Parquet writers and Postgres readers.

The reference uses only the standard library (datetime, math, statistics), loops over each
observation and scans every window; it shares no code with ``marketflow_assets.indicators``.
"""

from __future__ import annotations

import bisect
import math
import os
import random
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from marketflow_assets.schema import TABLES, column_names

#: ``1`` (set by ``.ci/run``): a missing engine (Java, PostgreSQL binaries, stunnel4, nginx) fails
#: the tests that need it instead of skipping them.
REQUIRE_ENV = "MARKETFLOW_REQUIRE_ENGINES"


def unavailable(reason: str):
    """Skip the calling test for ``reason``, or fail it where the engines are required (CI)."""
    import pytest

    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: these tests must run here)")
    pytest.skip(reason)


BASE = datetime(2024, 3, 9, 22, 50, tzinfo=UTC)
VALUE_COLUMNS = ["price", "change_1min", "change_5min", "sma_5min", "ema_3min", "volatility_5min"]


# --------------------------------------------------------------------------------------------
# Independent reference (docs/INDICATORS.md), O(n^2), plain Python.
# --------------------------------------------------------------------------------------------
def reference_indicators(rows: list[tuple[str, str, datetime, float]]) -> dict:
    """{(coin_id, ts): {column: value or None}} for rows (coin_id, symbol, ts, price).

    Timestamps are unique per coin (the raw dataset holds at most one row per (id, ts)).
    """
    by_coin: dict[str, list[tuple[datetime, float, str]]] = {}
    for coin, symbol, ts, price in rows:
        by_coin.setdefault(coin, []).append((ts, price, symbol))
    out = {}
    for coin, obs in by_coin.items():
        obs.sort()
        ema = None
        prev_t = None
        times = [t for t, _, _ in obs]

        def change(seconds, t_i, p_i, times=times, obs=obs):
            # p_ref = price of the latest observation with t <= t_i - seconds
            j = bisect.bisect_right(times, t_i - timedelta(seconds=seconds)) - 1
            return None if j < 0 else 100 * (p_i / obs[j][1] - 1)

        for i, (t_i, p_i, symbol) in enumerate(obs):
            # window (t_i - 300 s, t_i]
            first = bisect.bisect_right(times, t_i - timedelta(seconds=300))
            window = [p for _, p, _ in obs[first : i + 1]]
            if ema is None:
                ema = p_i
            else:
                alpha = 1 - math.exp(-(t_i - prev_t).total_seconds() / 180)
                ema = ema + alpha * (p_i - ema)
            prev_t = t_i
            out[(coin, t_i)] = {
                "symbol": symbol,
                "price": p_i,
                "change_1min": change(60, t_i, p_i),
                "change_5min": change(300, t_i, p_i),
                "sma_5min": statistics.fmean(window),
                "ema_3min": ema,
                "volatility_5min": statistics.stdev(window) if len(window) >= 2 else None,
            }
    return out


def reference_movers(ref: dict) -> list[tuple]:
    """Sorted list of (snapshot_ts, direction, rank, coin_id, change_5min)."""
    by_ts: dict[datetime, list[tuple[str, float]]] = {}
    for (coin, ts), row in ref.items():
        if row["change_5min"] is not None:
            by_ts.setdefault(ts, []).append((coin, row["change_5min"]))
    out = []
    for ts, items in by_ts.items():
        gainers = sorted(items, key=lambda x: (-x[1], x[0]))[:5]
        losers = sorted(items, key=lambda x: (x[1], x[0]))[:5]
        out += [(ts, "gainer", r + 1, c, v) for r, (c, v) in enumerate(gainers)]
        out += [(ts, "loser", r + 1, c, v) for r, (c, v) in enumerate(losers)]
    return sorted(out)


# --------------------------------------------------------------------------------------------
# Irregular test data.
# --------------------------------------------------------------------------------------------
def irregular_rows(seed: int = 7, coins: int = 9, polls: int = 160) -> list[tuple]:
    """Polls at irregular times with gaps; coins appear, disappear, repeat prices; one single."""
    rng = random.Random(seed)
    rows = []
    t = BASE
    prices = {f"coin-{k:02d}": 10.0 ** rng.uniform(-6, 5) for k in range(coins)}
    alive = {c: rng.random() < 0.7 for c in prices}
    for _ in range(polls):
        step = rng.choice([1, 15, 29, 30, 30, 31, 45, 60, 61, 299, 300, 301])
        if rng.random() < 0.04:
            step = rng.choice([420, 900, 3600])  # gaps longer than every window
        t += timedelta(seconds=step, microseconds=rng.choice([0, 0, 1, 999_999]))
        for coin in prices:
            if rng.random() < 0.05:
                alive[coin] = not alive[coin]  # coins appear and disappear
            if not alive[coin] or rng.random() < 0.1:
                continue
            if rng.random() < 0.3:  # duplicate (unchanged) prices are common
                pass
            else:
                prices[coin] *= math.exp(rng.gauss(0, 0.004))
            rows.append((coin, coin.upper()[:4], t, prices[coin]))
    rows.append(("solo", "SOLO", BASE + timedelta(minutes=50), 3.25))  # single observation
    rows.append(("flat", "FLAT", BASE + timedelta(minutes=1), 0.1))  # constant price
    rows += [("flat", "FLAT", BASE + timedelta(minutes=1, seconds=s), 0.1) for s in (7, 30, 200)]
    return rows


def assert_indicators_match_reference(table: pd.DataFrame, rows) -> None:
    ref = reference_indicators(rows)
    got = {(r.coin_id, r.ts.to_pydatetime()): r for r in table.itertuples(index=False)}
    assert set(got) == set(ref)  # every observation exactly once
    for key, exp in ref.items():
        row = got[key]
        assert row.symbol == exp["symbol"]
        for col in VALUE_COLUMNS:
            value, expected = getattr(row, col), exp[col]
            if expected is None:
                assert value is None or math.isnan(value), (key, col, value)
            else:
                assert math.isclose(value, expected, rel_tol=1e-9, abs_tol=0), (key, col)


def assert_movers_match_reference(table: pd.DataFrame, rows) -> None:
    expected = reference_movers(reference_indicators(rows))
    got = sorted(
        (r.snapshot_ts.to_pydatetime(), r.direction, r.rank, r.coin_id, r.change_5min)
        for r in table.itertuples(index=False)
    )
    assert [g[:4] for g in got] == [e[:4] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert math.isclose(g[4], e[4], rel_tol=1e-9)


def write_raw_parquet(raw_dir: Path, rows, name: str | None = None) -> list[Path]:
    """Append rows ``(id, symbol, ts, price)`` to the ``raw_prices`` Delta table as ONE commit;
    return the data files that commit added (``name``: ignored, kept for old call sites)."""
    from marketflow_assets.raw_dataset import append_frame, snapshot

    frame = pd.DataFrame(rows, columns=["id", "symbol", "ts", "current_price"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["name"] = frame["id"].str.title()
    frame["last_updated"] = frame["ts"]
    before = {f.path for f in snapshot(raw_dir).files_all}
    append_frame(Path(raw_dir), frame)
    return sorted(f.path for f in snapshot(raw_dir).files_all if f.path not in before)


def raw_key_counts(raw_dir: Path):
    """``Counter`` of the (id, ts) keys in the newest committed version of ``raw_prices`` (read
    through one pinned snapshot, as every reader does)."""
    from collections import Counter

    from marketflow_assets.raw_dataset import read_files, snapshot

    snap = snapshot(raw_dir)
    if not snap.files_all:
        return Counter()
    frame = read_files([f.path for f in snap.files_all], ("id", "ts"))
    return Counter(zip(frame["id"], pd.to_datetime(frame["ts"], utc=True), strict=True))


def assert_same_indicator_rows(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """``got`` holds ``expected``'s indicator rows: the same ``(coin_id, ts)`` keys (and
    symbols, when both carry them), values equal to 1e-9 relative, NULL where NULL."""
    from marketflow_assets import indicators as ind

    got = got.sort_values(["coin_id", "ts"]).reset_index(drop=True)
    expected = expected.sort_values(["coin_id", "ts"]).reset_index(drop=True)
    assert list(got["coin_id"]) == list(expected["coin_id"])
    assert (ind.to_ns(got["ts"]) == ind.to_ns(expected["ts"])).all()
    if "symbol" in got and "symbol" in expected:
        assert list(got["symbol"]) == list(expected["symbol"])
    for column in ind.INDICATOR_COLUMNS[3:]:
        a = got[column].to_numpy(dtype=float)
        b = expected[column].to_numpy(dtype=float)
        assert (np.isnan(a) == np.isnan(b)).all(), column
        ok = ~np.isnan(b)
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-9, atol=0, err_msg=column)


def read_table(url: str, table: str) -> pd.DataFrame:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            # the computed columns (not the provenance column ``source``) of Marketflow tables
            columns = ", ".join(column_names(table)) if table in TABLES else "*"
            cur.execute(f"SELECT {columns} FROM {table}")
            cols = [d[0] for d in cur.description]
            frame = pd.DataFrame(cur.fetchall(), columns=cols)
    finally:
        conn.close()
    for col in frame.columns:
        if col in ("ts", "snapshot_ts"):
            frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame


def partition_keys(assets_def: dg.AssetsDefinition, first_ts, last_ts) -> list[str]:
    fmt = "%Y-%m-%d-%H:00"
    return assets_def.partitions_def.get_partition_keys_in_range(
        dg.PartitionKeyRange(first_ts.strftime(fmt), last_ts.strftime(fmt))
    )
