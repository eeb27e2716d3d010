"""Rolling-origin backtest of every candidate on the same origins, scores and 80 % intervals.

Folds. Let ``U`` be the sorted origin times that have an observed target. The last
``test_fraction`` of ``U`` is split into ``folds`` consecutive blocks of equal count. For the block
starting at ``a``, every learned candidate is fitted on the origins in
``[a - H - train_seconds, a - H]`` - a gap of one horizon, so every training target was observed
at or before ``a`` - and every candidate predicts every origin of the block.

Scores, per candidate over all test origins (``p`` origin price, ``y`` realized price as of
``t + H``, ``f`` forecast; errors in % of ``p`` so coins of any price level pool):

* ``e = 100 (y - f) / p``; ``MAE = mean |e|``; ``MASE = MAE / MAE(naive)`` on the same origins;
* directional accuracy = share of forecasts with ``sign(f - p) == sign(y - p)`` (a flat forecast
  is right only when the price did not move: the naive forecast scores the share of flat outcomes);
* interval: standardized residuals ``u = (log(y / p) - r_hat) / sigma``; the interval of block k
  uses the 10 % and 90 % quantiles of ``u`` from blocks ``< k`` (out of sample, split-conformal
  style), widened to contain 0 so that ``lower <= forecast <= upper``:
  ``[p exp(r_hat + q10 sigma), p exp(r_hat + q90 sigma)]``; ``coverage_80`` = share of outcomes
  inside, over blocks 2..K. Served intervals use the quantiles of all blocks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from marketflow_assets.forecasting import gate
from marketflow_assets.forecasting.features import build_features, find_leader, with_leader
from marketflow_assets.forecasting.models import CANDIDATES, NAIVE, make_candidate

LOWER_Q, UPPER_Q = 0.10, 0.90


@dataclass(frozen=True)
class BacktestConfig:
    horizon_s: int = 300
    train_seconds: float = 6 * 3600.0
    folds: int = 4
    test_fraction: float = 0.5
    seed: int = 0
    candidates: tuple[str, ...] = tuple(CANDIDATES)
    alpha: float = gate.ALPHA
    min_test_origins: int = gate.MIN_TEST_ORIGINS


@dataclass
class Evaluation:
    """Outcome of :func:`run_backtest`."""

    table: pd.DataFrame  # one row per candidate: metrics, DM, quantiles, promoted
    promoted: str
    reason: str
    scored: pd.DataFrame  # per test forecast: coin_id, ts, fold, price, y, sigma, r_<model>
    folds: list[dict] = field(default_factory=list)  # per fold: bounds, training audit
    seconds: dict[str, float] = field(default_factory=dict)
    horizon_steps: int = 1
    leader: str | None = None


def horizon_steps(ts: pd.Series, horizon_s: int) -> int:
    """Horizon in polls: ``round(H / median spacing of snapshot times)``, at least 1."""
    times = np.sort(pd.to_datetime(ts, utc=True).unique())
    if len(times) < 2:
        return 1
    spacing = np.median(np.diff(times).astype("timedelta64[us]").astype(np.int64)) / 1e6
    return max(1, int(round(horizon_s / spacing))) if spacing > 0 else 1


def fold_starts(origin_times: np.ndarray, folds: int, test_fraction: float) -> list[int]:
    """Indices into ``origin_times`` where each test block starts (plus the end)."""
    n = len(origin_times)
    first = int(round(n * (1.0 - test_fraction)))
    edges = np.linspace(first, n, folds + 1).round().astype(int)
    return sorted(set(int(e) for e in edges))


def interval_quantiles(u: np.ndarray) -> tuple[float, float]:
    """10 % / 90 % quantiles of standardized residuals, widened to contain 0."""
    u = u[np.isfinite(u)]
    if len(u) == 0:
        return 0.0, 0.0
    lo, hi = np.quantile(u, [LOWER_Q, UPPER_Q])
    return min(float(lo), 0.0), max(float(hi), 0.0)


def interval(price, r_hat, sigma, q_lo, q_hi) -> tuple[np.ndarray, np.ndarray]:
    """``[p exp(r_hat + q_lo sigma), p exp(r_hat + q_hi sigma)]``."""
    price, r_hat, sigma = (np.asarray(v, dtype=np.float64) for v in (price, r_hat, sigma))
    return price * np.exp(r_hat + q_lo * sigma), price * np.exp(r_hat + q_hi * sigma)


def point_metrics(price, actual, forecast) -> dict[str, float]:
    """MAE (in % of the origin price) and directional accuracy of one model."""
    price, actual, forecast = (np.asarray(v, dtype=np.float64) for v in (price, actual, forecast))
    err = 100.0 * (actual - forecast) / price
    direction = np.sign(forecast - price) == np.sign(actual - price)
    return {
        "mae": float(np.mean(np.abs(err))) if len(err) else float("nan"),
        "directional_accuracy": float(np.mean(direction)) if len(err) else float("nan"),
    }


def mase(mae: float, naive_mae: float) -> float:
    if naive_mae > 0:
        return mae / naive_mae
    return 1.0 if mae == 0 else float("inf")


def run_backtest(panel: pd.DataFrame, config: BacktestConfig | None = None) -> Evaluation:
    """Backtest every candidate on ``panel`` (see :mod:`.features` for its columns)."""
    config = config or BacktestConfig()
    names = [NAIVE, *(c for c in config.candidates if c != NAIVE)]
    t0 = time.perf_counter()
    feats = build_features(panel, config.horizon_s)
    seconds = {"features": time.perf_counter() - t0}
    steps = horizon_steps(feats["ts"], config.horizon_s)
    usable = feats[np.isfinite(feats["y"]) & np.isfinite(feats["sigma"])]
    origin_times = np.sort(usable["ts"].unique())
    h = pd.Timedelta(seconds=config.horizon_s)
    starts = fold_starts(origin_times, config.folds, config.test_fraction)
    if len(origin_times) and starts and starts[0] < len(origin_times):
        # the leader coin is chosen on data observed before the first test origin
        leader = find_leader(feats, pd.Timestamp(origin_times[starts[0]]))
        if leader is not None:
            feats = with_leader(feats, leader)
            usable = feats[np.isfinite(feats["y"]) & np.isfinite(feats["sigma"])]
    pieces, fold_info = [], []
    fit_seconds = 0.0
    for k in range(len(starts) - 1):
        a = pd.Timestamp(origin_times[starts[k]])
        b = pd.Timestamp(origin_times[starts[k + 1]]) if starts[k + 1] < len(origin_times) else None
        test = usable[(usable["ts"] >= a) & ((usable["ts"] < b) if b is not None else True)]
        train = usable[
            (usable["ts"] <= a - h)
            & (usable["ts"] >= a - h - pd.Timedelta(seconds=config.train_seconds))
        ]
        info = {
            "fold": k,
            "test_start": a,
            "test_end": b,
            "train_rows": len(train),
            "train_last_origin": train["ts"].max() if len(train) else None,
            "train_last_target": train["target_obs_ts"].max() if len(train) else None,
            "test_rows": len(test),
            "fitted": [],
        }
        if test.empty:
            continue
        out = test[["coin_id", "ts", "price", "y", "sigma"]].copy()
        out["fold"] = k
        for name in names:
            model = make_candidate(name)
            if model.learned:
                try:
                    t1 = time.perf_counter()
                    model.fit(train, seed=config.seed)
                    fit_seconds += time.perf_counter() - t1
                    info["fitted"].append(name)
                except ValueError:
                    out[f"r_{name}"] = np.nan  # not enough training data in this fold
                    continue
            out[f"r_{name}"] = model.predict_ret(test)
        pieces.append(out)
        fold_info.append(info)
    seconds["fit"] = fit_seconds
    scored = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame()
    # every candidate on the same origins: those every candidate could forecast
    r_cols = [f"r_{n}" for n in names]
    if not scored.empty:
        complete = scored[r_cols].notna().all(axis=1)
        if not complete.all():  # a learned model could not be fitted in an early fold
            usable_names = [n for n in names if scored[f"r_{n}"].notna().any()]
            names = [n for n in names if n in usable_names]
            keep = scored[[f"r_{n}" for n in names]].notna().all(axis=1)
            scored = scored[keep].reset_index(drop=True)
    table, decision = score(scored, names, steps, config)
    if scored.empty and len(usable):
        # no backtest yet: the naive forecast fits nothing, so its residuals y / sigma on the
        # history are already out of sample - its interval comes from them
        q_lo, q_hi = interval_quantiles((usable["y"] / usable["sigma"]).to_numpy())
        table.loc[table["model"] == NAIVE, ["q_lower", "q_upper"]] = [q_lo, q_hi]
    seconds["total"] = time.perf_counter() - t0
    leader = feats.attrs.get("leader")
    return Evaluation(
        table, decision.promoted, decision.reason, scored, fold_info, seconds, steps, leader
    )


def score(
    scored: pd.DataFrame, names: list[str], steps: int, config: BacktestConfig
) -> tuple[pd.DataFrame, gate.Decision]:
    """Metrics, DM tests, interval quantiles and the gate decision from scored forecasts."""
    rows, learned = [], {}
    if scored.empty:
        decision = gate.Decision(NAIVE, "naive serves: not enough history for a backtest")
        for name in names:
            rows.append(_row(name, 0, np.nan, np.nan, np.nan, np.nan, None, 0.0, 0.0))
        return _finish(rows, decision), decision
    price = scored["price"].to_numpy()
    actual = price * np.exp(scored["y"].to_numpy())
    sigma = scored["sigma"].to_numpy()
    folds = scored["fold"].to_numpy()
    fold_ids = np.unique(folds)
    naive_loss = np.abs(100.0 * (actual - price) / price)
    naive_mae = float(naive_loss.mean())
    for name in names:
        r_hat = scored[f"r_{name}"].to_numpy()
        forecast = price * np.exp(r_hat)
        m = point_metrics(price, actual, forecast)
        u = (scored["y"].to_numpy() - r_hat) / sigma
        covered = []
        for k in fold_ids[1:]:
            q_lo, q_hi = interval_quantiles(u[folds < k])
            inside = folds == k
            lo, hi = interval(price[inside], r_hat[inside], sigma[inside], q_lo, q_hi)
            covered.append((actual[inside] >= lo) & (actual[inside] <= hi))
        coverage = float(np.concatenate(covered).mean()) if covered else float("nan")
        q_lo, q_hi = interval_quantiles(u)
        model_mase = mase(m["mae"], naive_mae)
        dm = None
        if make_candidate(name).learned:
            loss = np.abs(100.0 * (actual - forecast) / price)
            dm = gate.diebold_mariano(naive_loss, loss, scored["ts"].to_numpy(), steps)
            learned[name] = (model_mase, dm)
        rows.append(
            _row(
                name,
                len(scored),
                m["mae"],
                model_mase,
                m["directional_accuracy"],
                coverage,
                dm,
                q_lo,
                q_hi,
            )
        )
    decision = gate.choose(NAIVE, learned, config.alpha, config.min_test_origins)
    return _finish(rows, decision), decision


def _row(name, n, mae, model_mase, da, coverage, dm, q_lo, q_hi) -> dict:
    return {
        "model": name,
        "n": int(n),
        "mae": mae,
        "mase": model_mase,
        "directional_accuracy": da,
        "coverage_80": coverage,
        "dm_stat": None if dm is None else dm.statistic,
        "dm_pvalue": None if dm is None else dm.p_value,
        "q_lower": q_lo,
        "q_upper": q_hi,
    }


def _finish(rows: list[dict], decision: gate.Decision) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    table["promoted"] = table["model"] == decision.promoted
    table["learned"] = [make_candidate(m).learned for m in table["model"]]
    return table
