"""The gate on data: nothing predictable -> naive serves; planted structure -> a learned model
serves; the look-ahead trap (a common factor only the future reveals) is not exploited."""

from __future__ import annotations

import numpy as np
import pytest

from marketflow_assets.forecasting import backtest as bt
from marketflow_assets.forecasting import features as feat_mod
from marketflow_assets.forecasting import models
from marketflow_assets_tests.forecasting import synthetic


def evaluate(kind: str, seed: int, coins: int = 20, hours: float = 3.0) -> bt.Evaluation:
    panel = synthetic.panel(synthetic.raw_rows(kind, coins=coins, hours=hours, seed=seed))
    return bt.run_backtest(panel, bt.BacktestConfig(seed=seed))


@pytest.mark.parametrize("seed", [11, 12])
def test_random_walk_gate_refuses_every_learned_model(seed):
    ev = evaluate("random_walk", seed)
    assert ev.promoted == models.NAIVE, ev.reason
    learned = ev.table[ev.table["learned"]]
    assert len(learned) == 2 and (learned["mase"] > 0.97).all()
    assert ev.table["promoted"].sum() == 1
    naive = ev.table.set_index("model").loc[models.NAIVE]
    assert 0.7 <= naive["coverage_80"] <= 0.9


@pytest.mark.parametrize("kind", ["mean_reversion", "momentum", "trend", "lead_lag_5min"])
def test_planted_structure_promotes_a_learned_model(kind):
    ev = evaluate(kind, seed=3)
    row = ev.table.set_index("model").loc[ev.promoted]
    assert row["learned"], ev.reason
    assert row["mase"] < 0.95 and row["dm_pvalue"] < 0.025
    assert 0.7 <= row["coverage_80"] <= 0.9
    if kind == "lead_lag_5min":  # the leader was found in the training data, not assumed
        assert ev.leader == "coin010" and row["mase"] <= 0.8


def test_look_ahead_trap_common_factor_is_not_seen():
    """Coins share one factor at the same instant: the past predicts nothing, but any peek at
    another coin's price after the origin would predict almost perfectly."""
    ev = evaluate("market_factor", seed=4)
    assert ev.promoted == models.NAIVE, ev.reason
    assert (ev.table.loc[ev.table["learned"], "mase"] > 0.97).all()


def test_look_ahead_trap_has_teeth(monkeypatch):
    """Control: the same data with a deliberately leaked feature (the market's move over the
    next horizon) is won easily - so the trap above would catch a leak."""
    real_build = feat_mod.build_features

    def leaky(panel, horizon_s, leader=None):
        f = real_build(panel, horizon_s, leader)
        future_market = f.groupby("ts")["y"].transform("mean").fillna(0.0)
        f["leak"] = (future_market / f["sigma"]).fillna(0.0)
        return f

    monkeypatch.setattr(bt, "build_features", leaky)
    monkeypatch.setattr(models, "FEATURE_COLUMNS", (*feat_mod.FEATURE_COLUMNS, "leak"))
    ev = evaluate("market_factor", seed=4)
    assert ev.promoted != models.NAIVE
    assert ev.table.set_index("model").loc[ev.promoted, "mase"] < 0.6


def test_fit_is_seconds_and_deterministic():
    a, b = evaluate("momentum", seed=5, coins=10, hours=2), evaluate("momentum", 5, 10, 2)
    np.testing.assert_array_equal(a.table["mae"].to_numpy(), b.table["mae"].to_numpy())
    assert a.promoted == b.promoted
