"""Pure forecasting math: features use no later data, scores and DM test checked by hand, gate."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from marketflow_assets.forecasting import backtest as bt
from marketflow_assets.forecasting import gate
from marketflow_assets.forecasting.features import FEATURE_COLUMNS, build_features
from marketflow_assets.forecasting.serve import look_ahead_audit
from marketflow_assets_tests.forecasting import synthetic

CHECKED = [*FEATURE_COLUMNS, "sigma", "drift_ret", "ema_ret"]


def irregular_panel(seed: int = 5) -> pd.DataFrame:
    raw = synthetic.raw_rows("momentum", coins=8, hours=2.0, seed=seed)
    rng = np.random.default_rng(seed)
    raw = raw[rng.random(len(raw)) > 0.15]  # coins missing from some polls
    jitter = pd.to_timedelta(rng.integers(0, 4000, len(raw)), unit="ms")
    raw = raw.assign(last_updated=raw["ts"] - jitter)
    return synthetic.panel(raw)


def test_features_do_not_change_when_later_data_is_removed_or_altered():
    panel = irregular_panel()
    full = build_features(panel, 300, leader="bitcoin").set_index(["coin_id", "ts"])
    times = np.sort(panel["ts"].unique())
    rng = np.random.default_rng(1)
    for origin in rng.choice(times[10:], 6, replace=False):
        origin = pd.Timestamp(origin)
        cut = build_features(panel[panel["ts"] <= origin], 300, leader="bitcoin")
        # and a panel whose future is replaced by nonsense
        altered = panel.copy()
        later = altered["ts"] > origin
        altered.loc[later, "price"] *= rng.uniform(0.5, 2.0, later.sum())
        alt = build_features(altered, 300, leader="bitcoin")
        for other in (cut, alt):
            at = other[other["ts"] == origin].set_index(["coin_id", "ts"])
            assert len(at) > 0
            np.testing.assert_allclose(
                at[CHECKED].to_numpy(), full.loc[at.index, CHECKED].to_numpy(), rtol=0, atol=1e-12
            )
    audit = look_ahead_audit(panel, 300, [pd.Timestamp(t) for t in times[[30, 100, -1]]])
    assert audit["ok"] and audit["origins_checked"] == 3


def test_target_is_the_price_as_of_the_horizon_by_hand():
    ts = pd.to_datetime(["2024-01-01T00:00:00Z", "2024-01-01T00:02:00Z", "2024-01-01T00:04:30Z",
                         "2024-01-01T00:05:10Z", "2024-01-01T00:09:00Z"])  # fmt: skip
    panel = pd.DataFrame({"coin_id": "a", "ts": ts, "price": [100.0, 101.0, 102.0, 104.0, 99.0]})
    f = build_features(panel, 300)
    # origin 00:00 -> as of 00:05:00 is the 00:04:30 price (within H/5 = 60 s): log(102/100)
    assert f["y"].iloc[0] == pytest.approx(math.log(102 / 100), abs=1e-15)
    # origin 00:02 -> as of 00:07:00 is 00:05:10 (110 s early > 60 s tolerance): no target
    assert np.isnan(f["y"].iloc[1])
    # origin 00:04:30 -> as of 00:09:30 is 00:09:00 (30 s early): log(99/102)
    assert f["y"].iloc[2] == pytest.approx(math.log(99 / 102), abs=1e-15)
    assert np.isnan(f["y"].iloc[4])  # nothing after the last observation
    # ret_300 of 00:05:10: latest observation at least 300 s older is 00:00 -> log(104/100)
    sigma = f["sigma"].iloc[3]
    assert f["ret_300"].iloc[3] * sigma == pytest.approx(math.log(104 / 100), rel=1e-12)
    # sigma needs one horizon of history: none at 00:02 (120 s); at 00:05:10 (310 s) it is
    # sqrt(H / span * sum r^2) over the three returns so far
    assert np.isnan(f["sigma"].iloc[1])
    r = np.diff(np.log([100.0, 101.0, 102.0, 104.0]))
    assert f["sigma"].iloc[3] == pytest.approx(math.sqrt(300 / 310 * float(r @ r)), rel=1e-12)


def test_scores_by_hand_on_a_tiny_case():
    sigma = 0.01
    scored = pd.DataFrame(
        {
            "ts": pd.to_datetime(
                ["2024-01-01T00:00Z", "2024-01-01T00:00Z", "2024-01-01T00:01Z", "2024-01-01T00:01Z"]
            ),  # fmt: skip
            "fold": [0, 0, 1, 1],
            "price": [100.0, 200.0, 100.0, 50.0],
            "y": np.log([101 / 100, 198 / 200, 100 / 100, 51 / 50]),
            "sigma": sigma,
            "r_naive_last_price": 0.0,
            "r_drift": np.log([100.5 / 100, 201 / 200, 100.2 / 100, 50.5 / 50]),
        }
    )
    table, decision = bt.score(scored, ["naive_last_price", "drift"], 1, bt.BacktestConfig())
    naive, drift = (
        table.set_index("model").loc["naive_last_price"],
        table.set_index("model").loc["drift"],
    )
    # naive errors in % of the origin price: 1, -1, 0, 2 -> MAE 1.0
    assert naive["mae"] == pytest.approx(1.0, abs=1e-12) and naive["mase"] == 1.0
    # drift forecasts 100.5, 201, 100.2, 50.5: errors 0.5, -1.5, -0.2, 1 -> MAE 0.8, MASE 0.8
    assert drift["mae"] == pytest.approx(0.8, abs=1e-12)
    assert drift["mase"] == pytest.approx(0.8, abs=1e-12)
    # directions: drift up,up,up,up vs actual up,down,flat,up -> 2/4; naive flat -> 1/4 (flat)
    assert drift["directional_accuracy"] == 0.5 and naive["directional_accuracy"] == 0.25
    assert naive["n"] == drift["n"] == 4
    # fold 1 intervals use fold-0 residuals u = (y - r)/sigma; naive: u = 99.5033.., -100.5034..
    u = np.log([1.01, 0.99]) / sigma
    q10, q90 = u[1] + 0.1 * (u[0] - u[1]), u[1] + 0.9 * (u[0] - u[1])
    assert (q10, q90) == pytest.approx((-0.805027, 0.795026), abs=1e-6)
    # [100 e^(q10 s), 100 e^(q90 s)] holds 100; [50 e^(q10 s), 50 e^(q90 s)] = [49.60, 50.40]
    # does not hold 51 -> coverage 1/2
    assert naive["coverage_80"] == 0.5
    assert decision.promoted == "naive_last_price"  # drift is a baseline, never promoted


def test_newey_west_and_dm_by_hand():
    # d = 1,2,3,4: gamma0 = 1.25, gamma1 = 0.3125, lag 1 -> 1.25 + 2 * 0.5 * 0.3125
    assert gate.newey_west_variance(np.array([1.0, 2, 3, 4]), 1) == pytest.approx(1.5625)
    rng = np.random.default_rng(0)
    loss_naive = rng.uniform(0, 1, 400)
    better = gate.diebold_mariano(loss_naive, loss_naive - 0.1, np.arange(400), 1)
    assert better.p_value < 1e-6
    same = gate.diebold_mariano(loss_naive, loss_naive, np.arange(400), 1)
    assert same.p_value == 1.0
    worse = gate.diebold_mariano(loss_naive, loss_naive + rng.uniform(0, 0.2, 400),
                                 np.arange(400), 1)  # fmt: skip
    assert worse.p_value > 0.99


def test_gate_rules():
    ok = gate.DMResult(3.0, 0.001, 200, 20)
    weak = gate.DMResult(1.9, 0.03, 200, 20)  # significant alone, not after Bonferroni (m = 2)
    few = gate.DMResult(5.0, 1e-9, 10, 20)
    d = gate.choose("naive", {"ridge": (0.9, ok), "lightgbm": (0.8, weak)})
    assert d.promoted == "ridge" and "0.025" in d.reason
    assert gate.choose("naive", {"ridge": (1.01, ok)}).promoted == "naive"
    assert gate.choose("naive", {"ridge": (0.5, few)}).promoted == "naive"
    assert "not significant" in gate.choose("naive", {"a": (0.9, weak), "b": (2, ok)}).reason


def test_folds_keep_a_gap_of_one_horizon():
    panel = synthetic.panel(synthetic.raw_rows("random_walk", coins=6, hours=2.0, seed=2))
    ev = bt.run_backtest(panel, bt.BacktestConfig(candidates=("naive_last_price", "ridge")))
    assert len(ev.folds) == 4
    for fold in ev.folds:
        assert fold["train_last_origin"] <= fold["test_start"] - pd.Timedelta(seconds=300)
        assert fold["train_last_target"] <= fold["test_start"]
    # every candidate scored on the same origins
    assert ev.table["n"].nunique() == 1 and ev.table["n"].iloc[0] == len(ev.scored)
