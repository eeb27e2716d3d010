"""Incremental cost: refreshing the newest partition vs the seed's full recompute.

For synthetic histories of 1 hour, 1 day and 7 days (250 coins every 30 s, one Parquet file per
poll as the streaming job writes them; see :mod:`benchmarks.data`), on a fresh embedded
PostgreSQL and one warm local SparkSession:

1. ``seed_full``: the seed's design (:mod:`benchmarks.seed`): read all Parquet, recompute every
   indicator with Spark windows, overwrite both tables. This also leaves the full history in
   Postgres, which is the state an incremental refresh continues from.
2. ``incremental``: the project's refresh of the newest hourly partition of ``price_indicators``
   + ``market_movers`` through Dagster (``dg.materialize`` of both assets for that partition,
   median of several runs), plus one direct call of the assets' functions for a per-step split.
3. The refreshed hour is checked against the seed's rows for that hour (relative error <= 1e-9,
   identical movers): both implement the formulas of docs/INDICATORS.md, one incrementally.

Ratios printed: ``incremental_7d / incremental_1h`` (does the refresh cost grow with history?)
and ``seed_full_7d / incremental_7d`` (what the incremental design saves).
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import pandas as pd

from benchmarks import data, project
from benchmarks.report import print_table, ratio_line
from benchmarks.seed import seed_full_recompute
from marketflow_assets.indicators import INDICATOR_COLUMNS
from marketflow_assets.schema import column_names

logger = logging.getLogger(__name__)

RTOL = 1e-9
#: Raw file layout per mode: the streaming job's one file per poll (full), or the same rows
#: compacted to one file per hour (quick: keeps ``make bench`` under 5 minutes).
LAYOUT = {"quick": "hour", "full": "poll"}
#: Histories on which the seed design runs (quick: only the 7 d one the ratio needs).
SEEDED = {"quick": ("7d",), "full": ("1h", "1d", "7d")}
NAN = float("nan")
#: The value columns of ``price_indicators`` (after coin_id, symbol, ts).
INDICATOR_VALUES = INDICATOR_COLUMNS[3:]


@dataclass
class SizeResult:
    label: str
    rows: int
    seed: dict[str, float]
    incremental: list[float]
    direct: dict[str, float]
    check: str
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def incremental_s(self) -> float:
        return statistics.median(self.incremental)


def _query(url: str, sql: str, params=None) -> pd.DataFrame:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute(sql, params)
            cols = [d[0] for d in cur.description]
            return pd.DataFrame(cur.fetchall(), columns=cols)
    finally:
        conn.close()


def _vacuum(url: str) -> None:
    """``VACUUM (ANALYZE)`` both tables (untimed), as an operator does after a bulk load.

    Otherwise autovacuum picks up the seed's millions of fresh rows a minute later - in the middle
    of the timed refreshes, which then measure background maintenance of the baseline's load.
    """
    import psycopg2

    from marketflow_assets.schema import TABLES

    started = time.perf_counter()
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"VACUUM (ANALYZE) {', '.join(TABLES)}")
    finally:
        conn.close()
    logger.info("vacuum after the seed's load: %.1f s (untimed)", time.perf_counter() - started)


def database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url``; return its URL."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2

    conn = psycopg2.connect(server_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
            cur.execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def _period(url: str, start, end) -> tuple[pd.DataFrame, pd.DataFrame]:
    ind = _query(
        url,
        f"SELECT {', '.join(column_names('price_indicators'))} FROM price_indicators "
        "WHERE ts >= %s AND ts < %s ORDER BY coin_id, ts",
        (start, end),
    )
    mov = _query(
        url,
        f"SELECT {', '.join(column_names('market_movers'))} FROM market_movers "
        "WHERE snapshot_ts >= %s AND snapshot_ts < %s "
        "ORDER BY snapshot_ts, direction, rank",
        (start, end),
    )
    return ind, mov


def _compare(seed: tuple[pd.DataFrame, pd.DataFrame], inc: tuple[pd.DataFrame, pd.DataFrame]):
    """'equal (max rel err ...)' or a description of the first difference."""
    import numpy as np

    (si, sm), (ii, im) = seed, inc
    if len(si) != len(ii) or not (si["coin_id"].to_numpy() == ii["coin_id"].to_numpy()).all():
        return f"DIFFERENT rows ({len(si)} seed vs {len(ii)} incremental)"
    worst = 0.0
    for col in INDICATOR_VALUES:
        a = si[col].astype("float64").to_numpy()
        b = ii[col].astype("float64").to_numpy()
        if (np.isnan(a) != np.isnan(b)).any():
            return f"DIFFERENT NULLs in {col}"
        ok = ~np.isnan(a)
        diff = np.abs(a[ok] - b[ok])
        scale = np.maximum(np.abs(a[ok]), np.abs(b[ok]))
        if (diff > RTOL * scale + 1e-12).any():
            return f"DIFFERENT {col}"
        if ok.any():
            worst = max(worst, float((diff / np.maximum(scale, 1e-300)).max()))
    keys = ["snapshot_ts", "direction", "rank", "coin_id"]
    if len(sm) != len(im) or not sm[keys].reset_index(drop=True).equals(
        im[keys].reset_index(drop=True)
    ):
        return "DIFFERENT movers"
    return f"equal (max rel err {worst:.1e})"


def run(mode: str = "quick") -> list[SizeResult]:
    from marketflow_assets.runtime.services import EmbeddedPostgres

    repeats = 7
    layout = LAYOUT[mode]
    histories = data.nested_histories(files=layout)
    if mode == "quick":
        del histories["1d"]
    longest = histories["7d"]
    raws = {label: data.ensure_history(h, longest) for label, h in histories.items()}
    start = (longest.end_ts - pd.Timedelta(hours=1)).to_pydatetime()
    end = longest.end_ts.to_pydatetime()
    key = project.partition_key(start)

    scratch = data.bench_dir() / "incremental"
    scratch.mkdir(parents=True, exist_ok=True)
    pg_dir = tempfile.mkdtemp(prefix="pg-", dir=scratch)
    results: list[SizeResult] = []
    try:
        with EmbeddedPostgres(pg_dir + "/pgdata") as server_url:
            spark = project.get_bench_spark()
            urls = {label: database(server_url, f"bench_{label}") for label in histories}
            seeds, seed_rows = {}, {}
            for label, history in histories.items():
                if label not in SEEDED[mode]:
                    continue
                logger.info(
                    "incremental %s: seed full recompute of %d rows ...", label, history.rows
                )
                seeds[label] = seed_full_recompute(spark, raws[label], urls[label], scratch)
                seed_rows[label] = _period(urls[label], start, end)
                _vacuum(urls[label])
            # Warm-up (untimed): one refresh per history (first Dagster run, Python workers).
            for label in histories:
                project.materialize_partition(raws[label].parent, urls[label], key)
            # Refreshes interleaved (1h, 1d, 7d, 1h, ...) so that load drift on the machine
            # affects every history alike; each history has its own database.
            times: dict[str, list[float]] = {label: [] for label in histories}
            for _ in range(repeats):
                for label in histories:
                    times[label].append(
                        project.materialize_partition(raws[label].parent, urls[label], key)
                    )
            for label, history in histories.items():
                direct = project.refresh_functions(
                    spark, raws[label].parent, urls[label], start, end
                )
                if label in seeds:
                    check = _compare(seed_rows[label], _period(urls[label], start, end))
                else:
                    check = "n/a (no seed run in quick mode)"
                seed = seeds.get(label, {"total": NAN, "read_compute": NAN, "write": NAN})
                results.append(SizeResult(label, history.rows, seed, times[label], direct, check))
                logger.info(
                    "incremental %s: seed %.1f s, refresh %s",
                    label,
                    seed["total"],
                    [round(t, 2) for t in times[label]],
                )
    finally:
        shutil.rmtree(pg_dir, ignore_errors=True)

    print_table(
        "incremental: newest hourly partition refresh vs seed full recompute "
        f"(250 coins @ 30 s, one raw file per {layout})",
        [
            "history",
            "raw rows",
            "seed full s",
            "(read+compute / write)",
            "incremental s (Dagster, median)",
            "runs",
            "direct s (indicators / movers)",
            "check vs seed",
        ],
        [
            [
                r.label,
                f"{r.rows:,}",
                f"{r.seed['total']:.2f}",
                f"{r.seed['read_compute']:.1f} / {r.seed['write']:.1f}",
                f"{r.incremental_s:.2f}",
                " ".join(f"{t:.2f}" for t in r.incremental),
                f"{r.direct['total']:.2f} "
                f"({r.direct['indicators']:.2f} / {r.direct['movers']:.2f})",
                r.check,
            ]
            for r in results
        ],
    )
    by = {r.label: r for r in results}
    steps = ", ".join(
        f"{k.split('.', 1)[1]} {v:.2f}"
        for k, v in by["7d"].direct.items()
        if k.startswith("indicators.")
    )
    print(f"incremental 7d direct price_indicators steps (s): {steps}")
    ratio_line(
        "incremental_7d / incremental_1h", by["7d"].incremental_s / by["1h"].incremental_s, "<= 1.2"
    )
    ratio_line(
        "seed_full_7d / incremental_7d", by["7d"].seed["total"] / by["7d"].incremental_s, ">= 50"
    )
    return results
