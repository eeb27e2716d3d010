"""Forecast features and targets: pure numpy/pandas, no I/O.

Input is a *panel*: one row per observation ``(coin_id, ts)`` with ``price`` and the stored
indicators (``sma_5min``, ``ema_3min``, ``volatility_5min``; see ``price_indicators``), optionally
``last_updated`` (CoinGecko's own quote time, from the raw data). Every observation is a potential
forecast *origin* ``t``; the forecast is for ``target_ts = t + H`` (``H`` = horizon in seconds).

No look-ahead: every feature of origin ``(coin, t)`` is a function of observations with
``ts <= t`` only (the coin's own history, and other coins' observations at the same snapshot
``ts = t``). :func:`build_features` is therefore invariant to appending later data, which
``tests/forecasting`` checks by truncation and the ``no_look_ahead`` asset check re-verifies.

Definitions (per coin, ``log`` natural, ``p_asof(s)`` = price of the latest observation with
``ts <= s``):

* scale ``sigma(t)`` = sqrt(H / span * sum r_j^2) over the one-step log returns
  ``r_j = log(p_j / p_{j-1})`` of the observations in ``(t - 1800 s, t]``,
  ``span = min(1800 s, t - first ts of the coin)``: the realized volatility of a horizon-long
  move. Undefined (NaN) during a coin's first horizon (too few returns to standardize by); such
  origins are neither trained on nor scored.
* ``ret_k(t) = log(p_t / p_asof(t - k))`` for k in :data:`RET_LAGS` (0 when no such observation);
* ``dev_sma = log(p / sma_5min)``, ``dev_ema = log(p / ema_3min)``, ``rel_vol5 = vol_5min / p``,
  ``dev_mean_k = log p - mean(log p_j over (t - k, t])`` for k = 900 s, 3600 s;
* cross-coin at the same snapshot: ``mkt_ret_k`` = mean of ``ret_k`` over the coins,
  ``breadth_300`` = share of coins with ``ret_300 > 0`` (minus 0.5), ``rank_300`` = percentile
  rank of the coin's ``ret_300`` (minus 0.5), ``leader_ret_k`` = ``ret_k`` of the leader coin:
  the coin whose past 5-min return best predicted (positive correlation) the other coins' next
  move on training data
  (:func:`find_leader`), else ``bitcoin`` when present, else the coin with most observations;
* staleness: ``stale = (t - last_updated) / H`` and ``unchanged = (t - ts of the last price
  change) / H``, both clipped to [0, 12];
* return-like features (``ret_*``, ``dev_*``, ``mkt_*``, ``leader_*``, ``rel_vol5``) are divided
  by the coin's ``sigma(t)`` and clipped to +-25, so one pooled model serves coins of any
  volatility.

Target: ``y = log(p_asof(t + H) / p_t)``, defined when that observation is at least
``t + H - tolerance`` (``tolerance = H / 5``); ``z = y / sigma`` is what learned models fit.
Baseline inputs: ``drift_ret`` = mean log return per second over the last hour (or since the
coin's first observation, if at least 300 s) times H; ``ema_ret = log(ema_3min / p)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

RET_LAGS = (30, 60, 120, 300, 600, 900, 1800)
MKT_LAGS = (60, 300, 900)
LEADER_LAGS = (60, 300)
MEAN_WINDOWS = (900, 3600)
RV_WINDOW_SECONDS = 1800
DRIFT_SECONDS = 3600
MIN_DRIFT_SECONDS = 300
#: history a prediction at one origin needs before it (features are identical with this much).
LOOKBACK_SECONDS = DRIFT_SECONDS + 60
Z_CLIP = 25.0
STALE_CLIP = 12.0
SIGMA_FLOOR = 1e-7
DEFAULT_LEADER = "bitcoin"

FEATURE_COLUMNS: tuple[str, ...] = (
    *(f"ret_{k}" for k in RET_LAGS),
    "dev_sma",
    "dev_ema",
    *(f"dev_mean_{k}" for k in MEAN_WINDOWS),
    "rel_vol5",
    *(f"mkt_ret_{k}" for k in MKT_LAGS),
    *(f"leader_ret_{k}" for k in LEADER_LAGS),
    "breadth_300",
    "rank_300",
    "stale",
    "unchanged",
)

_US = 1_000_000
_SHIFT = np.int64(1) << np.int64(42)  # microseconds per coin block in the sort key (~50 days)


def choose_leader(panel: pd.DataFrame) -> str | None:
    """``bitcoin`` when present, else the coin with most observations (ties: smallest id)."""
    if panel.empty:
        return None
    counts = panel["coin_id"].value_counts()
    if DEFAULT_LEADER in counts.index:
        return DEFAULT_LEADER
    top = counts[counts == counts.max()].index
    return str(sorted(top)[0])


def with_leader(feats: pd.DataFrame, leader: str | None) -> pd.DataFrame:
    """``feats`` with ``leader_ret_k`` = the leader's ``ret_k`` at the same snapshot, divided by
    each row's own ``sigma`` (0 where the leader has no observation)."""
    out = feats.copy()
    cols = [f"raw_ret_{k}" for k in LEADER_LAGS]
    lead = out.loc[out["coin_id"] == leader, ["ts", *cols]].drop_duplicates("ts")
    lead = out[["ts"]].merge(lead, on="ts", how="left")
    sigma = out["sigma"].to_numpy(np.float64)
    for k, col in zip(LEADER_LAGS, cols, strict=True):
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = lead[col].to_numpy(np.float64) / sigma
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0)
        out[f"leader_ret_{k}"] = np.clip(scaled, -Z_CLIP, Z_CLIP)
    out.attrs["leader"] = leader
    return out


def find_leader(feats: pd.DataFrame, until: pd.Timestamp, min_snapshots: int = 30) -> str | None:
    """The coin whose last-5-min return best predicts the other coins' next move, from origins
    whose target was observed by ``until`` only: argmax over coins c of
    ``corr_t(ret_300(c, t), mean over coins != c of y(t))`` (a leader's move is followed by the
    others' in the same direction). None with too little data or no positive correlation."""
    rows = feats[(feats["target_obs_ts"] <= until) & np.isfinite(feats["y"])]
    rows = rows[np.isfinite(rows["raw_ret_300"])]
    if rows["ts"].nunique() < min_snapshots or rows["coin_id"].nunique() < 3:
        return None
    grouped = rows.groupby("ts")["y"]
    total, count = grouped.transform("sum"), grouped.transform("count")
    others = ((total - rows["y"]) / (count - 1)).where(count > 1)
    frame = pd.DataFrame({"coin": rows["coin_id"], "r": rows["raw_ret_300"], "m": others}).dropna()
    best, best_corr = None, 0.0
    for coin, group in frame.groupby("coin", sort=True):
        if len(group) < min_snapshots or group["r"].std() == 0 or group["m"].std() == 0:
            continue
        corr = float(np.corrcoef(group["r"], group["m"])[0, 1])
        if np.isfinite(corr) and corr > best_corr:
            best, best_corr = str(coin), corr
    return best


def _asof(key: np.ndarray, codes: np.ndarray, probe_us: np.ndarray) -> np.ndarray:
    """Index of the latest observation of the same coin with time <= probe (-1 if none)."""
    probe = codes.astype(np.int64) * _SHIFT + probe_us
    idx = np.searchsorted(key, probe, side="right") - 1
    ok = (idx >= 0) & (codes[np.clip(idx, 0, None)] == codes)
    return np.where(ok, idx, -1)


def _window_sums(
    values: np.ndarray, codes: np.ndarray, lo: np.ndarray, coin_start: np.ndarray
) -> np.ndarray:
    """Sum of ``values[lo_i .. i]`` per row, from running sums restarted at each coin (so a
    coin's sums do not depend on other coins' rows, nor on rows after ``i``)."""
    if not len(values):
        return values.astype(np.float64)
    cs = pd.Series(values).groupby(codes).cumsum().to_numpy(np.float64)
    before = np.where(lo > coin_start, cs[np.maximum(lo - 1, 0)], 0.0)
    return cs - before


def build_features(panel: pd.DataFrame, horizon_s: int, leader: str | None = None) -> pd.DataFrame:
    """Features, scale, baseline inputs and target for every row of ``panel``.

    Returns a frame sorted by (coin_id, ts) with ``coin_id``, ``ts``, ``price``, ``sigma``,
    :data:`FEATURE_COLUMNS` (NaN-free), ``drift_ret``, ``ema_ret``, ``y`` (NaN when the target is
    not observed), ``z`` and ``target_obs_ts``.
    """
    cols = ["coin_id", "ts", "price", "sma_5min", "ema_3min", "volatility_5min", "last_updated"]
    frame = panel.reindex(columns=cols).copy()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["last_updated"] = pd.to_datetime(frame["last_updated"], utc=True)
    frame = frame.sort_values(["coin_id", "ts"], kind="mergesort").reset_index(drop=True)
    n = len(frame)
    if leader is None:
        leader = choose_leader(frame)
    codes = pd.factorize(frame["coin_id"], sort=True)[0].astype(np.int64)
    ts_us = frame["ts"].to_numpy("datetime64[us]").astype(np.int64)
    t0 = ts_us.min() if n else 0
    t_us = ts_us - t0
    key = codes * _SHIFT + t_us
    price = frame["price"].to_numpy(np.float64)
    logp = np.log(price)
    h_us = int(horizon_s) * _US
    out = pd.DataFrame({"coin_id": frame["coin_id"], "ts": frame["ts"], "price": price})

    first = np.ones(n, dtype=bool)
    if n:
        first[1:] = codes[1:] != codes[:-1]
    coin_start = np.maximum.accumulate(np.where(first, np.arange(n), 0)) if n else first
    # realized scale over (t - RV_WINDOW, t]
    r1 = np.zeros(n)
    if n:
        r1[1:] = np.where(first[1:], 0.0, np.diff(logp))
    lo = np.searchsorted(key, key - RV_WINDOW_SECONDS * _US, side="right")
    lo = np.maximum(lo, coin_start)
    window_sum = _window_sums(r1 * r1, codes, lo, coin_start)
    # r1 at index lo itself belongs to the window (its end lies inside it)
    span = np.minimum(RV_WINDOW_SECONDS * _US, t_us - t_us[coin_start]) / _US
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.sqrt(window_sum * horizon_s / span)
    # a scale from less than one horizon of history is too noisy to standardize by
    sigma = np.where(
        span >= min(horizon_s, RV_WINDOW_SECONDS), np.maximum(sigma, SIGMA_FLOOR), np.nan
    )
    out["sigma"] = sigma
    safe_sigma = np.where(np.isfinite(sigma), sigma, np.nan)

    def z(values: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = values / safe_sigma
        return np.clip(np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0), -Z_CLIP, Z_CLIP)

    rets = {}
    for k in RET_LAGS:
        idx = _asof(key, codes, t_us - k * _US)
        rets[k] = np.where(idx >= 0, logp - logp[np.maximum(idx, 0)], np.nan)
        out[f"ret_{k}"] = z(np.nan_to_num(rets[k], nan=0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        dev_sma = np.log(price / frame["sma_5min"].to_numpy(np.float64))
        ema = frame["ema_3min"].to_numpy(np.float64)
        dev_ema = np.log(price / ema)
        rel_vol = frame["volatility_5min"].to_numpy(np.float64) / price
    out["dev_sma"] = z(np.nan_to_num(dev_sma, nan=0.0))
    out["dev_ema"] = z(np.nan_to_num(dev_ema, nan=0.0))
    out["rel_vol5"] = z(np.nan_to_num(rel_vol, nan=0.0))
    # deviation from the mean log price over (t - k, t] (slow mean reversion)
    rel = logp - logp[coin_start]  # small numbers: exact enough running sums
    for k in MEAN_WINDOWS:
        lo_k = np.maximum(np.searchsorted(key, key - k * _US, side="right"), coin_start)
        total = _window_sums(rel, codes, lo_k, coin_start)
        out[f"dev_mean_{k}"] = z(rel - total / (np.arange(n) - lo_k + 1))

    # cross-coin features at the same snapshot ts
    snap = pd.DataFrame({"ts": frame["ts"], "coin_id": frame["coin_id"]})
    for k in sorted(set(MKT_LAGS) | set(LEADER_LAGS) | {300}):
        snap[f"r{k}"] = rets[k]
    grouped = snap.groupby("ts", sort=False)
    for k in MKT_LAGS:
        out[f"mkt_ret_{k}"] = z(grouped[f"r{k}"].transform("mean").fillna(0.0).to_numpy())
    up = snap["r300"].gt(0).astype(float).where(snap["r300"].notna())
    breadth = up.groupby(snap["ts"], sort=False).transform("mean")
    out["breadth_300"] = (breadth - 0.5).fillna(0.0).to_numpy()
    rank = snap.groupby("ts", sort=False)["r300"].rank(pct=True)
    out["rank_300"] = (rank - 0.5).fillna(0.0).to_numpy()
    for k in LEADER_LAGS:
        out[f"raw_ret_{k}"] = rets[k]
    out = with_leader(out, leader)

    # staleness
    lu = frame["last_updated"].to_numpy("datetime64[us]").astype(np.int64) - t0
    lu_ok = frame["last_updated"].notna().to_numpy()
    stale = np.where(lu_ok, (t_us - lu) / _US / horizon_s, 0.0)
    out["stale"] = np.clip(stale, 0.0, STALE_CLIP)
    changed = first.copy()
    if n:
        changed[1:] |= price[1:] != price[:-1]
    last_change = np.maximum.accumulate(np.where(changed, key, np.int64(-1))) if n else key
    out["unchanged"] = np.clip((key - last_change) / _US / horizon_s, 0.0, STALE_CLIP)

    # baselines
    idx = _asof(key, codes, t_us - DRIFT_SECONDS * _US)
    ref = np.where(idx >= 0, idx, coin_start)
    dt = (t_us - t_us[ref]) / _US
    with np.errstate(divide="ignore", invalid="ignore"):
        drift = np.where(dt >= MIN_DRIFT_SECONDS, (logp - logp[ref]) / dt * horizon_s, 0.0)
    out["drift_ret"] = np.nan_to_num(drift, nan=0.0)
    out["ema_ret"] = np.nan_to_num(-dev_ema, nan=0.0, posinf=0.0, neginf=0.0)

    # target: the price as of t + H, observed no earlier than t + H - H/5
    j = _asof(key, codes, t_us + h_us)
    tolerance_us = h_us // 5
    ok = (j >= 0) & (t_us[np.maximum(j, 0)] >= t_us + h_us - tolerance_us)
    out["y"] = np.where(ok, logp[np.maximum(j, 0)] - logp, np.nan)
    out["target_obs_ts"] = frame["ts"].to_numpy()[np.maximum(j, 0)]
    out.loc[~ok, "target_obs_ts"] = pd.NaT
    with np.errstate(divide="ignore", invalid="ignore"):
        out["z"] = out["y"].to_numpy() / safe_sigma
    return out
