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
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
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


def window_mean_std(
    t: np.ndarray, p: np.ndarray, seconds: int = WINDOW_SECONDS
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (ddof=1) of ``p_j`` over ``t_j`` in ``(t_i - seconds, t_i]``.

    Computed directly over each window (vectorised over rows, looping over the position inside
    the window), two-pass, so the result is as accurate as a per-window reference. Windows whose
    prices are all equal give exactly ``mean = p_i`` and ``std = 0``. Std is NaN for windows with
    fewer than 2 observations.
    """
    n_rows = len(t)
    if n_rows == 0:
        return np.empty(0), np.empty(0)
    idx = np.arange(n_rows)
    lo = np.searchsorted(t, t - np.int64(seconds) * _NS, side="right")
    count = idx - lo + 1
    total = p.copy()
    low = p.copy()
    high = p.copy()
    for k in range(1, int(count.max())):
        rows = np.nonzero(count > k)[0]
        vals = p[rows - k]
        total[rows] += vals
        low[rows] = np.minimum(low[rows], vals)
        high[rows] = np.maximum(high[rows], vals)
    mean = total / count
    squares = (p - mean) ** 2
    for k in range(1, int(count.max())):
        rows = np.nonzero(count > k)[0]
        squares[rows] += (p[rows - k] - mean[rows]) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(squares / (count - 1))
    flat = low == high
    mean[flat] = p[flat]
    std[flat] = 0.0
    std[count < 2] = np.nan
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
    states = _state_mapping(state)
    usable = raw["current_price"].notna() & raw["ts"].notna()
    if not usable.all():
        raw = raw.loc[usable]
    if raw.empty:
        return _empty_indicators(raw["ts"].dtype)
    t_all = to_ns(raw["ts"])
    codes, _ = pd.factorize(raw["id"], sort=True)  # integer coin codes, in coin_id order
    order = _sort_order(codes, t_all)
    t_all, codes = t_all[order], codes[order]
    # duplicates (id, ts): keep the last one
    keep = np.ones(len(order), dtype=bool)
    keep[:-1] = (codes[:-1] != codes[1:]) | (t_all[:-1] != t_all[1:])
    order, t_all, codes = order[keep], t_all[keep], codes[keep]
    prices = raw["current_price"].to_numpy(dtype=np.float64)[order]
    id_values = raw["id"].to_numpy()

    boundaries = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    starts = np.concatenate(([0], boundaries))
    stops = np.concatenate((boundaries, [len(order)]))
    columns = {name: np.empty(len(order)) for name in INDICATOR_COLUMNS[4:]}
    for a, b in zip(starts, stops, strict=True):
        values = coin_indicators(t_all[a:b], prices[a:b], states.get(id_values[order[a]]))
        for name, arr in values.items():
            columns[name][a:b] = arr

    mask = np.ones(len(order), dtype=bool)
    if start is not None:
        mask &= t_all >= to_ns(start)
    if end is not None:
        mask &= t_all < to_ns(end)
    rows = order[mask]
    return pd.DataFrame(
        {
            "coin_id": id_values[rows],
            "symbol": raw["symbol"].to_numpy()[rows],
            "ts": raw["ts"].iloc[rows].reset_index(drop=True),
            "price": prices[mask],
            **{name: columns[name][mask] for name in INDICATOR_COLUMNS[4:]},
        }
    )


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
    :data:`MOVER_COLUMNS`.

    Among rows with non-NULL ``change_5min`` at each ``ts``: the ``top_n`` highest (``gainer``,
    rank 1 = highest) and the ``top_n`` lowest (``loser``, rank 1 = lowest), ties by ``coin_id``
    ascending. Fewer eligible coins give fewer rows (a coin may then be both).
    """
    cols = ["ts", "coin_id", "symbol", "change_5min", "price"]
    eligible = indicators.loc[indicators["change_5min"].notna(), cols]
    eligible = eligible.assign(_key=to_ns(eligible["ts"]))
    frames = []
    for direction, descending in (("gainer", True), ("loser", False)):
        ranked = eligible.sort_values(
            ["_key", "change_5min", "coin_id"],
            ascending=[True, not descending, True],
            kind="mergesort",
        )
        top = ranked.groupby("_key", sort=False).head(top_n)
        top = top.assign(
            direction=direction,
            rank=top.groupby("_key", sort=False).cumcount().astype("int64") + 1,
        )
        frames.append(top)
    movers = pd.concat(frames, ignore_index=True).rename(columns={"ts": "snapshot_ts"})
    movers = movers.sort_values(["_key", "direction", "rank"], kind="mergesort")
    return movers.loc[:, list(MOVER_COLUMNS)].reset_index(drop=True)


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
