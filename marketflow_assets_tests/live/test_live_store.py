"""``live/store.py`` on a real PostgreSQL: the movers it writes for a snapshot are what
``compute_movers`` picks among ALL of the snapshot's rows, although it reads only the candidates
(the rows ranked within the top N either way, ties included)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from marketflow_assets import indicators as ind
from marketflow_assets.live.store import INDICATOR_COLS, LiveStore
from marketflow_assets_tests.helpers import read_table
from marketflow_assets_tests.live.live_helpers import indicator_rows, query


def test_movers_from_the_candidates_equal_movers_from_all_rows(pg_clean):
    t0 = pd.Timestamp("2026-03-02T10:00:00Z")
    # snapshot 1: a tie across the 5th place both ways (five coins at 3.0, five at -3.0), an
    # infinite change, and rows without a change; snapshot 2: fewer eligible coins than 2 x N
    crowded = [9.0, 8.0, 7.0, *[3.0] * 5, 2.0, 1.0, 0.0, float("inf"), None, None]
    crowded += [-1.0, -2.0, *[-3.0] * 5, -4.0, -5.0] + [0.5] * 40
    sparse = [1.5, None, -0.5, 0.25, None, 2.5]
    rows = pd.concat(
        [
            indicator_rows(t0, crowded, seed=1),
            indicator_rows(t0 + pd.Timedelta(seconds=30), sparse, seed=2),
        ],
        ignore_index=True,
    )
    store = LiveStore(pg_clean)
    try:
        inserted, written = store.write_batch("t", rows, {0: len(rows)})
    finally:
        store.close()
    expected = ind.compute_movers(rows)
    assert inserted == len(rows)
    assert written == len(expected) == 2 * ind.TOP_N + len([c for c in sparse if c is not None]) * 2
    got = read_table(pg_clean, "market_movers")
    got = got.sort_values(["snapshot_ts", "direction", "rank"]).reset_index(drop=True)
    key = ["snapshot_ts", "direction", "rank", "coin_id"]
    assert got[key].astype(str).values.tolist() == expected[key].astype(str).values.tolist()
    assert got["change_5min"].tolist() == expected["change_5min"].tolist()


#: The mover candidates as first written: every row of the snapshot ranked by two window
#: functions, kept where either rank is within the top N (the definition MOVER_CANDIDATES_SQL
#: must match).
_RANKED_CANDIDATES = """
SELECT coin_id, ts, change_5min FROM (
    SELECT coin_id, ts, change_5min,
        rank() OVER (PARTITION BY ts ORDER BY change_5min DESC) AS high,
        rank() OVER (PARTITION BY ts ORDER BY change_5min) AS low
    FROM price_indicators p WHERE p.ts = ANY(%(ts)s) AND NOT EXISTS (
        SELECT 1 FROM market_movers d WHERE d.snapshot_ts = p.ts AND d.source = %(dagster)s)
    AND change_5min IS NOT NULL AND change_5min <> 'NaN'::float8
) ranked WHERE high <= %(n)s OR low <= %(n)s
"""


def test_the_mover_candidates_are_the_rows_ranked_within_the_top_n(pg_clean):
    """The cut-off query (each snapshot's N-th change from either end, then its rows at or beyond
    them) reads the same rows as ranking every row of the snapshot: snapshots of many tied
    changes (drawn from a few values, infinities among them), one with fewer rows than N, one
    with no change at all, one whose movers Dagster wrote (left out), and a ``ts`` asked twice."""
    import psycopg2

    from marketflow_assets.live.store import MOVER_CANDIDATES_SQL

    t0 = pd.Timestamp("2026-03-02T10:00:00Z")
    rng = np.random.default_rng(11)
    levels = [-float("inf"), -2.0, -1.0, -0.0, 0.0, 0.5, 1.0, 2.0, float("inf"), None]
    snapshots = []
    for k in range(12):
        picks = rng.integers(0, len(levels), int(rng.integers(1, 60)))
        changes = [levels[i] for i in picks]
        if k == 3:  # fewer rows than N
            changes = [1.0, -1.0, 1.0]
        elif k == 5:  # no change at all
            changes = [None] * len(changes)
        snapshots.append(indicator_rows(t0 + pd.Timedelta(seconds=30 * k), changes, seed=k))
    rows = pd.concat(snapshots, ignore_index=True)
    times = sorted(set(rows["ts"])) + [t0]  # t0 asked twice
    dagsters = t0 + pd.Timedelta(seconds=30 * 7)
    store = LiveStore(pg_clean)
    try:
        store.write_indicators(rows, movers=False)
    finally:
        store.close()
    with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO market_movers (snapshot_ts, direction, rank, coin_id, symbol, price, "
            "change_5min, source) VALUES (%s, 'gainer', 1, 'x', 'x', 1, 1, 'dagster')",
            (dagsters,),
        )
        params = {"ts": [t.to_pydatetime() for t in times], "n": ind.TOP_N, "dagster": "dagster"}
        cur.execute(MOVER_CANDIDATES_SQL, params)
        got = sorted((r[0], r[2], r[4]) for r in cur.fetchall())
        cur.execute(_RANKED_CANDIDATES, params)
        expected = sorted(cur.fetchall())
    conn.close()
    assert got == expected
    assert {ts for _, ts, _ in got} == set(times) - {dagsters, t0 + pd.Timedelta(seconds=150)}
    per_snapshot = Counter(ts for _, ts, _ in got)
    assert max(per_snapshot.values()) > 2 * ind.TOP_N  # ties at a cut-off widen the top N
    assert len([r for r in got if r[1] == t0 + pd.Timedelta(seconds=90)]) == 3


def test_snapshots_with_dagsters_movers_are_left_to_dagster(pg_clean):
    """A live write recomputes the movers of the snapshots it touches, except where Dagster has
    written movers (its recompute owns them); the live movers it wrote before are replaced."""
    import psycopg2

    t0 = pd.Timestamp("2026-03-02T10:00:00Z")
    t1 = t0 + pd.Timedelta(seconds=30)
    changes = [float(c) for c in range(-8, 9)]
    store = LiveStore(pg_clean)
    try:
        store.write_batch("t", indicator_rows(t0, changes, seed=3).iloc[:3], {0: 1})
        store.write_batch("t", indicator_rows(t1, changes, seed=4).iloc[:12], {0: 2})
        conn = psycopg2.connect(pg_clean)
        with conn, conn.cursor() as cur:  # Dagster recomputed t0: its movers replace the live ones
            cur.execute("UPDATE market_movers SET source = 'dagster' WHERE snapshot_ts = %s", (t0,))
        conn.close()
        dagsters = query(
            pg_clean,
            "SELECT snapshot_ts, direction, rank, coin_id, source FROM market_movers "
            "ORDER BY snapshot_ts, direction, rank",
        )
        # the rest of both snapshots' coins come in: t1's movers change, t0's stay Dagster's
        store.write_batch(
            "t",
            pd.concat(
                [
                    indicator_rows(t0, changes, seed=3).iloc[3:],
                    indicator_rows(t1, changes, seed=4).iloc[12:],
                ],
                ignore_index=True,
            ),
            {0: 3},
        )
    finally:
        store.close()
    got = query(
        pg_clean,
        "SELECT snapshot_ts, direction, rank, coin_id, source FROM market_movers "
        "ORDER BY snapshot_ts, direction, rank",
    )
    kept = [(d, r, c, s) for ts, d, r, c, s in got if ts == t0]
    assert kept == [(d, r, c, s) for ts, d, r, c, s in dagsters if ts == t0]
    assert {s for *_, s in kept} == {"dagster"}
    live = [(c, s) for ts, d, r, c, s in got if ts == t1]
    expected = ind.compute_movers(indicator_rows(t1, changes, seed=4))
    assert live == [(c, "live") for c in expected["coin_id"]]


def test_rows_whose_key_is_taken_keep_the_stored_row(pg_clean):
    """A batch goes into price_indicators by one COPY when none of its keys is taken; where one
    is (Dagster's row, or a row written before a stop), the stored row wins and the batch's
    other rows are inserted all the same."""
    import psycopg2

    t0 = pd.Timestamp("2026-03-02T10:00:00Z")
    changes = [float(c) for c in range(-6, 7)]
    first = indicator_rows(t0, changes, seed=5)
    store = LiveStore(pg_clean)
    try:
        assert store.write_indicators(first.iloc[:4])[0] == 4  # keys free: the direct COPY
        with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
            cur.execute("UPDATE price_indicators SET source = 'dagster', price = -1")
        conn.close()
        again = store.write_indicators(first)  # 4 keys taken, 9 free
    finally:
        store.close()
    assert again[0] == len(first) - 4
    got = query(pg_clean, "SELECT coin_id, price, source FROM price_indicators ORDER BY coin_id")
    taken = set(first["coin_id"].iloc[:4])
    assert len(got) == len(first)
    assert {(c, p, s) for c, p, s in got if c in taken} == {(c, -1.0, "dagster") for c in taken}
    expected = dict(zip(first["coin_id"], first["price"], strict=True))
    assert {(c, p, s) for c, p, s in got if c not in taken} == {
        (c, expected[c], "live") for c in set(expected) - taken
    }


def test_the_state_rebuilt_on_start_holds_each_coins_own_recent_rows(pg_clean):
    """A coin whose rows lag behind the others' (its partition read minutes behind, then the
    consumer restarted) gets its own recent window back, not only the window before the
    table's newest ``ts``: the state equals the one built from every stored row."""
    t0 = pd.Timestamp("2026-12-07 12:00", tz="UTC")
    rows = []
    for k in range(120):  # one hour of 30-s polls of coin-fast
        rows.append(("coin-fast", t0 + pd.Timedelta(seconds=30 * k), 100.0 + k, 50.0 + k))
    for k in range(60):  # coin-slow: its partition stopped 30 minutes before the others
        rows.append(("coin-slow", t0 + pd.Timedelta(seconds=30 * k), 10.0 + k, 5.0 + k))
    frame = pd.DataFrame(rows, columns=["coin_id", "ts", "price", "ema_3min"])
    stored = frame.assign(symbol="s")
    for col in INDICATOR_COLS:
        if col not in stored:
            stored[col] = 0.5
    store = LiveStore(pg_clean)
    try:
        store.write_indicators(stored[list(INDICATOR_COLS)], movers=False)
        rebuilt = store.load_state()
    finally:
        store.close()
    full = ind.LiveState.from_rows(frame)
    pd.testing.assert_frame_equal(rebuilt.obs, full.obs)
    pd.testing.assert_frame_equal(rebuilt.last, full.last)
