"""Indicator math against an independent plain-Python reference (``helpers.reference_indicators``).

The reference uses only the standard library (datetime, math, statistics), loops over each
observation and scans every window; it shares no code with ``marketflow_assets.indicators``.
"""

from __future__ import annotations

import math
import random
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from marketflow_assets import indicators as ind
from marketflow_assets_tests.helpers import (
    BASE,
    irregular_rows,
    reference_indicators,
    reference_movers,
)

REL = 1e-9


def to_frame(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["id", "symbol", "ts", "current_price"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame.sample(frac=1.0, random_state=3).reset_index(drop=True)  # any input order


def assert_close(actual, expected, where):
    if expected is None:
        assert actual is None or (isinstance(actual, float) and math.isnan(actual)), where
        return
    assert actual is not None and not math.isnan(actual), where
    assert math.isclose(actual, expected, rel_tol=REL, abs_tol=0.0), (where, actual, expected)


def assert_matches_reference(result: pd.DataFrame, ref: dict, keys=None):
    keys = set(ref) if keys is None else keys
    got = {(r.coin_id, r.ts.to_pydatetime()): r for r in result.itertuples(index=False)}
    assert set(got) == keys
    for key in keys:
        row, exp = got[key], ref[key]
        assert row.symbol == exp["symbol"]
        assert row.price == exp["price"]
        for col in ("change_1min", "change_5min", "sma_5min", "ema_3min", "volatility_5min"):
            assert_close(getattr(row, col), exp[col], (key, col))


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rows():
    return irregular_rows()


@pytest.fixture(scope="module")
def reference(rows):
    return reference_indicators(rows)


def test_full_computation_matches_reference(rows, reference):
    result = ind.compute_indicators(to_frame(rows))
    assert list(result.columns) == list(ind.INDICATOR_COLUMNS)
    assert len(result) == len(rows)
    assert_matches_reference(result, reference)
    # the data really exercises the edge cases
    assert result["change_5min"].isna().sum() > 0 and result["change_5min"].notna().sum() > 0
    flat = result[result.coin_id == "flat"]
    assert (flat["volatility_5min"].iloc[1:] == 0.0).all() and (flat["sma_5min"] == 0.1).all()
    solo = result[result.coin_id == "solo"].iloc[0]
    assert math.isnan(solo.volatility_5min) and math.isnan(solo.change_1min)
    assert solo.ema_3min == solo.sma_5min == 3.25


def test_window_edges_are_exact():
    """Observations exactly 60 s / 300 s before count as p_ref; the 300 s window is (t-300, t]."""
    t0 = BASE
    rows = [
        ("a", "A", t0, 100.0),
        ("a", "A", t0 + timedelta(seconds=240), 110.0),
        ("a", "A", t0 + timedelta(seconds=300), 121.0),
        ("a", "A", t0 + timedelta(seconds=300, microseconds=1), 90.0),
    ]
    result = ind.compute_indicators(to_frame(rows)).sort_values("ts").reset_index(drop=True)
    assert result.loc[2, "change_5min"] == pytest.approx(21.0, rel=1e-12)  # ref at exactly -300 s
    assert result.loc[2, "change_1min"] == pytest.approx(10.0, rel=1e-12)  # ref at exactly -60 s
    assert result.loc[2, "sma_5min"] == pytest.approx((110 + 121) / 2, rel=1e-12)  # t0 excluded
    assert result.loc[3, "change_5min"] == pytest.approx(-10.0, rel=1e-12)
    assert_matches_reference(result, reference_indicators(rows))


def test_volatility_is_accurate_for_nearly_equal_prices():
    """No catastrophic cancellation: tiny spread on a large price, long history before it."""
    rows = [
        ("big", "BIG", BASE + timedelta(seconds=30 * i), 65_000.0 + 1e-7 * (i % 3))
        for i in range(400)
    ]
    rows += [("big", "BIG", BASE + timedelta(seconds=30 * 400 + i), 1e-9 * i) for i in (1, 2, 3)]
    result = ind.compute_indicators(to_frame(rows))
    assert_matches_reference(result, reference_indicators(rows))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_equals_full_recompute(seed):
    """Refreshing consecutive periods from stored state equals one full recompute."""
    rows = irregular_rows(seed=seed, coins=6, polls=140)
    raw = to_frame(rows)
    full = ind.compute_indicators(raw)
    t_min, t_max = raw["ts"].min(), raw["ts"].max()
    rng = random.Random(seed)
    cuts = sorted(t_min + (t_max - t_min) * rng.random() for _ in range(6)) + [
        raw["ts"].sort_values().iloc[40]
    ]  # one cut exactly on an observation
    bounds = [t_min - pd.Timedelta(days=1), *sorted(cuts), t_max + pd.Timedelta(seconds=1)]
    stored = None
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        window = raw[(raw["ts"] >= ind.lookback_start(start)) & (raw["ts"] < end)]
        state = None if stored is None else ind.state_from_indicators(stored, start)
        part = ind.compute_indicators(window, state, start=start, end=end)
        assert ((part["ts"] >= start) & (part["ts"] < end)).all()
        stored = part if stored is None else pd.concat([stored, part], ignore_index=True)
    assert len(stored) == len(full)
    assert_matches_reference(stored, reference_indicators(rows))
    key = ["coin_id", "ts"]
    a = stored.sort_values(key).reset_index(drop=True)
    b = full.sort_values(key).reset_index(drop=True)
    assert (a["coin_id"] == b["coin_id"]).all() and (a["ts"] == b["ts"]).all()
    for col in ("change_1min", "change_5min", "sma_5min", "ema_3min", "volatility_5min"):
        np.testing.assert_allclose(a[col], b[col], rtol=REL, atol=0, equal_nan=True)


@pytest.mark.parametrize("seed", [1, 2])
def test_poll_by_poll_append_and_late_rows_equal_full_recompute(seed):
    """The live refresh's math: every poll computed alone from the stored state (+ lookback),
    then late rows (older than the newest stored) recomputed from their own ``ts`` on: equal to
    one full recompute of everything, and to the reference."""
    rows = irregular_rows(seed=seed, coins=6, polls=90)
    rng = random.Random(seed)
    late = [r for r in rows if rng.random() < 0.03 and r[0] not in ("solo", "flat")]
    on_time = [r for r in rows if r not in late]
    raw_on_time = to_frame(on_time)
    stored = None
    for ts in sorted(raw_on_time["ts"].unique()):  # one refresh per poll, [ts, newest]
        window = raw_on_time[
            (raw_on_time["ts"] >= ind.lookback_start(ts)) & (raw_on_time["ts"] <= ts)
        ]
        state = None if stored is None else ind.state_from_indicators(stored, ts)
        part = ind.compute_indicators(window, state, start=ts)
        assert (part["ts"] == ts).all()
        stored = part if stored is None else pd.concat([stored, part], ignore_index=True)
    assert_matches_reference(stored, reference_indicators(on_time))
    # late rows: recompute [oldest late ts, end) from the state before it
    raw = to_frame(rows)
    frm = min(pd.Timestamp(r[2]) for r in late)
    window = raw[raw["ts"] >= ind.lookback_start(frm)]
    redo = ind.compute_indicators(window, ind.state_from_indicators(stored, frm), start=frm)
    spliced = pd.concat([stored[stored["ts"] < frm], redo], ignore_index=True)
    assert len(redo) < len(rows)  # only what the late rows affect
    assert_matches_reference(spliced, reference_indicators(rows))
    full = ind.compute_indicators(raw).sort_values(["coin_id", "ts"]).reset_index(drop=True)
    spliced = spliced.sort_values(["coin_id", "ts"]).reset_index(drop=True)
    assert (full["coin_id"] == spliced["coin_id"]).all() and (full["ts"] == spliced["ts"]).all()
    for col in ("change_1min", "change_5min", "sma_5min", "ema_3min", "volatility_5min"):
        np.testing.assert_allclose(spliced[col], full[col], rtol=REL, atol=0, equal_nan=True)


def test_window_of_some_rows_equals_the_same_rows_of_all_windows():
    """``window_mean_std(..., at=rows)`` (the live path computes only its new rows) gives
    exactly - bit for bit - those rows of the windows of every row."""
    rng = np.random.default_rng(11)
    t = np.cumsum(rng.integers(1, 90, 400)).astype(np.int64) * 1_000_000_000
    p = 10.0 ** rng.uniform(-4, 5, 400)
    p[100:140] = 3.0  # a flat stretch: mean = p, std = 0 exactly
    mean, std = ind.window_mean_std(t, p)
    for at in (np.arange(400), np.flatnonzero(rng.random(400) < 0.2), np.array([0, 139, 399])):
        some_mean, some_std = ind.window_mean_std(t, p, at=at)
        np.testing.assert_array_equal(some_mean, mean[at])
        np.testing.assert_array_equal(some_std, std[at])
    assert ind.window_mean_std(t, p, at=np.array([], dtype=np.int64))[0].size == 0


def _window_one_by_one(t, p, i: int) -> tuple[float, float]:
    """Row ``i``'s window in plain Python, as window_mean_std documents it: summed from the
    newest member back, two-pass; a flat window gives exactly ``(p_i, 0)``."""
    lo = int(np.searchsorted(t, t[i] - ind.WINDOW_SECONDS * 1_000_000_000, side="right"))
    members = [float(p[k]) for k in range(i, lo - 1, -1)]
    total = 0.0
    for value in members:
        total += value
    mean = total / len(members)
    squares = 0.0
    for value in members:
        squares += (value - mean) * (value - mean)
    if min(members) == max(members):
        return members[0], (0.0 if len(members) >= 2 else math.nan)
    return mean, math.sqrt(squares / (len(members) - 1))


@pytest.mark.parametrize("block_slots", [ind.WINDOW_BLOCK_SLOTS, 64])
def test_windows_equal_a_plain_sum_from_the_newest_back_bit_for_bit(monkeypatch, block_slots):
    """Every window's mean and std are those of the plain two-pass sums over its members from
    the newest back - the same operations in the same order, so the same bits - with windows
    of 1 to 150 members and flat stretches, whole or in blocks of rows."""
    monkeypatch.setattr(ind, "WINDOW_BLOCK_SLOTS", block_slots)
    rng = np.random.default_rng(23)
    for gaps in (3, 30, 400):
        t = np.cumsum(rng.integers(1, gaps, 600)).astype(np.int64) * 1_000_000_000
        p = 10.0 ** rng.uniform(-6, 6, 600)
        p[200:260] = 0.5
        mean, std = ind.window_mean_std(t, p)
        expected = [_window_one_by_one(t, p, i) for i in range(len(t))]
        np.testing.assert_array_equal(mean, [m for m, _ in expected])
        np.testing.assert_array_equal(std, [s for _, s in expected])


def test_ema_long_history_and_huge_gaps():
    """The blocked closed-form EMA matches the recursion over days, across huge gaps."""
    rng = random.Random(5)
    t, rows, price = BASE, [], 1234.5
    for _ in range(6000):
        t += timedelta(seconds=rng.choice([30, 30, 31, 29]) if rng.random() > 0.002 else 86400)
        price *= math.exp(rng.gauss(0, 0.002))
        rows.append(("btc", "BTC", t, price))
    frame = to_frame(rows)
    result = ind.compute_indicators(frame).sort_values("ts")
    ref = reference_indicators(rows)
    expected = [ref[("btc", r[2])]["ema_3min"] for r in rows]
    np.testing.assert_allclose(result["ema_3min"], expected, rtol=REL, atol=0)


def test_naive_timestamps_and_duplicate_keys():
    rows = irregular_rows(seed=11, coins=3, polls=30)
    frame = to_frame(rows)
    naive = frame.assign(ts=frame["ts"].dt.tz_localize(None))
    dup = pd.concat([naive.iloc[:5].assign(current_price=-1.0), naive], ignore_index=True)
    result = ind.compute_indicators(dup)  # duplicates (id, ts): the last row wins
    assert result["ts"].dt.tz is None and len(result) == len(rows)
    result["ts"] = result["ts"].dt.tz_localize("UTC")
    assert_matches_reference(result, reference_indicators(rows))


def test_empty_input():
    empty = to_frame([]).astype({"current_price": float})
    assert ind.compute_indicators(empty).empty
    assert ind.compute_movers(ind.compute_indicators(empty)).empty


def test_movers_match_reference(rows, reference):
    # several coins share a change_5min at one snapshot: ties go by coin_id
    tie_rows = [
        (c, c.upper(), BASE + timedelta(seconds=s), p)
        for c in ("tie-b", "tie-a", "tie-c")
        for s, p in ((0, 2.0), (300, 3.0))
    ]
    all_rows = rows + tie_rows
    ref = reference_indicators(all_rows)
    movers = ind.compute_movers(ind.compute_indicators(to_frame(all_rows)))
    assert list(movers.columns) == list(ind.MOVER_COLUMNS)
    got = sorted(
        (m.snapshot_ts.to_pydatetime(), m.direction, m.rank, m.coin_id, m.change_5min)
        for m in movers.itertuples(index=False)
    )
    exp = reference_movers(ref)
    assert [g[:4] for g in got] == [e[:4] for e in exp]
    for g, e in zip(got, exp, strict=True):
        assert math.isclose(g[4], e[4], rel_tol=REL)
    tie_ts = BASE + timedelta(seconds=300)
    at_tie = [g for g in got if g[0] == tie_ts and g[1] == "gainer"]
    assert [g[3] for g in at_tie][:3] == ["tie-a", "tie-b", "tie-c"]
    # fewer than 5 eligible coins -> fewer rows
    counts = movers.groupby(["snapshot_ts", "direction"]).size()
    assert counts.max() == 5 and counts.min() < 5


@pytest.mark.parametrize("seed", range(20))
def test_movers_of_shuffled_rows_with_many_ties(seed):
    """compute_movers on rows in any order, with changes drawn from a few values (ties, 0.0 and
    -0.0, NULLs), equals a plain sort per snapshot; rows come ordered by snapshot, direction,
    rank, with the input's values and types."""
    rng = random.Random(seed)
    rows = [
        (
            BASE + timedelta(seconds=30 * t),
            f"coin-{rng.randrange(1000):03d}-{c}",
            rng.choice(["s", None]),
            rng.choice([None, 0.0, -0.0, 1.5, -1.5, 2.25, rng.uniform(-9, 9)]),
            rng.uniform(0.1, 9),
        )
        for t in range(rng.randrange(1, 5))
        for c in range(rng.randrange(0, 14))
    ]
    rng.shuffle(rows)
    frame = pd.DataFrame(rows, columns=["ts", "coin_id", "symbol", "change_5min", "price"])
    frame = frame.astype({"change_5min": "float64", "price": "float64"})
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    movers = ind.compute_movers(frame)
    expected = []
    for ts in sorted({r[0] for r in rows}):
        items = [(r[1], r[3]) for r in rows if r[0] == ts and r[3] is not None]
        for direction, sign in (("gainer", -1), ("loser", 1)):
            ranked = sorted(items, key=lambda x, s=sign: (s * x[1], x[0]))[: ind.TOP_N]
            expected += [(ts, direction, k + 1, coin, v) for k, (coin, v) in enumerate(ranked)]
    got = [
        (m.snapshot_ts.to_pydatetime(), m.direction, m.rank, m.coin_id, m.change_5min)
        for m in movers.itertuples(index=False)
    ]
    assert got == expected
    assert list(movers.index) == list(range(len(movers)))
    assert str(movers["snapshot_ts"].dtype) == "datetime64[ns, UTC]"
    assert movers["rank"].dtype == np.int64
    by_coin = {(r[0], r[1]): (r[2], r[4]) for r in rows}
    assert all(
        by_coin[(m.snapshot_ts.to_pydatetime(), m.coin_id)] == (m.symbol, m.price)
        for m in movers.itertuples(index=False)
    )


def test_all_coins_at_once_and_coin_by_coin_agree_including_the_overflow_fallback():
    """Coins are computed together (one key axis); ranges too long for int64 keys fall back to
    the per-coin functions. Both match the reference."""
    rows = irregular_rows(seed=9, coins=7, polls=120)
    raw = to_frame(rows)
    state = ind.state_from_indicators(ind.compute_indicators(raw), BASE + timedelta(minutes=40))
    start = BASE + timedelta(minutes=40)
    window = raw[raw["ts"] >= ind.lookback_start(start)]
    together = ind.compute_indicators(window, state, start=start)
    by_coin = pd.concat(
        [
            ind.compute_indicators(group, state[state["coin_id"] == coin], start=start)
            for coin, group in window.groupby("id")
        ],
        ignore_index=True,
    )
    keys = {k for k in reference_indicators(rows) if k[1] >= start}
    assert_matches_reference(together, reference_indicators(rows), keys)
    assert_matches_reference(by_coin, reference_indicators(rows), keys)
    # ~226 years between two observations: keys would overflow, the per-coin path takes over
    far = [("a", "A", BASE, 1.0), ("a", "A", BASE.replace(year=2250), 2.0), ("b", "B", BASE, 3.0)]
    assert_matches_reference(ind.compute_indicators(to_frame(far)), reference_indicators(far))


def test_live_batch_keeps_the_last_duplicate_skips_late_rows_and_spans_centuries():
    """One ``advance_indicators`` batch with a coin polled twice at the same time (the later
    message wins, as in a full recompute), a row older than its coin's state (skipped, the
    exact recompute owns it), a row without a price (dropped), a coin the state does not know
    yet and one left out; then observations two centuries later (the coin-by-coin path):
    every computed row equals one full recompute of what was kept, in ``coin_id, ts`` order."""
    t0 = pd.Timestamp("2026-03-01T00:00:00.5Z")
    first = [("b", "B", t0, 2.0), ("a", "A", t0, 1.0), ("c", "C", t0, 5.0)]
    state = ind.advance_indicators(ind.LiveState.empty(), to_frame(first))[1]
    t1, t2 = t0 + pd.Timedelta(seconds=30), t0 + pd.Timedelta(seconds=61)
    batch = pd.DataFrame(
        [
            ("a", "A", t1, 1.5),
            ("a", "A", t1, 1.6),  # the same (coin, ts) again: this one counts
            ("b", "B", t0 - pd.Timedelta(seconds=30), 9.0),  # older than b's state: skipped
            ("b", "B", t2, 2.2),
            ("b", "B", t1, float("nan")),  # no price: dropped
            ("d", "D", t1, 7.0),  # a new coin; c is left out of this batch
            ("d", "D", t2, 7.7),
        ],
        columns=["id", "symbol", "ts", "current_price"],
    )
    rows, state, skipped = ind.advance_indicators(state, batch)
    assert skipped[["id", "current_price"]].values.tolist() == [["b", 9.0]]
    assert list(zip(rows["coin_id"], rows["ts"], strict=True)) == [
        ("a", t1),
        ("b", t2),
        ("d", t1),
        ("d", t2),
    ]
    kept = [*first, ("a", "A", t1, 1.6), ("b", "B", t2, 2.2), ("d", "D", t1, 7.0)]
    kept.append(("d", "D", t2, 7.7))
    full = ind.compute_indicators(to_frame(kept))
    diff = ind.compare_indicator_rows(rows, full, tol=REL)
    assert diff.attrs["compared"] == len(rows) and diff.empty, diff
    assert rows.loc[rows["coin_id"] == "a", "price"].tolist() == [1.6]
    assert sorted(state.last.index) == ["a", "b", "c", "d"]
    # two centuries on: int64 keys would overflow, the rows come coin by coin, still exact
    far = t2.replace(year=2250)
    later = [
        ("a", "A", far, 3.0),
        ("d", "D", far, 8.0),
        ("d", "D", far + pd.Timedelta(seconds=30), 8.8),
    ]
    rows, state, _ = ind.advance_indicators(state, to_frame(later))
    full = ind.compute_indicators(to_frame([*kept, *later]))
    diff = ind.compare_indicator_rows(rows, full, tol=REL)
    assert diff.attrs["compared"] == len(later) == len(rows) and diff.empty, diff
    assert rows["coin_id"].tolist() == ["a", "d", "d"]
    # what is kept is what a restart rebuilds from the rows so far
    rebuilt = ind.LiveState.from_rows(full)
    pd.testing.assert_frame_equal(state.obs, rebuilt.obs)
    pd.testing.assert_frame_equal(state.last, rebuilt.last)


@pytest.mark.parametrize("seed", [7, 8])
def test_live_batches_with_new_coins_jumps_and_gaps_equal_full_recompute(seed):
    """``advance_indicators`` batch by batch - coins appearing mid-stream next to known ones,
    40x price jumps, gaps of hours, millisecond poll times (not representable as float64 ns) -
    equals one full recompute within 1e-9 relative: the EMA's previous time stays exact."""
    rng = random.Random(seed)
    t = pd.Timestamp("2026-03-01T00:00:00.713Z")
    coins, prices, polls = ["alpha"], {}, []
    for k in range(240):
        t += pd.Timedelta(milliseconds=rng.choice([29_000, 30_000, 31_000]) + rng.randint(1, 999))
        if rng.random() < 0.03:
            t += pd.Timedelta(hours=rng.choice([1, 5]), milliseconds=rng.randint(1, 999))
        if k % 15 == 7:
            coins.append(f"coin-{k}")  # a new coin, in a batch with known ones
        poll = []
        for coin in coins:
            if rng.random() < 0.1:
                continue  # absent from this poll
            price = prices.get(coin, 10.0 ** rng.uniform(-3, 4)) * math.exp(rng.gauss(0, 0.003))
            if rng.random() < 0.03:
                price *= 40.0 if rng.random() < 0.5 else 1 / 40.0
            prices[coin] = price
            poll.append((coin, coin[:3].upper(), t, price))
        polls.append(poll)
    rows = [row for poll in polls for row in poll]
    full = ind.compute_indicators(to_frame(rows))
    state, live, i = ind.LiveState.empty(), [], 0
    while i < len(polls):
        n = rng.choice([1, 1, 2, 3, 7])  # several polls per batch, sometimes
        batch = to_frame([row for poll in polls[i : i + n] for row in poll])
        out, state, skipped = ind.advance_indicators(state, batch)
        assert skipped.empty
        live.append(out)
        i += n
    live = pd.concat(live, ignore_index=True)
    assert len(live) == len(full) == len(rows)
    diff = ind.compare_indicator_rows(live, full, tol=REL)
    assert diff.attrs["compared"] == len(full)
    assert diff.empty, diff.head()
    assert diff.attrs["max_diff"] <= REL
    # the state kept batch by batch is the one rebuilt from the table on a restart
    rebuilt = ind.LiveState.from_rows(full)
    kept = state.obs.sort_values(["coin_id", "t"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, rebuilt.obs.reset_index(drop=True))
    pd.testing.assert_series_equal(state.last["t"].sort_index(), rebuilt.last["t"].sort_index())
