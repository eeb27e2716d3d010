"""Forecast training cost: one fit of each learned model, and the whole backtest, on 250 coins.

Data: 250 coins polled every 30 s with momentum (AR(1) returns), indicators from the project's own
function. Reports, side by side in one run: build_features seconds, one fit of ``ridge`` and of
``lightgbm`` (each including its inner validation and refit) on 6 h and on 24 h of data, and the
rolling-origin backtest (4 folds, all candidates) on the default 12 h of history. Fits see at most
``models.MAX_TRAIN_ROWS`` rows, so ``fit_24h / fit_6h`` should stay near 1.
Quick mode: 6 h and 12 h only (no 24 h fit).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd

from benchmarks.report import print_table, ratio_line

COINS = 250
STEP_S = 30


def panel(hours: float, seed: int = 0) -> pd.DataFrame:
    from marketflow_assets import indicators as ind

    rng = np.random.default_rng(seed)
    n = int(hours * 3600 / STEP_S)
    vol = rng.uniform(0.0005, 0.003, COINS)
    r = np.zeros((n, COINS))
    eps = rng.standard_normal((n, COINS)) * vol
    for t in range(1, n):
        r[t] = 0.5 * r[t - 1] + eps[t]
    prices = np.exp(rng.uniform(-4, 10, COINS)) * np.exp(np.cumsum(r, axis=0))
    ts = pd.Timestamp("2024-01-01T00:00Z") + pd.to_timedelta(np.arange(n) * STEP_S, unit="s")
    raw = pd.DataFrame(
        {
            "id": np.tile([f"coin{i:03d}" for i in range(COINS)], n),
            "ts": np.repeat(ts, COINS),
            "current_price": prices.reshape(-1),
        }
    )
    raw["symbol"] = raw["id"]
    return ind.compute_indicators(raw[list(ind.RAW_INPUT_COLUMNS)])


def _fit_seconds(feats: pd.DataFrame, name: str) -> float:
    from marketflow_assets.forecasting.models import make_candidate

    t0 = time.perf_counter()
    make_candidate(name).fit(feats)
    return time.perf_counter() - t0


def run(mode: str) -> None:
    from marketflow_assets.forecasting.backtest import BacktestConfig, run_backtest
    from marketflow_assets.forecasting.features import build_features

    warnings.filterwarnings("ignore")
    hours = (6, 12) if mode == "quick" else (6, 12, 24)
    data = panel(max(hours))
    newest = data["ts"].max()
    rows, fits = [], {}
    warm = build_features(data[data["ts"] > newest - pd.Timedelta(hours=1)], 300)
    for name in ("ridge", "lightgbm"):  # imports and first-call costs, untimed
        _fit_seconds(warm, name)
    for h in hours:
        part = data[data["ts"] > newest - pd.Timedelta(hours=h)]
        t0 = time.perf_counter()
        feats = build_features(part, 300)
        feat_s = time.perf_counter() - t0
        fits[h] = {name: _fit_seconds(feats, name) for name in ("ridge", "lightgbm")}
        rows.append([f"{h} h", f"{len(part):,}", f"{feat_s:.1f}",
                     f"{fits[h]['ridge']:.1f}", f"{fits[h]['lightgbm']:.1f}"])  # fmt: skip
    print_table(
        f"forecast fits ({COINS} coins, 30 s polls)",
        ["history", "rows", "features s", "ridge fit s", "lightgbm fit s"],
        rows,
    )
    t0 = time.perf_counter()
    part = data[data["ts"] > newest - pd.Timedelta(hours=12)]
    ev = run_backtest(part, BacktestConfig())
    print(f"forecast backtest 12 h: {time.perf_counter() - t0:.1f} s (promoted {ev.promoted})")
    longest = max(hours)
    for name in ("ridge", "lightgbm"):
        ratio_line(f"forecast_fit_{longest}h / forecast_fit_6h {name}",
                   fits[longest][name] / fits[6][name], "<= 2")  # fmt: skip
