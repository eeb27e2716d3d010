"""``live/store.py`` on a real PostgreSQL: the movers it writes for a snapshot are what
``compute_movers`` picks among ALL of the snapshot's rows, although it reads only the candidates
(the rows ranked within the top N either way, ties included)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from marketflow_assets import indicators as ind
from marketflow_assets.live.store import INDICATOR_COLS, LiveStore
from marketflow_assets_tests.helpers import read_table


def indicator_rows(ts: pd.Timestamp, changes: list[float | None], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(changes)
    frame = pd.DataFrame(
        {
            # coin ids not in index order, so ties are broken by id, not by insertion
            "coin_id": [f"coin-{(i * 37) % n:03d}" for i in range(n)],
            "symbol": [f"s{i}" for i in range(n)],
            "ts": ts,
            "price": rng.uniform(1, 100, n),
            "change_5min": pd.array(changes, dtype="Float64").astype("float64"),
        }
    )
    for col in INDICATOR_COLS:
        if col not in frame:
            frame[col] = rng.uniform(0, 1, n)
    return frame


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
