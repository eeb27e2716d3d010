"""The forecast warm-up (issue 28): how many usable origins the first training needs."""

from __future__ import annotations

import pandas as pd

from marketflow_assets.forecasting import backtest as bt
from marketflow_assets.forecasting.warmup import needed_origins, warm_up
from marketflow_assets_tests.forecasting import synthetic

T0 = pd.Timestamp("2026-12-05 10:00", tz="UTC")


def _polls(minutes: float, every_s: int = 30) -> list[pd.Timestamp]:
    return [T0 + pd.Timedelta(seconds=s) for s in range(0, int(minutes * 60) + 1, every_s)]


def test_warm_up_counts_origins_with_a_known_scale_and_target():
    assert needed_origins() == 60  # the gate's 30 test origins are half of the backtest's
    assert warm_up([], 300).origins == 0 and not warm_up([], 300).ready
    # 10 minutes of 30-s polls: origins from minute 5 (scale) to minute 6 (target at +4 min)
    early = warm_up(_polls(10), 300)
    assert early.origins == 3 and not early.ready
    assert "warming up: 3 of 60 forecast origins, about 29 min more" == early.message()
    ready = warm_up(_polls(40), 300)  # origins from minute 5 to minute 36: 63
    assert ready.origins == 63 and ready.ready and ready.message().startswith("enough history")


def test_a_ready_history_gives_the_backtest_its_minimum_of_test_origins():
    """The warm-up's count is what the backtest gets: once ready, the gate has its 30 origins."""
    raw = synthetic.raw_rows("random_walk", coins=3, hours=40 / 60, seed=5)
    panel = synthetic.panel(raw)
    state = warm_up(panel["ts"], 300)
    assert state.ready
    ev = bt.run_backtest(panel, bt.BacktestConfig(candidates=("naive_last_price",)))
    assert ev.scored["ts"].nunique() >= 30
    short = panel[panel["ts"] <= panel["ts"].min() + pd.Timedelta(minutes=20)]
    assert not warm_up(short["ts"], 300).ready
