"""The latency benchmark's baseline processor (``benchmarks/quix_baseline.py``) writes the rows
Marketflow writes: its in-memory lookback, fed poll by poll in batches of any size, and its upsert
into a real PostgreSQL give a full recompute of ``indicators.compute_indicators``."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from benchmarks.quix_baseline import TABLE, IndicatorState, Upserter
from marketflow_assets import indicators as ind
from marketflow_assets_tests.helpers import assert_same_indicator_rows, irregular_rows


def _raw() -> pd.DataFrame:
    frame = pd.DataFrame(irregular_rows(), columns=["id", "symbol", "ts", "current_price"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame.sort_values("ts", kind="mergesort").reset_index(drop=True)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("cut", ["polls", "records"])
def test_streamed_batches_equal_a_full_recompute(seed, cut):
    """Checkpoints of 1-7 whole polls, or of 1-20 records (polls cut anywhere)."""
    raw = _raw()
    expected = ind.compute_indicators(raw)
    rng = random.Random(seed)
    stamps = list(raw["ts"].drop_duplicates())
    state = IndicatorState()
    emitted = []
    i = 0
    units = stamps if cut == "polls" else range(len(raw))
    while i < len(units):
        n = rng.randint(1, 7 if cut == "polls" else 20)
        if cut == "polls":
            batch = raw[raw["ts"].isin(stamps[i : i + n])]
        else:
            batch = raw.iloc[i : i + n]
        rows = state.update(batch)
        # the batch's records, plus (polls cut anywhere) earlier rows of its coins from its
        # oldest ts on; nothing of other coins
        keys = set(zip(rows["coin_id"], rows["ts"], strict=True))
        assert set(zip(batch["id"], batch["ts"], strict=True)) <= keys
        assert set(rows["coin_id"]) == set(batch["id"])
        assert rows["ts"].min() == batch["ts"].min()
        if cut == "polls":
            assert len(rows) == len(batch)
        emitted.append(rows)
        i += n
    got = pd.concat(emitted).drop_duplicates(["coin_id", "ts"], keep="last")
    assert_same_indicator_rows(got, expected)


def test_upserts_are_idempotent_and_match(pg_clean):
    import psycopg2

    raw = _raw()
    expected = ind.compute_indicators(raw)
    state = IndicatorState()
    upserter = Upserter(pg_clean)
    try:
        stamps = list(raw["ts"].drop_duplicates())
        for k in range(0, len(stamps), 10):
            batch = raw[raw["ts"].isin(stamps[k : k + 10])]
            rows = state.update(batch)
            upserter.write(rows)
            upserter.write(rows)  # a redelivered checkpoint (at-least-once) changes nothing
    finally:
        upserter.close()
    conn = psycopg2.connect(pg_clean)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {TABLE}")
            got = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
    finally:
        conn.close()
    assert len(got) == len(expected)
    got["ts"] = pd.to_datetime(got["ts"], utc=True)
    assert_same_indicator_rows(got, expected)
