"""Forecast warm-up: how much history the first training needs, and how far along it is.

A backtest origin ``t`` is *usable* when its scale and its target are known:

* ``sigma(t)`` needs ``min(H, RV_WINDOW_SECONDS)`` of history before ``t``
  (:func:`marketflow_assets.forecasting.features.build_features`);
* the target needs a snapshot at ``t + H - H/5`` or later (the tolerance of the target match).

The backtest tests the newest ``test_fraction`` of the usable origin times and the promotion
gate needs at least ``MIN_TEST_ORIGINS`` of them, so the first training needs
``ceil(MIN_TEST_ORIGINS / test_fraction)`` usable origin times. Before that, no model is trained
and no forecast is served: a model fitted on nothing has a zero-width interval and ``nan``
scores. With 30-second polls and ``H`` = 5 min that is 60 origins: about 40 minutes of data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from marketflow_assets.forecasting.features import RV_WINDOW_SECONDS
from marketflow_assets.forecasting.gate import MIN_TEST_ORIGINS

TEST_FRACTION = 0.5  # the backtest's default (BacktestConfig.test_fraction)


@dataclass(frozen=True)
class WarmUp:
    """How far the history is from the first training."""

    origins: int  # usable origin times so far
    needed: int  # usable origin times the first backtest needs
    remaining_s: float | None  # at the current poll spacing; None when it cannot be told yet

    @property
    def ready(self) -> bool:
        return self.origins >= self.needed

    def message(self) -> str:
        if self.ready:
            return f"enough history: {self.origins} usable forecast origins (>= {self.needed})"
        more = (
            f", about {math.ceil(self.remaining_s / 60)} min more"
            if self.remaining_s is not None
            else ""
        )
        return f"warming up: {self.origins} of {self.needed} forecast origins{more}"


def needed_origins(min_test_origins: int = MIN_TEST_ORIGINS, test_fraction: float = TEST_FRACTION):
    """Usable origin times the first backtest needs: its test part must hold the gate's minimum."""
    return math.ceil(min_test_origins / test_fraction)


def warm_up(
    snapshot_times,
    horizon_s: int,
    min_test_origins: int = MIN_TEST_ORIGINS,
    test_fraction: float = TEST_FRACTION,
) -> WarmUp:
    """The warm-up state of a history whose snapshots were taken at ``snapshot_times``."""
    needed = needed_origins(min_test_origins, test_fraction)
    ts = pd.to_datetime(pd.Series(snapshot_times, dtype=object), utc=True)
    t_us = np.unique(ts.dt.tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.int64))
    if len(t_us) < 2:
        return WarmUp(0, needed, None)
    h_us = int(horizon_s * 1e6)
    first_ok = t_us[0] + int(min(horizon_s, RV_WINDOW_SECONDS) * 1e6)
    last_ok = t_us[-1] - (h_us - h_us // 5)
    origins = int(np.count_nonzero((t_us >= first_ok) & (t_us <= last_ok)))
    spacing_s = float(np.median(np.diff(t_us))) / 1e6
    remaining = max(0, needed - origins) * spacing_s if spacing_s > 0 else None
    if origins == 0 and remaining is not None:  # the first origin waits for both ends
        span_s = (t_us[-1] - t_us[0]) / 1e6
        remaining += max(0.0, min(horizon_s, RV_WINDOW_SECONDS) + horizon_s * 0.8 - span_s)
    return WarmUp(origins, needed, remaining)
