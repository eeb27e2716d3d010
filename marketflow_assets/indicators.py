"""Indicator math: pure, vectorised functions with the formulas of ``docs/INDICATORS.md``; no I/O.

Per coin, the observations are ``(t_i, p_i) = (ts, current_price)`` ordered by ``t``:

* ``change_1min(t_i) = 100 * (p_i / p_ref - 1)``, ``p_ref`` = price of the latest observation with
  ``t <= t_i - 60 s`` (NULL when there is none). ``change_5min`` likewise with 300 s.
* ``sma_5min(t_i)`` = arithmetic mean of ``p_j`` over ``t_j`` in ``(t_i - 300 s, t_i]``.
* ``volatility_5min(t_i)`` = sample standard deviation (ddof = 1) over the same window; NULL when
  the window holds fewer than 2 observations.
* ``ema_3min``: time-decay EMA with ``tau = 180 s`` seeded by the coin's first observation:
  ``e_1 = p_1``; ``e_i = e_{i-1} + alpha_i (p_i - e_{i-1})``,
  ``alpha_i = 1 - exp(-(t_i - t_{i-1}) / tau)``.
* movers: per snapshot ``ts``, among coins with non-NULL ``change_5min``, the 5 highest
  (``gainer``, rank 1 = highest) and the 5 lowest (``loser``, rank 1 = lowest); ties by
  ``coin_id`` ascending.

Incremental computation. To compute the rows of a period ``[start, end)`` a caller needs only

* the raw rows with ``ts`` in ``[start - 300 s, end)`` (:func:`lookback_start`), and
* per coin, a :data:`STATE_COLUMNS` row taken from the stored results: the last stored
  observation with ``ts < start - 300 s`` (``ref_ts``, ``ref_price``: the ``p_ref`` of
  ``change_5min``/``change_1min`` across gaps longer than the lookback) and the last stored
  ``(ts, ema_3min)`` with ``ts < start`` (``ema_ts``, ``ema_3min``: EMA continuation).

The state observation is prepended to the coin's rows as an ordinary observation, and the EMA
continues from the stored value for the rows after ``ema_ts``; every window then sees exactly the
observations a full recompute would see, so results equal a full recompute up to rounding.

Numerics. Timestamps are compared as integer nanoseconds (exact window edges). Window mean and
standard deviation are computed directly over each window's members, two-pass (mean first, then
the sum of squared deviations), so there is no cancellation between running sums; a window whose
prices are all equal gets exactly ``sma = p`` and ``volatility = 0``. The EMA recursion
``e_i = d_i e_{i-1} + (1 - d_i) p_i`` (``d_i = exp(-dt_i / tau)``) is solved in closed form per
block of at most ``EMA_BLOCK_TAUS * tau`` seconds with a cumulative sum of positive terms
(no cancellation, no overflow), carrying the value from block to block.

Speed. :func:`compute_indicators` computes all coins at once (:func:`_all_coins`: one key axis
on which coins lie far apart, per-(coin, block) cumulative sums for the EMA) rather than one
Python call per coin (what makes a whole-market refresh of 15,000 coins cheap).
:func:`coin_indicators` is the same math for one coin, used when the keys
would not fit in int64 (ranges of centuries) and by tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from marketflow_assets import schema

TAU_SECONDS = 180.0
CHANGE_1MIN_SECONDS = 60
CHANGE_5MIN_SECONDS = 300
#: ``code_version`` of ``price_indicators`` / ``market_movers``: bump when a formula (or the
#: rows it produces) changes, so Dagster marks every materialized partition stale.
INDICATOR_FORMULA_VERSION = "1"
MOVER_FORMULA_VERSION = "1"
WINDOW_SECONDS = 300
LOOKBACK_SECONDS = max(CHANGE_5MIN_SECONDS, WINDOW_SECONDS)
EMA_BLOCK_TAUS = 64.0
TOP_N = 5

_NS = 1_000_000_000

# Column lists come from schema.py: raw input columns, output columns in the order of the
# ``price_indicators`` / ``market_movers`` tables, per-coin prior state (see module docstring).
RAW_INPUT_COLUMNS = schema.INDICATOR_INPUT_COLUMNS
INDICATOR_COLUMNS = schema.column_names("price_indicators")
STATE_COLUMNS = schema.INDICATOR_STATE_COLUMNS
MOVER_COLUMNS = schema.column_names("market_movers")


def lookback_start(start: pd.Timestamp) -> pd.Timestamp:
    """First raw ``ts`` needed to compute rows from ``start`` on (``start - 300 s``)."""
    return pd.Timestamp(start) - pd.Timedelta(seconds=LOOKBACK_SECONDS)


def to_ns(values: Any) -> np.ndarray:
    """Timestamps (tz-aware, or naive meaning UTC; array-like or scalar) as int64 ns since epoch."""
    if isinstance(values, int | np.integer):
        return np.int64(values)
    if isinstance(values, pd.Timestamp | np.datetime64 | str | datetime):
        ts = pd.Timestamp(values)
        ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
        return np.int64(ts.as_unit("ns").value)
    idx = pd.DatetimeIndex(values)
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    return idx.as_unit("ns").asi8.astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------
# One coin, numpy arrays.
# --------------------------------------------------------------------------------------------
def price_change(t: np.ndarray, p: np.ndarray, seconds: int) -> np.ndarray:
    """``100 * (p_i / p_ref - 1)`` with ``p_ref`` the latest observation at ``t <= t_i - seconds``.

    ``t`` (int64 ns) must be strictly increasing. NaN where no such observation exists.
    """
    j = np.searchsorted(t, t - np.int64(seconds) * _NS, side="right") - 1
    out = np.full(len(t), np.nan)
    ok = j >= 0
    out[ok] = 100.0 * (p[ok] / p[j[ok]] - 1.0)
    return out


#: Rows per block of :func:`window_mean_std`, as a number of window slots (rows x the widest
#: window): bounds its temporary matrices (a few of 2**18 values, 2 MiB each).
WINDOW_BLOCK_SLOTS = 1 << 18


def _sum_slots(slots: np.ndarray) -> np.ndarray:
    """Per column of ``slots`` (slot, row), the sum of its slots added in slot order: slot 0,
    then 1, ... (the order :func:`window_mean_std` documents, which a pairwise sum would not
    keep)."""
    total = slots[0].copy()
    for k in range(1, len(slots)):
        total += slots[k]
    return total


def window_mean_std(
    t: np.ndarray, p: np.ndarray, seconds: int = WINDOW_SECONDS, at: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (ddof=1) of ``p_j`` over ``t_j`` in ``(t_i - seconds, t_i]``.

    Computed directly over each window, two-pass, so the result is as accurate as a per-window
    reference: per row, its window's prices from the newest back are summed in that order, the
    mean taken, then the squared deviations summed the same way (vectorised over rows: slot
    ``k`` of every window at once, 0.0 where a window is shorter). Windows whose prices are all
    equal give exactly ``mean = p_i`` and ``std = 0``. Std is NaN for windows with fewer than
    2 observations. ``at`` (row positions, optional): only those rows' windows are computed and
    returned (the same operations in the same order: the same values, bit for bit).
    """
    if at is None:
        at = np.arange(len(t))
    if len(at) == 0:
        return np.empty(0), np.empty(0)
    lo = np.searchsorted(t, t[at] - np.int64(seconds) * _NS, side="right")
    count = at - lo + 1
    width = int(count.max())
    back = np.arange(width)[:, None]  # slot k: the observation k rows before the window's own
    mean = np.empty(len(at))
    std = np.empty(len(at))
    step = max(1, WINDOW_BLOCK_SLOTS // width)
    for start in range(0, len(at), step):
        rows, n = at[start : start + step], count[start : start + step]
        inside = back < n  # (slot, row)
        # outside its window a row's slot holds its own price (neutral for the low and high)
        values = p[np.where(inside, rows - back, rows)]
        own = values[0]
        low, high = values.min(axis=0), values.max(axis=0)
        block_mean = _sum_slots(np.where(inside, values, 0.0)) / n
        deviations = np.where(inside, values - block_mean, 0.0)
        squares = _sum_slots(deviations * deviations)
        with np.errstate(invalid="ignore", divide="ignore"):
            block_std = np.sqrt(squares / (n - 1))
        flat = low == high
        block_mean[flat] = own[flat]
        block_std[flat] = 0.0
        block_std[n < 2] = np.nan
        mean[start : start + step], std[start : start + step] = block_mean, block_std
    return mean, std


def ema(
    t: np.ndarray,
    p: np.ndarray,
    prev_ts: int | None = None,
    prev_value: float | None = None,
    tau_seconds: float = TAU_SECONDS,
) -> np.ndarray:
    """Time-decay EMA (``ema_3min``, docs/INDICATORS.md) of ``p`` at times ``t`` (int64 ns,
    increasing).

    Seeded by the first observation (``e_1 = p_1``), or, when ``prev_ts``/``prev_value`` are
    given (the EMA at an earlier time ``prev_ts < t_1``), continued from that value.
    """
    n_rows = len(t)
    out = np.empty(n_rows)
    if n_rows == 0:
        return out
    if prev_ts is None or prev_value is None or not np.isfinite(prev_value):
        out[0] = p[0]
        carry, carry_t, i = float(p[0]), int(t[0]), 1
    else:
        carry, carry_t, i = float(prev_value), int(prev_ts), 0
    block_ns = np.int64(EMA_BLOCK_TAUS * tau_seconds * _NS)
    while i < n_rows:
        j = int(np.searchsorted(t, t[i] + block_ns, side="right"))
        tb = t[i:j]
        steps = np.diff(tb, prepend=np.int64(carry_t)) / _NS
        alpha = -np.expm1(-steps / tau_seconds)  # = 1 - exp(-dt / tau), accurately
        first = carry + alpha[0] * (p[i] - carry)
        x = (tb - tb[0]) / _NS / tau_seconds  # in [0, EMA_BLOCK_TAUS]
        # e_k = exp(-x_k) * (e_i + sum_{m=i+1..k} alpha_m p_m exp(x_m)) (closed form of the
        # recursion inside the block; all terms positive, so the cumsum is well conditioned).
        terms = alpha[1:] * p[i + 1 : j] * np.exp(x[1:])
        acc = np.empty(j - i)
        acc[0] = 0.0
        np.cumsum(terms, out=acc[1:])
        block = np.exp(-x) * (first + acc)
        block[0] = first
        out[i:j] = block
        carry, carry_t, i = float(block[-1]), int(tb[-1]), j
    return out


def coin_indicators(
    t: np.ndarray,
    p: np.ndarray,
    state: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """All indicators of one coin's observations (``t`` int64 ns strictly increasing).

    ``state`` (optional) holds ``ref_ts``/``ref_price`` (an earlier observation, prepended as an
    ordinary observation) and ``ema_ts``/``ema_3min`` (stored EMA to continue from; rows at or
    before ``ema_ts`` get NaN EMA since they are not recomputed). Returns arrays aligned with
    ``t``.
    """
    state = state or {}
    ref_ts, ref_price = _opt_ns(state.get("ref_ts")), _opt_float(state.get("ref_price"))
    ema_ts, ema_value = _opt_ns(state.get("ema_ts")), _opt_float(state.get("ema_3min"))
    offset = 0
    if ref_ts is not None and ref_price is not None and (len(t) == 0 or ref_ts < t[0]):
        t = np.concatenate(([np.int64(ref_ts)], t))
        p = np.concatenate(([ref_price], p))
        offset = 1
    mean, std = window_mean_std(t, p, WINDOW_SECONDS)
    result = {
        "change_1min": price_change(t, p, CHANGE_1MIN_SECONDS),
        "change_5min": price_change(t, p, CHANGE_5MIN_SECONDS),
        "sma_5min": mean,
        "volatility_5min": std,
    }
    ema_out = np.full(len(t), np.nan)
    if ema_ts is not None and ema_value is not None:
        first = int(np.searchsorted(t, ema_ts, side="right"))
        ema_out[first:] = ema(t[first:], p[first:], ema_ts, ema_value)
    else:
        ema_out[:] = ema(t, p)
    result["ema_3min"] = ema_out
    return {name: values[offset:] for name, values in result.items()}


def _opt_ns(value: Any) -> int | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    return int(to_ns(value))


def _opt_float(value: Any) -> float | None:
    if value is None or pd.isna(value):
        return None
    return float(value)


# --------------------------------------------------------------------------------------------
# DataFrames (one or many coins).
# --------------------------------------------------------------------------------------------
def compute_indicators(
    raw: pd.DataFrame,
    state: pd.DataFrame | Mapping[str, Mapping[str, Any]] | None = None,
    start: Any = None,
    end: Any = None,
) -> pd.DataFrame:
    """Indicators for the raw observations in ``raw`` (one or many coins).

    ``raw`` has the raw Parquet columns ``id``, ``symbol``, ``ts``, ``current_price`` (``ts``
    tz-aware or naive UTC). Rows with a NULL price are ignored; duplicate ``(id, ts)`` keep the
    last row. ``state`` is per-coin prior state (DataFrame with :data:`STATE_COLUMNS` or a mapping
    coin_id -> dict of those fields), ``None`` for a computation from the start of history.
    Only rows with ``start <= ts < end`` are returned (all when ``None``); earlier rows serve as
    lookback. Returns :data:`INDICATOR_COLUMNS`, sorted by ``coin_id, ts``; ``ts`` keeps the input
    dtype.
    """
    return _compute(raw, state, start, end)[0]


def _compute(
    raw: pd.DataFrame,
    state: Any = None,
    start: Any = None,
    end: Any = None,
    emit: np.ndarray | None = None,
) -> tuple[pd.DataFrame, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """:func:`compute_indicators`, and the observations it computed from: ``(coin_id, t, price)``
    arrays sorted by coin and time (duplicates dropped; None when there were none). ``emit``
    (bool per row of ``raw``, optional): only those rows are computed and returned, the others
    serving as lookback only (the live path's retained observations)."""
    usable = (raw["current_price"].notna() & raw["ts"].notna()).to_numpy()
    if not usable.all():
        raw = raw.loc[usable]
        emit = None if emit is None else emit[usable]
    if raw.empty:
        return _empty_indicators(raw["ts"].dtype), None
    t_all = to_ns(raw["ts"])
    codes, _ = pd.factorize(raw["id"], sort=True)  # integer coin codes, in coin_id order
    order = _sort_order(codes, t_all)
    t_all, codes = t_all[order], codes[order]
    # duplicates (id, ts): keep the last one
    keep = _last_of_each_key(codes, t_all)
    order, t_all, codes = order[keep], t_all[keep], codes[keep]
    prices = raw["current_price"].to_numpy(dtype=np.float64)[order]
    id_values = raw["id"].to_numpy()

    boundaries = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    starts = np.concatenate(([0], boundaries))
    stops = np.concatenate((boundaries, [len(order)]))
    coin_ids = id_values[order[starts]]
    mask = np.ones(len(order), dtype=bool) if emit is None else emit[order]
    if start is not None:
        mask &= t_all >= to_ns(start)
    if end is not None:
        mask &= t_all < to_ns(end)
    columns = _all_coins(codes, t_all, prices, starts, _state_arrays(state, coin_ids), mask)
    if columns is None:  # keys would overflow int64 (very long ranges): coin by coin
        states = _state_mapping(state)
        coin_states = [states.get(coin) for coin in coin_ids]
        every = {name: np.empty(len(order)) for name in INDICATOR_COLUMNS[4:]}
        for a, b, coin_state in zip(starts, stops, coin_states, strict=True):
            values = coin_indicators(t_all[a:b], prices[a:b], coin_state)
            for name, arr in values.items():
                every[name][a:b] = arr
        columns = {name: values[mask] for name, values in every.items()}

    rows = order[mask]
    frame = pd.DataFrame(
        {
            "coin_id": id_values[rows],
            "symbol": raw["symbol"].to_numpy()[rows],
            "ts": raw["ts"].iloc[rows].reset_index(drop=True),
            "price": prices[mask],
            **columns,
        }
    )
    return frame, (id_values[order], t_all, prices)


def _all_coins(
    codes: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    starts: np.ndarray,
    state_arrays: tuple[np.ndarray, ...],
    want: np.ndarray,
) -> dict[str, np.ndarray] | None:
    """:func:`coin_indicators` of every coin at once (rows sorted by coin, then ``t``), for the
    rows where ``want`` is set (the others are lookback only; in :data:`INDICATOR_COLUMNS`' order).

    The same formulas, vectorised across coins instead of a Python loop per coin: each coin's
    state observation is inserted before its rows, rows get the key ``k = coin * span + (t -
    t_min)`` with ``span`` wider than any coin's time range plus the lookback, so the window and
    reference searches of :func:`price_change` / :func:`window_mean_std` on ``k`` never reach into
    another coin (a reference that would is discarded). The EMA runs the closed form of
    :func:`ema` per (coin, block of ``EMA_BLOCK_TAUS`` tau) with per-group cumulative sums, block
    by block, carrying each coin's value. Returns None when the keys would not fit in int64.
    """
    n = len(t)
    n_coins = len(starts)
    coin_of_row = np.repeat(np.arange(n_coins), np.diff(np.append(starts, n)))
    # 1. state: the reference observation (prepended) and the EMA to continue from, per coin
    ref_t, ref_p, ema_t, ema_v, has_ema = state_arrays
    ref_p = np.where(ref_t < t[starts], ref_p, np.nan)  # only a strictly earlier observation
    with_ref = np.flatnonzero(~np.isnan(ref_p))
    extra = np.zeros(n + len(with_ref), dtype=bool)
    if len(with_ref):
        # position of each coin's first row after the insertions before it
        insert_at = starts[with_ref] + np.arange(len(with_ref))
        extra[insert_at] = True
        tt = np.empty(len(extra), dtype=np.int64)
        pp = np.empty(len(extra))
        cc = np.empty(len(extra), dtype=np.int64)
        tt[insert_at], pp[insert_at], cc[insert_at] = ref_t[with_ref], ref_p[with_ref], with_ref
        tt[~extra], pp[~extra], cc[~extra] = t, p, coin_of_row
    else:
        tt, pp, cc = t, p, coin_of_row
    m = len(tt)
    seg_start = np.flatnonzero(np.concatenate(([True], cc[1:] != cc[:-1])))
    row_seg_start = np.repeat(seg_start, np.diff(np.append(seg_start, m)))
    # 2. keys: coins far apart on one axis
    t_min = int(tt.min())
    rel = tt - np.int64(t_min)
    span = int(rel.max()) + 2 * LOOKBACK_SECONDS * _NS + 1
    if n_coins * span >= 2**62:
        return None
    key = cc * np.int64(span) + rel
    at = np.flatnonzero(~extra)[want]  # the wanted rows' positions among the observations
    at_p, at_seg_start = pp[at], row_seg_start[at]
    result = {}
    for name, seconds in (
        ("change_1min", CHANGE_1MIN_SECONDS),
        ("change_5min", CHANGE_5MIN_SECONDS),
    ):
        j = np.searchsorted(key, key[at] - np.int64(seconds) * _NS, side="right") - 1
        out = np.full(len(at), np.nan)
        ok = j >= at_seg_start
        out[ok] = 100.0 * (at_p[ok] / pp[j[ok]] - 1.0)
        result[name] = out
    result["sma_5min"], result["volatility_5min"] = window_mean_std(key, pp, WINDOW_SECONDS, at)
    result["ema_3min"] = _ema_all(cc, tt, pp, row_seg_start, ema_t, ema_v, has_ema)[at]
    return {name: result[name] for name in INDICATOR_COLUMNS[4:]}


def _ema_all(
    coin: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    row_seg_start: np.ndarray,
    ema_t: np.ndarray,
    ema_v: np.ndarray,
    has_ema: np.ndarray,
    tau_seconds: float = TAU_SECONDS,
) -> np.ndarray:
    """:func:`ema` of every coin at once (see :func:`_all_coins`); NaN at or before ``ema_t``."""
    m = len(t)
    out = np.full(m, np.nan)
    cont = has_ema[coin]
    active = ~cont | (t > ema_t[coin])  # rows that get an EMA
    first_row = np.arange(m) == row_seg_start
    seeded = active & ~cont & first_row  # e_1 = p_1
    out[seeded] = p[seeded]
    # previous time of each row (the coin's previous row, or the stored EMA time)
    prev_t = np.empty(m, dtype=np.int64)
    prev_t[1:] = t[:-1]
    prev_t[first_row] = t[first_row]
    first_active = active & (first_row | ~np.roll(active, 1))
    prev_t[first_active & cont] = ema_t[coin[first_active & cont]]
    rows = np.flatnonzero(active & ~seeded)
    if not len(rows):
        return out
    anchor = np.where(cont, ema_t[coin], t[row_seg_start])  # block 0 starts here per coin
    block_ns = np.int64(EMA_BLOCK_TAUS * tau_seconds * _NS)
    block = (t[rows] - anchor[rows]) // block_ns
    carry_v = np.where(has_ema, ema_v, np.nan)
    carry_t = np.where(has_ema, ema_t, 0)
    seeded_rows = np.flatnonzero(seeded)
    carry_v[coin[seeded_rows]] = p[seeded_rows]
    carry_t[coin[seeded_rows]] = t[seeded_rows]
    for b in np.unique(block):
        r = rows[block == b]  # sorted by coin, then t; one group per coin
        c = coin[r]
        group_first = np.concatenate(([True], c[1:] != c[:-1]))
        firsts = np.flatnonzero(group_first)
        # the first row of each group continues from the coin's carry
        steps_f = (t[r[firsts]] - carry_t[c[firsts]]) / _NS
        alpha_f = -np.expm1(-steps_f / tau_seconds)
        first_v = carry_v[c[firsts]] + alpha_f * (p[r[firsts]] - carry_v[c[firsts]])
        if len(firsts) == len(r):  # one row per coin (a live poll): nothing to accumulate
            vals = first_v
        else:
            steps = (t[r] - prev_t[r]) / _NS
            alpha = -np.expm1(-steps / tau_seconds)
            gid = np.cumsum(group_first) - 1
            x = (t[r] - t[r[firsts]][gid]) / _NS / tau_seconds
            terms = alpha * p[r] * np.exp(x)
            terms[firsts] = 0.0
            acc = pd.Series(terms).groupby(gid).cumsum().to_numpy()
            vals = np.exp(-x) * (first_v[gid] + acc)
            vals[firsts] = first_v
        out[r] = vals
        lasts = np.append(firsts[1:] - 1, len(r) - 1)
        carry_v[c[lasts]] = vals[lasts]
        carry_t[c[lasts]] = t[r[lasts]]
    return out


def _last_of_each_key(codes: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Rows sorted (stably) by ``codes``, then ``t``: which one is the last of its ``(code,
    t)`` (the one a duplicate key keeps)."""
    keep = np.ones(len(codes), dtype=bool)
    keep[:-1] = (codes[:-1] != codes[1:]) | (t[:-1] != t[1:])
    return keep


def _sort_order(codes: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Stable order by (coin code, t): one int64 key when it fits, else a lexsort."""
    t_min = int(t.min())
    span = int(t.max()) - t_min + 1
    if (int(codes.max()) + 1) * span < 2**62:
        key = codes.astype(np.int64) * np.int64(span) + (t - np.int64(t_min))
        if len(key) < 2 or bool(np.all(key[1:] >= key[:-1])):
            return np.arange(len(key))  # already in order (the usual case for Parquet input)
        return np.argsort(key, kind="stable")
    return np.lexsort((np.arange(len(t)), t, codes))


def _state_arrays(state: Any, coin_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per coin of ``coin_ids``: ``ref_t`` (int64 ns, int64 max if none), ``ref_p`` (NaN if
    none), ``ema_t`` (int64 min if none), ``ema_v`` and ``has_ema`` — vectorised."""
    n = len(coin_ids)
    empty = (
        np.full(n, np.iinfo(np.int64).max, dtype=np.int64),
        np.full(n, np.nan),
        np.full(n, np.iinfo(np.int64).min, dtype=np.int64),
        np.full(n, np.nan),
        np.zeros(n, dtype=bool),
    )
    if state is None:
        return empty
    if not isinstance(state, pd.DataFrame):
        state = pd.DataFrame.from_dict({k: dict(v) for k, v in state.items()}, orient="index")
        state = state.rename_axis("coin_id").reset_index()
    if state.empty:
        return empty
    frame = state.drop_duplicates("coin_id", keep="last").set_index("coin_id")
    # positions, not a reindex: coins without state must not turn int64 ns into float64
    pos = frame.index.get_indexer(pd.Index(coin_ids, dtype=object))

    def times(column: str) -> tuple[np.ndarray, np.ndarray]:
        if column not in frame:
            return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            ok = values.notna().to_numpy()
            t = values.fillna(0).to_numpy(dtype=np.int64)  # already ns
        else:
            stamps = pd.to_datetime(values, utc=True)
            ok = stamps.notna().to_numpy()
            t = to_ns(stamps.fillna(pd.Timestamp(0, tz="UTC")))
        return _take(t, pos, 0), _take(ok, pos, False)

    def floats(column: str) -> np.ndarray:
        if column not in frame:
            return np.full(n, np.nan)
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        return _take(values, pos, np.nan)

    ref_t, ref_ok = times("ref_ts")
    ref_p = floats("ref_price")
    ema_t, ema_ok = times("ema_ts")
    ema_v = floats("ema_3min")
    ref_ok &= ~np.isnan(ref_p)
    has_ema = ema_ok & ~np.isnan(ema_v)
    return (
        np.where(ref_ok, ref_t, np.iinfo(np.int64).max),
        np.where(ref_ok, ref_p, np.nan),
        np.where(has_ema, ema_t, np.iinfo(np.int64).min),
        np.where(has_ema, ema_v, np.nan),
        has_ema,
    )


def _state_mapping(state: Any) -> dict[str, dict[str, Any]]:
    if state is None:
        return {}
    if isinstance(state, pd.DataFrame):
        if state.empty:
            return {}
        return {row["coin_id"]: row for row in state.to_dict("records")}
    return {key: dict(value) for key, value in state.items()}


def _empty_indicators(ts_dtype: Any) -> pd.DataFrame:
    frame = pd.DataFrame({name: pd.Series(dtype="float64") for name in INDICATOR_COLUMNS})
    frame["coin_id"] = frame["coin_id"].astype(object)
    frame["symbol"] = frame["symbol"].astype(object)
    frame["ts"] = pd.Series(dtype=ts_dtype)
    return frame


def compute_movers(indicators: pd.DataFrame, top_n: int = TOP_N) -> pd.DataFrame:
    """Top gainers and losers per snapshot ``ts`` (movers, docs/INDICATORS.md) as
    :data:`MOVER_COLUMNS`, ordered by ``snapshot_ts``, ``direction``, ``rank``.

    Among rows with non-NULL ``change_5min`` at each ``ts``: the ``top_n`` highest (``gainer``,
    rank 1 = highest) and the ``top_n`` lowest (``loser``, rank 1 = lowest), ties by ``coin_id``
    ascending. Fewer eligible coins give fewer rows (a coin may then be both).
    """
    # numpy on the eligible rows' positions, one frame built at the end: pandas' indexing of
    # a few dozen rows cost more than the ranking (a live batch's 20 candidates: ~5 ms)
    change_all = indicators["change_5min"].to_numpy(dtype="float64", na_value=np.nan)
    eligible = np.flatnonzero(~np.isnan(change_all))
    key = np.asarray(to_ns(indicators["ts"].array.take(eligible)), dtype="int64")
    change = change_all[eligible]
    coin_ids = indicators["coin_id"].to_numpy(dtype=object)[eligible]
    coin = pd.factorize(coin_ids, sort=True)[0]  # codes in coin_id order
    picked, ranks, directions = [], [], []
    for code, sign in ((0, -1.0), (1, 1.0)):  # gainer: change descending, loser: ascending
        order = np.lexsort((coin, sign * change, key))  # by ts, change, then coin_id
        sorted_key = key[order]
        position = np.arange(len(order))
        first = np.ones(len(order), dtype=bool)  # the first row of each ts
        first[1:] = sorted_key[1:] != sorted_key[:-1]
        rank = position - np.maximum.accumulate(np.where(first, position, 0)) + 1
        keep = rank <= top_n
        picked.append(order[keep])
        ranks.append(rank[keep])
        directions.append(np.full(int(keep.sum()), code))
    rows, rank, direction = (np.concatenate(x) for x in (picked, ranks, directions))
    final = np.lexsort((rank, direction, key[rows]))
    at = eligible[rows[final]]  # the movers' positions in ``indicators``
    columns = {
        "snapshot_ts": indicators["ts"].array.take(at),
        "direction": np.array(["gainer", "loser"], dtype=object)[direction[final]],
        "rank": rank[final].astype("int64"),
        "coin_id": indicators["coin_id"].array.take(at),
        "symbol": indicators["symbol"].array.take(at),
        "change_5min": indicators["change_5min"].array.take(at),
        "price": indicators["price"].array.take(at),
    }
    return pd.DataFrame({name: columns[name] for name in MOVER_COLUMNS})


def state_from_indicators(indicators: pd.DataFrame, start: Any) -> pd.DataFrame:
    """Per-coin prior state for a refresh from ``start``, from already computed indicator rows.

    In-memory twin of the Postgres state query (``resources.postgres``): per coin, the last row
    with ``ts < start - 300 s`` (``ref_ts``, ``ref_price``) and the last row with ``ts < start``
    (``ema_ts``, ``ema_3min``). Returns :data:`STATE_COLUMNS`.
    """
    t = to_ns(indicators["ts"])
    start_ns = to_ns(start)
    frame = indicators.assign(_t=t).sort_values(["coin_id", "_t"], kind="mergesort")
    ref = frame.loc[frame["_t"] < start_ns - LOOKBACK_SECONDS * _NS]
    ref = ref.groupby("coin_id", sort=True).tail(1)
    ref = ref.loc[:, ["coin_id", "ts", "price"]].rename(
        columns={"ts": "ref_ts", "price": "ref_price"}
    )
    last = frame.loc[frame["_t"] < start_ns].groupby("coin_id", sort=True).tail(1)
    last = last.loc[:, ["coin_id", "ts", "ema_3min"]].rename(columns={"ts": "ema_ts"})
    state = last.merge(ref, on="coin_id", how="left")
    return state.loc[:, list(STATE_COLUMNS)].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Live path: per-coin state carried from poll to poll (``marketflow_assets/live``).
# --------------------------------------------------------------------------------------------
#: Observations the live path keeps per coin: every one within 300 s of the coin's newest, plus
#: the latest one at least 300 s older (the ``p_ref`` of ``change_5min`` for the next rows).
LIVE_RETAIN_SECONDS = LOOKBACK_SECONDS
#: How far back the live path reads ``price_indicators`` on start (before the newest ``ts``).
LIVE_REBUILD_SECONDS = 2 * LOOKBACK_SECONDS


@dataclass(frozen=True)
class LiveState:
    """State of the live path for many coins, enough to compute the next rows exactly.

    Arrays, so a batch costs numpy work on the retained observations, not a re-sort and
    re-hash of them: ``coin_ids`` (object, sorted, unique) is the coin table and a coin's code
    is its position in it; ``obs_code``, ``obs_t`` (int64 ns) and ``obs_p`` (price) are the
    retained observations sorted by code, then ``t`` (see :data:`LIVE_RETAIN_SECONDS`);
    ``last_t`` and ``last_ema`` are, per code, the newest observation's ``t`` and its
    ``ema_3min`` (the EMA continues from it; NaN: it starts again). :attr:`obs` and :attr:`last`
    show the same as frames. Immutable: :func:`advance_indicators` returns a new state, so a
    caller can keep the old one until the rows computed with the new one are committed.
    """

    coin_ids: np.ndarray
    obs_code: np.ndarray
    obs_t: np.ndarray
    obs_p: np.ndarray
    last_t: np.ndarray
    last_ema: np.ndarray

    @classmethod
    def empty(cls) -> LiveState:
        return cls(
            np.empty(0, dtype=object),
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.float64),
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.float64),
        )

    @classmethod
    def from_rows(cls, rows: pd.DataFrame) -> LiveState:
        """State from stored ``price_indicators`` rows (``coin_id``, ``ts``, ``price``,
        ``ema_3min``): each coin's newest row gives the EMA, the rows within
        :data:`LIVE_RETAIN_SECONDS` of it (and the one before) the windows and references.
        ``rows`` must hold, per coin, every stored row in that span (e.g. the last
        :data:`LIVE_REBUILD_SECONDS` of the table plus each coin's last older row)."""
        if rows.empty:
            return cls.empty()
        codes, coin_ids = pd.factorize(rows["coin_id"].to_numpy(dtype=object), sort=True)
        codes = codes.astype(np.int64)
        t = to_ns(rows["ts"])
        p = rows["price"].to_numpy(dtype=np.float64)
        ema = rows["ema_3min"].to_numpy(dtype=np.float64)
        order = np.lexsort((t, codes))  # stable: of equal (coin, t), the last row stays last
        codes, t, p, ema = codes[order], t[order], p[order], ema[order]
        keep = _last_of_each_key(codes, t)  # duplicates (coin, t): keep the last one
        codes, t, p, ema = codes[keep], t[keep], p[keep], ema[keep]
        newest = _segment_ends(codes)
        kept = _retained(codes, t)
        return cls(
            np.asarray(coin_ids, dtype=object),
            codes[kept],
            t[kept],
            p[kept],
            t[newest],
            ema[newest],
        )

    @cached_property
    def index(self) -> pd.Index:
        """``coin_ids`` as an index (a code by coin id: ``index.get_indexer(ids)``)."""
        return pd.Index(self.coin_ids, dtype=object, name="coin_id")

    @property
    def obs(self) -> pd.DataFrame:
        """The retained observations: ``coin_id``, ``t``, ``p``, sorted by coin, then time."""
        return pd.DataFrame(
            {"coin_id": self.coin_ids[self.obs_code], "t": self.obs_t, "p": self.obs_p}
        )

    @property
    def last(self) -> pd.DataFrame:
        """Per coin (index ``coin_id``): the newest observation's ``t`` and ``ema_3min``."""
        return pd.DataFrame({"t": self.last_t, "ema_3min": self.last_ema}, index=self.index)

    def codes_of(self, coin_ids: np.ndarray) -> np.ndarray:
        """The code of each of ``coin_ids``; -1 for coins the state does not know."""
        return self.index.get_indexer(pd.Index(coin_ids, dtype=object))

    def last_ts(self, codes: np.ndarray) -> np.ndarray:
        """Newest ``t`` (int64 ns) of the coins of ``codes`` (:meth:`codes_of`); int64 min
        for unknown coins (code -1)."""
        return _take(self.last_t, codes, np.iinfo(np.int64).min)


def _take(values: np.ndarray, pos: np.ndarray, missing: Any) -> np.ndarray:
    """``values[pos]`` with ``missing`` where ``pos`` is -1, in the dtype of ``values`` (a
    ``reindex`` would turn int64 ns into float64 when a key is missing, rounding them by up to
    128 ns)."""
    out = np.full(len(pos), missing, dtype=values.dtype)
    hit = pos >= 0
    out[hit] = values[pos[hit]]
    return out


def _segment_ends(codes: np.ndarray) -> np.ndarray:
    """Positions of the last row of each run of equal ``codes``."""
    return np.flatnonzero(np.append(codes[1:] != codes[:-1], True)) if len(codes) else codes


def _retained(codes: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Which observations a coin keeps (sorted by code, then ``t``): those after its newest
    ``t - 300 s`` and the latest one before."""
    if not len(codes):
        return np.zeros(0, dtype=bool)
    last_of_coin = np.append(codes[1:] != codes[:-1], True)
    newest = t[last_of_coin][np.cumsum(np.append(True, last_of_coin[:-1])) - 1]
    recent = t > newest - np.int64(LIVE_RETAIN_SECONDS) * _NS
    # the latest observation before the window: not recent, and the next row of its coin is
    return recent | (~recent & np.append(recent[1:] | last_of_coin[:-1], True))


_UTC_NS = pd.DatetimeTZDtype("ns", "UTC")


def advance_indicators(
    state: LiveState, batch: pd.DataFrame
) -> tuple[pd.DataFrame, LiveState, pd.DataFrame]:
    """The indicator rows of new observations, continuing from ``state`` (pure).

    ``batch``: columns ``id``, ``symbol``, ``ts`` (tz-aware UTC or naive UTC), ``current_price``
    (the raw columns), any order, several observations per coin allowed. An observation whose
    ``ts`` is not newer than the coin's newest one in ``state`` is not computed (a duplicate
    ``(coin, ts)``, or a late row: the exact recompute from raw owns it) and comes back in the
    third frame. The others are computed as :func:`compute_indicators` computes them, with the
    coin's retained observations as their lookback (only the new rows are computed) and the EMA
    continued from the stored value - the same formulas and
    windows as a full recompute, so the rows equal it (EMA up to rounding, ``<= 1e-12``
    relative). Duplicates inside ``batch`` keep the last one. Returns ``(rows, new_state,
    skipped)``; ``rows`` has :data:`INDICATOR_COLUMNS` sorted by ``coin_id, ts`` (``ts`` in
    ns, UTC).

    The new observations are merged into the retained ones (both sorted by coin code, then
    time; a new one follows its coin's retained ones) instead of sorting them all again.
    """
    # numpy masks, and pandas' row selection only when it selects (a live batch is ~15
    # pandas calls: at 250 coins they cost more than the arithmetic)
    unusable = pd.isna(batch["current_price"].to_numpy()) | pd.isna(batch["id"].to_numpy())
    unusable |= batch["ts"].isna().to_numpy()
    if unusable.any():
        batch = batch.loc[~unusable]
    ts = batch["ts"]
    if ts.dtype != _UTC_NS:  # the record contract's frame is already in UTC nanoseconds
        # cache=False: the cache check walks tz-aware times as Python objects (7 ms per 15,000)
        ts = pd.to_datetime(ts, utc=True, cache=False)
    t_new = to_ns(ts)
    coins = batch["id"].to_numpy(dtype=object)
    pos = state.codes_of(coins)
    fresh = t_new > state.last_ts(pos)
    skipped = batch.iloc[:0] if fresh.all() else batch.loc[~fresh]
    if not fresh.any():
        return _empty_indicators(ts.dtype), state, skipped
    src = np.flatnonzero(fresh)  # the computed rows' positions in ``batch``
    code = pos[src].astype(np.int64)
    coin_ids, obs_code, last_t, last_ema = (
        state.coin_ids,
        state.obs_code,
        state.last_t,
        state.last_ema,
    )
    if (code < 0).any():  # coins new to the state: a new coin table, codes in coin id order
        added = pd.unique(coins[src][code < 0])
        coin_ids = np.sort(np.concatenate((state.coin_ids, added)))
        index = pd.Index(coin_ids, dtype=object)
        moved = index.get_indexer(state.index).astype(np.int64)  # old code -> new code
        obs_code = moved[state.obs_code]
        last_t = np.full(len(coin_ids), np.iinfo(np.int64).min, dtype=np.int64)
        last_ema = np.full(len(coin_ids), np.nan)
        last_t[moved], last_ema[moved] = state.last_t, state.last_ema
        code = index.get_indexer(pd.Index(coins[src], dtype=object)).astype(np.int64)
    t = t_new[src]
    p = batch["current_price"].to_numpy(dtype=np.float64)[src]
    order = np.lexsort((t, code))  # stable: of equal (coin, t) in the batch, the last stays last
    src, code, t, p = src[order], code[order], t[order], p[order]
    keep = _last_of_each_key(code, t)  # duplicates inside the batch: keep the last one
    src, code, t, p = src[keep], code[keep], t[keep], p[keep]
    # the touched coins' retained observations, then the new ones merged in after them
    touched = np.zeros(len(coin_ids), dtype=bool)
    touched[code] = True
    mine = touched[obs_code]
    every = bool(mine.all())
    o_code = obs_code if every else obs_code[mine]
    o_t = state.obs_t if every else state.obs_t[mine]
    o_p = state.obs_p if every else state.obs_p[mine]
    at = np.searchsorted(o_code, code, side="right")
    m_code = np.insert(o_code, at, code)
    m_t = np.insert(o_t, at, t)
    m_p = np.insert(o_p, at, p)
    emit = np.insert(np.zeros(len(o_code), dtype=bool), at, True)
    starts = np.flatnonzero(np.append(True, m_code[1:] != m_code[:-1]))
    seg_code = m_code[starts]
    has_ema = (last_t[seg_code] != np.iinfo(np.int64).min) & ~np.isnan(last_ema[seg_code])
    state_arrays = (
        np.full(len(starts), np.iinfo(np.int64).max, dtype=np.int64),  # no reference: retained
        np.full(len(starts), np.nan),
        np.where(has_ema, last_t[seg_code], np.iinfo(np.int64).min),
        np.where(has_ema, last_ema[seg_code], np.nan),
        has_ema,
    )
    columns = _all_coins(m_code, m_t, m_p, starts, state_arrays, emit)
    if columns is None:  # keys would overflow int64 (times centuries apart): coin by coin
        lookback = pd.DataFrame(
            {
                "id": coin_ids[m_code],
                "symbol": None,
                "ts": pd.to_datetime(m_t, unit="ns", utc=True),
                "current_price": m_p,
            }
        )
        ema_state = pd.DataFrame(
            {
                "coin_id": coin_ids[seg_code][has_ema],
                "ema_ts": last_t[seg_code][has_ema],
                "ema_3min": last_ema[seg_code][has_ema],
            }
        )
        computed = _compute(lookback, ema_state, emit=emit)[0]  # same order: coin, then time
        columns = {name: computed[name].to_numpy() for name in INDICATOR_COLUMNS[4:]}
    rows = pd.DataFrame(
        {
            "coin_id": coin_ids[code],
            "symbol": batch["symbol"].to_numpy(dtype=object)[src],
            "ts": pd.DatetimeIndex(t.view("M8[ns]")).tz_localize("UTC"),
            "price": p,
            **columns,
        }
    )
    # the new state: the touched coins' observations pruned, the others' kept as they are
    kept = _retained(m_code, m_t)
    n_code, n_t, n_p = m_code[kept], m_t[kept], m_p[kept]
    if not every:
        rest = ~mine
        back = np.searchsorted(obs_code[rest], n_code, side="left")
        n_code = np.insert(obs_code[rest], back, n_code)
        n_t = np.insert(state.obs_t[rest], back, n_t)
        n_p = np.insert(state.obs_p[rest], back, n_p)
    ends = _segment_ends(code)  # each touched coin's newest new row (the newest of the coin)
    last_t, last_ema = last_t.copy(), last_ema.copy()
    last_t[code[ends]] = t[ends]
    last_ema[code[ends]] = columns["ema_3min"][ends]
    return rows, LiveState(coin_ids, n_code, n_t, n_p, last_t, last_ema), skipped


def step_indicators(state: LiveState, coin_id: str, ts: Any, price: float, symbol: Any = None):
    """One observation of one coin: ``(row, new_state)``, ``row`` a dict of
    :data:`INDICATOR_COLUMNS`, or None when ``ts`` is not newer than the coin's newest one
    (duplicate or late). The single-coin form of :func:`advance_indicators` (same code)."""
    batch = pd.DataFrame(
        {
            "id": [coin_id],
            "symbol": [symbol],
            "ts": [pd.Timestamp(ts)],
            "current_price": [float(price)],
        }
    )
    rows, new_state, _ = advance_indicators(state, batch)
    if rows.empty:
        return None, state
    return rows.iloc[0].to_dict(), new_state


#: Columns :func:`compare_indicator_rows` compares (``price`` and the five indicators).
COMPARED_COLUMNS = INDICATOR_COLUMNS[3:]


def compare_indicator_rows(
    live_rows: pd.DataFrame, dagster_rows: pd.DataFrame, tol: float = 1e-9
) -> pd.DataFrame:
    """Differences between the live path's rows and Dagster's recompute, per ``(coin_id, ts)``.

    Only keys present in both frames are compared (a live row Dagster did not recompute is not
    a difference). For each of :data:`COMPARED_COLUMNS` the difference is
    ``|a - b| / max(|a|, |b|)`` (relative; 0 when ``a == b``; both NULL = equal; NULL on one side
    = ``inf``). Returns one row per key whose largest difference exceeds ``tol``: columns
    ``coin_id``, ``ts``, ``column`` (the worst one), ``live``, ``dagster``, ``diff``, sorted by
    ``diff`` descending, and ``attrs["compared"]`` = number of keys compared, ``attrs["max_diff"]``
    = the largest difference over all compared keys (0.0 when none).
    """
    left = live_rows.assign(_t=to_ns(live_rows["ts"])) if len(live_rows) else None
    right = dagster_rows.assign(_t=to_ns(dagster_rows["ts"])) if len(dagster_rows) else None
    columns = ["coin_id", "ts", "column", "live", "dagster", "diff"]
    if left is None or right is None:
        result = pd.DataFrame(columns=columns)
        result.attrs.update(compared=0, max_diff=0.0)
        return result
    both = left.loc[:, ["coin_id", "_t", "ts", *COMPARED_COLUMNS]].merge(
        right.loc[:, ["coin_id", "_t", *COMPARED_COLUMNS]],
        on=["coin_id", "_t"],
        suffixes=("_live", "_dagster"),
    )
    diffs = np.zeros((len(both), len(COMPARED_COLUMNS)))
    for i, name in enumerate(COMPARED_COLUMNS):
        a = both[f"{name}_live"].to_numpy(dtype=np.float64)
        b = both[f"{name}_dagster"].to_numpy(dtype=np.float64)
        scale = np.maximum(np.abs(a), np.abs(b))
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.abs(a - b) / scale
        d[a == b] = 0.0
        d[np.isnan(a) & np.isnan(b)] = 0.0
        d[np.isnan(a) ^ np.isnan(b)] = np.inf
        diffs[:, i] = d
    worst = diffs.argmax(axis=1) if len(both) else np.empty(0, dtype=int)
    largest = diffs.max(axis=1) if len(both) else np.empty(0)
    bad = np.flatnonzero(largest > tol)
    worst_names = np.array(COMPARED_COLUMNS, dtype=object)[worst[bad]]
    result = pd.DataFrame(
        {
            "coin_id": both["coin_id"].to_numpy()[bad],
            "ts": both["ts"].iloc[bad].to_numpy(),
            "column": worst_names,
            "live": [both[f"{c}_live"].iloc[i] for c, i in zip(worst_names, bad, strict=True)],
            "dagster": [
                both[f"{c}_dagster"].iloc[i] for c, i in zip(worst_names, bad, strict=True)
            ],
            "diff": largest[bad],
        },
        columns=columns,
    )
    if len(result):
        result["ts"] = pd.to_datetime(result["ts"], utc=True)
    result = result.sort_values("diff", ascending=False, kind="mergesort").reset_index(drop=True)
    result.attrs.update(
        compared=int(len(both)), max_diff=float(largest.max()) if len(largest) else 0.0
    )
    return result
