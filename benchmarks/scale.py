"""Full market (15,000 coins): does a live refresh cost the same at the end of an hour as at its
start? — ``coins_15000 refresh_late / refresh_early``.

Synthetic history (:mod:`benchmarks.data`): 15,000 coins polled every 30 s, one Parquet file per
poll as the streaming job writes them, three hours ``[H - 1 h, H + 2 h)``. Two databases on one
embedded PostgreSQL hold what the live pipeline holds at two moments:

* ``late``: near the end of hour ``H`` — ``price_indicators`` for ``[H - 1 h, H + 56 min]``
  (3,495,000 rows, 1,695,000 of them in the current hour);
* ``early``: near the start of hour ``H + 1`` — the same plus the rest of ``H`` and the first
  poll of ``H + 1`` (3,615,000 rows, 15,000 in the current hour); a copy of ``late`` made with
  ``CREATE DATABASE ... TEMPLATE``, then the extra rows loaded.

So the two tables are the same size and differ in how full the current hour is — which is what
the ratio is about. (An ``early`` database with less history would flatter the ratio for an
unrelated reason: 15,000 inserts into the ``(coin_id, ts)`` key touch one index leaf page per
coin, and a smaller index stays in PostgreSQL's buffer cache.)

``market_movers`` holds the movers of the stored snapshots, and the incremental ledger lists the
raw files already folded in (as the live pipeline leaves them). Each database has its own
``raw_prices`` Delta table of hard links to the history's files holding exactly the files up to
its moment (registered in one commit). Then, interleaved (each moment first every other time),
the next poll's file is committed to each table (one commit, as a micro-batch) and
``price_indicators`` + ``market_movers`` of the current partition are materialized through
Dagster (``dg.materialize``, in process: what the live follower runs), 5 times each (the median:
one refresh slowed by the machine moves it little), plus one more poll per database through the
assets' functions directly, printing the time per step. Seeding (the same pure functions,
cached under ``$MARKETFLOW_BENCH_DIR/scale`` after the first run; bulk ``COPY``, keys built
afterwards) is untimed.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks import data, project
from benchmarks.loadavg import LoadSampler
from benchmarks.report import print_table, ratio_line

logger = logging.getLogger(__name__)

COINS = 15_000
INTERVAL_S = 30
REPEATS = 5
#: minutes into the current hour of each moment (early: hour H + 1, late: hour H): late's
#: REPEATS timed polls and the direct one after them stay within its hour
MOMENTS = {"early": pd.Timedelta(0), "late": pd.Timedelta(minutes=56)}


def _files_by_start(raw: Path) -> list[tuple[pd.Timestamp, Path]]:
    files = [(data._file_start(p), p) for p in raw.glob("date=*/*.parquet")]
    return sorted(files)


def _link(paths: list[Path], raw_dir: Path) -> None:
    """Hard-link ``paths`` into the table ``raw_dir`` and commit them (one commit, as the
    streaming job commits a micro-batch; the table is created on the first call)."""
    targets = []
    for path in paths:
        target = raw_dir / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(path, target)
            targets.append(target)
    if targets:
        data.register_files(raw_dir, targets, operation="stream")


def _bulk_load(url: str, indicators: pd.DataFrame, movers: pd.DataFrame) -> None:
    """Load both tables as a bulk load does (keys and indexes built after the COPY)."""
    import psycopg2

    from marketflow_assets.resources.postgres import PostgresResource, csv_payload
    from marketflow_assets.schema import TABLES, column_names, create_all_sql

    PostgresResource(url=url).ensure_tables()
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
            cur.execute("DROP INDEX IF EXISTS price_indicators_ts_idx")
            for table, frame in (("price_indicators", indicators), ("market_movers", movers)):
                cur.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
                cols = column_names(table)
                cur.copy_expert(
                    f"COPY {table} ({', '.join(cols)}) FROM STDIN WITH (FORMAT csv)",
                    csv_payload(frame.loc[:, list(cols)]),
                )
                cur.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({', '.join(TABLES[table][1])})")
            for statement in create_all_sql():
                cur.execute(statement)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM (ANALYZE) price_indicators, market_movers")
    finally:
        conn.close()


def _clone(server_url: str, template: str, name: str) -> str:
    """Database ``name`` as a file-level copy of ``template`` (``CREATE DATABASE ... TEMPLATE``)."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2

    conn = psycopg2.connect(server_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
            cur.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        conn.close()
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def _record_ledger(url: str, raw_dir: Path, hour) -> None:
    """The ledger row the live pipeline leaves for ``hour``: every file present folded in."""
    import psycopg2

    from marketflow_assets.defs.indicators.compute import raw_window_files
    from marketflow_assets.defs.indicators.incremental import HOUR, file_names
    from marketflow_assets.resources import refresh_ledger

    names = file_names(raw_dir, raw_window_files(raw_dir, hour, hour + HOUR))
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            refresh_ledger.record_indicators(cur, hour, hour + HOUR, names, False, hour)
            refresh_ledger.record_movers(cur, hour, hour + HOUR)
    finally:
        conn.close()


def _direct(raw_dir: Path, url: str, hour) -> dict[str, float]:
    """One live refresh through the assets' functions (no Dagster): seconds per step."""
    from marketflow_assets.defs.indicators.assets import refresh_indicators_incremental
    from marketflow_assets.defs.indicators.incremental import HOUR
    from marketflow_assets.defs.indicators.movers import refresh_movers_incremental
    from marketflow_assets.resources.postgres import PostgresResource

    postgres = PostgresResource(url=url)
    started = time.perf_counter()
    result = refresh_indicators_incremental(None, raw_dir, postgres, hour, hour + HOUR)
    mid = time.perf_counter()
    refresh_movers_incremental(None, postgres, hour, hour + HOUR)
    return {
        **{k: v for k, v in result.seconds.items()},
        "indicators": mid - started,
        "movers": time.perf_counter() - mid,
    }


def _count(url: str, start, end) -> int:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM price_indicators WHERE ts >= %s AND ts < %s", (start, end)
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def run(mode: str = "quick") -> dict[str, list[float]]:
    from benchmarks.incremental import database
    from marketflow_assets import indicators as ind
    from marketflow_assets.defs.indicators.compute import read_raw_window_local
    from marketflow_assets.raw_dataset import list_raw_files
    from marketflow_assets.runtime.services import EmbeddedPostgres

    history = data.History(coins=COINS, interval_s=INTERVAL_S, hours=3, files="poll")
    raw = data.ensure_history(history)
    first = history.start_ts  # the hour before H: history both databases hold
    hours = {label: first + pd.Timedelta(hours=1 + i) for i, label in enumerate(("late", "early"))}
    cuts = {label: hours[label] + MOMENTS[label] for label in MOMENTS}
    keys = {label: project.partition_key(hours[label].to_pydatetime()) for label in MOMENTS}
    files = _files_by_start(raw)
    scratch = data.bench_dir() / "scale"
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    times: dict[str, list[float]] = {label: [] for label in MOMENTS}
    steps: dict[str, dict[str, float]] = {}
    seed_s: dict[str, float] = {}
    stored: dict[str, int] = {}
    load = LoadSampler()
    print(
        f"scale: {COINS:,} coins every {INTERVAL_S} s, one file per poll; live refresh near the "
        f"start of hour {hours['early']:%H:%M} (early) and near the end of hour "
        f"{hours['late']:%H:%M} (late), {REPEATS} each"
    )
    try:
        with EmbeddedPostgres(str(work / "pgdata")) as server_url:
            # rows the live pipeline holds at the later moment (the earlier one is a prefix)
            started = time.perf_counter()
            last = max(cuts.values()) + pd.Timedelta(seconds=1)
            cache = scratch / f"seed-{history.name}-{last:%H%M%S}"
            if (cache / "_COMPLETE").exists():  # computed by an earlier run (deterministic)
                indicators = pd.read_parquet(cache / "indicators.parquet")
                movers = pd.read_parquet(cache / "movers.parquet")
            else:
                window = list_raw_files(raw, first.to_pydatetime(), last.to_pydatetime())
                frame = read_raw_window_local(window, first.to_pydatetime(), last)
                frame = frame[frame["ts"] >= first]
                indicators = ind.compute_indicators(frame)
                movers = ind.compute_movers(indicators[indicators["ts"] >= hours["late"]])
                cache.mkdir(parents=True, exist_ok=True)
                indicators.to_parquet(cache / "indicators.parquet")
                movers.to_parquet(cache / "movers.parquet")
                (cache / "_COMPLETE").write_text("ok")
            computed = time.perf_counter() - started
            urls, dirs = {}, {}
            previous = None
            for label in sorted(MOMENTS, key=lambda name: cuts[name]):
                t0 = time.perf_counter()
                cut = cuts[label]
                if previous is None:
                    urls[label] = database(server_url, f"scale_{label}")
                    part = indicators["ts"] <= cut
                    mover_part = movers["snapshot_ts"] <= cut
                else:  # the earlier moment's database plus the rows since
                    urls[label] = _clone(server_url, f"scale_{previous[0]}", f"scale_{label}")
                    part = (indicators["ts"] > previous[1]) & (indicators["ts"] <= cut)
                    mover_part = (movers["snapshot_ts"] > previous[1]) & (
                        movers["snapshot_ts"] <= cut
                    )
                _bulk_load(urls[label], indicators[part], movers[mover_part])
                dirs[label] = work / label / "raw_prices"
                _link([path for start, path in files if start <= cut], dirs[label])
                _record_ledger(urls[label], dirs[label], hours[label].to_pydatetime())
                stored[label] = _count(urls[label], first, history.end_ts)
                seed_s[label] = time.perf_counter() - t0
                previous = (label, cut)
            logger.info(
                "scale: seeded (compute %.1f s, early %.1f s, late %.1f s; untimed)",
                computed,
                seed_s["early"],
                seed_s["late"],
            )
            # warm-up (untimed): a run that finds nothing new (imports, first Dagster run)
            for label in MOMENTS:
                project.materialize_partition(dirs[label].parent, urls[label], keys[label], False)
            load.start()  # the timed refreshes
            for i in range(1, REPEATS + 1):
                # alternately first: neither moment always runs right after the other
                for label in list(MOMENTS)[:: 1 if i % 2 else -1]:
                    target = cuts[label] + pd.Timedelta(seconds=INTERVAL_S * i)
                    _link([path for start, path in files if start == target], dirs[label])
                    times[label].append(
                        project.materialize_partition(
                            dirs[label].parent, urls[label], keys[label], False
                        )
                    )
            # one more poll each through the assets' functions directly: where the time goes
            for label in MOMENTS:
                target = cuts[label] + pd.Timedelta(seconds=INTERVAL_S * (REPEATS + 1))
                _link([path for start, path in files if start == target], dirs[label])
                steps[label] = _direct(dirs[label], urls[label], hours[label].to_pydatetime())
            load.stop()
            for label in MOMENTS:
                expected = stored[label] + (REPEATS + 1) * COINS
                got = _count(urls[label], first, history.end_ts)
                if got != expected:
                    raise RuntimeError(f"scale {label}: {got} rows stored, expected {expected}")
    finally:
        load.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {label: statistics.median(values) for label, values in times.items()}
    print_table(
        f"scale: live refresh of one new poll of {COINS:,} coins through Dagster "
        "(dg.materialize of price_indicators + market_movers, in process)",
        ["moment", "rows already stored", "refresh s (median)", "runs"],
        [
            [
                f"{label} (new polls from {cuts[label] + pd.Timedelta(seconds=30):%H:%M:%S})",
                f"{stored[label]:,}",
                f"{med[label]:.2f}",
                " ".join(f"{t:.2f}" for t in times[label]),
            ]
            for label in MOMENTS
        ],
    )
    for label, split in steps.items():
        print(
            f"scale {label} direct refresh steps (s): "
            + ", ".join(f"{name} {value:.2f}" for name, value in split.items())
        )
    ratio_line(
        f"coins_{COINS} refresh_late / refresh_early",
        med["late"] / med["early"],
        "<= 1.2",
        load.describe(),
    )
    return times
