"""Live error of served forecasts, the retraining trigger.

For served forecasts whose target time has passed: ``realized`` = the coin's price as of
``target_ts`` (latest observation at or before it), ``origin`` = its price at ``origin_ts``.
``mae`` = mean ``100 |realized - predicted| / origin`` (as in the backtest), ``naive_mae`` the
same for the naive forecast (``origin``), ``mase = mae / naive_mae``, ``coverage_80`` = share of
realized prices inside ``[lower_80, upper_80]``.

:func:`degraded` says whether to retrain: with at least ``min_n`` scored forecasts from
``min_origins`` origins, a learned model whose live MASE reached 1 (it no longer beats naive),
any model whose live MAE exceeds ``ratio`` x its backtest MAE (the market changed), or whose 80 %
interval held fewer than ``min_coverage`` of the realized prices (its interval is too narrow for
the market now).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MIN_N = 100
MIN_ORIGINS = 20
MAE_RATIO = 1.5
MIN_COVERAGE = 0.6  # of the nominal 80 %: below it the interval no longer means what it says


def live_error(scored: pd.DataFrame) -> dict[str, float]:
    """``scored``: ``origin_ts``, ``predicted_price``, ``lower_80``, ``upper_80``,
    ``origin_price``, ``realized_price`` (rows without a realized price are ignored)."""
    ok = scored["realized_price"].notna() & scored["origin_price"].notna()
    s = scored[ok]
    if s.empty:
        return {"n": 0, "origins": 0, "mae": np.nan, "naive_mae": np.nan, "mase": np.nan,
                "coverage_80": np.nan}  # fmt: skip
    origin = s["origin_price"].to_numpy(np.float64)
    realized = s["realized_price"].to_numpy(np.float64)
    mae = float(np.mean(np.abs(realized - s["predicted_price"].to_numpy(np.float64)) / origin))
    naive = float(np.mean(np.abs(realized - origin) / origin))
    inside = (realized >= s["lower_80"].to_numpy()) & (realized <= s["upper_80"].to_numpy())
    return {
        "n": int(len(s)),
        "origins": int(s["origin_ts"].nunique()),
        "mae": 100.0 * mae,
        "naive_mae": 100.0 * naive,
        "mase": mae / naive if naive > 0 else (1.0 if mae == 0 else np.inf),
        "coverage_80": float(inside.mean()),
    }


def degraded(
    live: dict[str, float],
    backtest_mae: float,
    learned: bool,
    min_n: int = MIN_N,
    min_origins: int = MIN_ORIGINS,
    ratio: float = MAE_RATIO,
    min_coverage: float = MIN_COVERAGE,
) -> str | None:
    """Why the served model should be retrained now, or None."""
    if live["n"] < min_n or live["origins"] < min_origins:
        return None
    if learned and live["mase"] >= 1.0:
        return f"live MASE {live['mase']:.3f} >= 1 over {live['n']} forecasts"
    if backtest_mae and backtest_mae > 0 and live["mae"] > ratio * backtest_mae:
        return (
            f"live MAE {live['mae']:.4f}% > {ratio} x backtest MAE {backtest_mae:.4f}% "
            f"over {live['n']} forecasts"
        )
    coverage = live.get("coverage_80", np.nan)
    if np.isfinite(coverage) and coverage < min_coverage:
        return (
            f"live coverage of the 80 % interval {coverage:.2f} < {min_coverage} "
            f"over {live['n']} forecasts"
        )
    return None
