"""Forecast assets end to end: real raw Parquet + real PostgreSQL + ``dg.materialize``.

Indicator rows are written with the project's own indicator function (as ``marketflow refresh``
would); ``last_updated`` comes from the raw Parquet. ``marketflow refresh`` + ``marketflow
forecast`` themselves are exercised in ``test_forecast_command``.
"""

from __future__ import annotations

import argparse
import dataclasses

import dagster as dg
import pandas as pd
import pytest

from marketflow_assets.definitions import build_resources
from marketflow_assets.defs.forecasts import command as forecast
from marketflow_assets.defs.forecasts.assets import FORECAST_ASSETS, artifact_path
from marketflow_assets.defs.forecasts.checks import FORECAST_CHECKS
from marketflow_assets.defs.indicators import refresh
from marketflow_assets.defs.indicators.assets import price_indicators
from marketflow_assets.defs.raw_prices.assets import raw_prices
from marketflow_assets.settings import load_settings
from marketflow_assets_tests.forecasting import synthetic
from marketflow_assets_tests.helpers import read_table

CONFIG = {"history_hours": 12.0, "train_hours": 6.0}
RUN_CONFIG = {"ops": {a.key.to_user_string(): {"config": CONFIG} for a in FORECAST_ASSETS}}


def load_data(kind: str, resources, data_dir, seed: int, coins: int = 12, hours: float = 2.5):
    raw = synthetic.raw_rows(kind, coins=coins, hours=hours, seed=seed)
    synthetic.write_raw(data_dir / "raw_prices", raw)
    rows = synthetic.panel(raw).drop(columns=["last_updated"])
    postgres = resources["postgres"]
    postgres.ensure_tables()
    start, end = rows["ts"].min(), rows["ts"].max() + pd.Timedelta(seconds=1)
    postgres.replace_period("price_indicators", rows, start, end)
    return raw


def materialize(resources, instance):
    return dg.materialize(
        [raw_prices, price_indicators, *FORECAST_ASSETS, *FORECAST_CHECKS],
        selection=[a.key for a in FORECAST_ASSETS],
        resources=resources,
        instance=instance,
        run_config=RUN_CONFIG,
    )


def checks_of(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {c.check_name: c for c in result.get_asset_check_evaluations()}


def snapshot(url: str) -> dict:
    out = {}
    for table in ("forecast_evaluation", "price_forecasts"):
        frame = read_table(url, table)
        out[table] = sorted(tuple(str(v) for v in row) for row in frame.itertuples(index=False))
    return out


@pytest.fixture
def resources(pg_clean, data_dir):
    return build_resources(pg_clean, str(data_dir))


def test_random_walk_naive_serves_with_a_warning_and_rematerializing_is_idempotent(
    resources, data_dir, pg_clean
):
    raw = load_data("random_walk", resources, data_dir, seed=21)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(resources, instance)
    assert result.success

    evaluation = read_table(pg_clean, "forecast_evaluation")
    assert set(evaluation["model"]) == {
        "naive_last_price", "drift", "ema_reversion", "ridge", "lightgbm"
    }  # fmt: skip
    assert evaluation["promoted"].sum() == 1
    promoted = evaluation[evaluation["promoted"]].iloc[0]
    assert promoted["model"] == "naive_last_price"
    assert (evaluation.loc[evaluation["learned"], "mase"] > 0.97).all()
    assert evaluation["n"].nunique() == 1  # same origins for every candidate

    forecasts = read_table(pg_clean, "price_forecasts")
    newest = raw["ts"].max()
    last = raw[raw["ts"] == newest].set_index("id")["current_price"]
    assert sorted(forecasts["coin_id"]) == sorted(last.index)
    assert (pd.to_datetime(forecasts["origin_ts"], utc=True) == newest).all()
    assert (forecasts["horizon_s"] == 300).all() and (
        forecasts["model"] == "naive_last_price"
    ).all()
    by_coin = forecasts.set_index("coin_id")
    pd.testing.assert_series_equal(
        by_coin["predicted_price"].sort_index(), last.sort_index(), check_names=False
    )
    assert (by_coin["lower_80"] <= by_coin["predicted_price"]).all()
    assert (by_coin["predicted_price"] <= by_coin["upper_80"]).all()
    assert (by_coin["lower_80"] < by_coin["upper_80"]).all()

    checks = checks_of(result)
    assert not checks["learned_model_promoted"].passed
    assert checks["learned_model_promoted"].severity == dg.AssetCheckSeverity.WARN
    assert "naive serves" in checks["learned_model_promoted"].description
    assert checks["no_look_ahead"].passed
    assert checks["intervals_ordered"].passed
    assert artifact_path(str(data_dir), 300).is_file()

    before = snapshot(pg_clean)
    assert materialize(resources, instance).success
    assert snapshot(pg_clean) == before


def parse(module, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("kind", ["trend", "mean_reversion"])
def test_forecast_command_promotes_a_learned_model_on_planted_structure(
    kind, pg_clean, data_dir, capsys, monkeypatch
):
    """``marketflow refresh`` then ``marketflow forecast`` on raw Parquet only."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    raw = synthetic.raw_rows(kind, coins=12, hours=2.5, seed=31)
    synthetic.write_raw(data_dir / "raw_prices", raw)
    settings = dataclasses.replace(load_settings({}), postgres_url=pg_clean, data_dir=data_dir)
    assert refresh.run(parse(refresh, "--partitions-per-run", "24"), settings) == 0
    assert forecast.run(parse(forecast), settings) == 0
    out = capsys.readouterr().out
    assert "MASE" in out and "coverage 80%" in out and "promoted:" in out

    evaluation = read_table(pg_clean, "forecast_evaluation").set_index("model")
    promoted = evaluation[evaluation["promoted"]]
    assert len(promoted) == 1 and bool(promoted["learned"].iloc[0]), out
    limit = 0.8 if kind == "trend" else 0.97
    assert promoted["mase"].iloc[0] <= limit
    assert promoted["dm_pvalue"].iloc[0] < 0.025
    assert 0.7 <= promoted["coverage_80"].iloc[0] <= 0.9
    forecasts = read_table(pg_clean, "price_forecasts")
    assert len(forecasts) == raw["id"].nunique()
    assert (forecasts["model"] == promoted.index[0]).all()
    assert (forecasts["lower_80"] <= forecasts["predicted_price"]).all()
    assert (forecasts["predicted_price"] <= forecasts["upper_80"]).all()
    if kind == "trend":  # the forecast moves with each coin's drift, not flat
        last = raw[raw["ts"] == raw["ts"].max()].set_index("id")["current_price"]
        moved = forecasts.set_index("coin_id")["predicted_price"] / last - 1
        assert (moved.abs() > 1e-4).all()


def test_forecast_command_without_indicators_says_so(pg_clean, data_dir, capsys):
    settings = dataclasses.replace(load_settings({}), postgres_url=pg_clean, data_dir=data_dir)
    assert forecast.run(parse(forecast), settings) == 0
    assert "marketflow refresh" in capsys.readouterr().out


def test_little_history_serves_naive_with_a_real_interval(resources, data_dir, pg_clean):
    """40 minutes of data: too little for a backtest (a fresh `marketflow up`); naive serves,
    its interval from the history's own horizon moves, never zero-width."""
    load_data("random_walk", resources, data_dir, seed=5, coins=6, hours=40 / 60)
    result = materialize(resources, dg.DagsterInstance.ephemeral())
    assert result.success
    evaluation = read_table(pg_clean, "forecast_evaluation")
    assert evaluation.loc[evaluation["promoted"], "model"].tolist() == ["naive_last_price"]
    forecasts = read_table(pg_clean, "price_forecasts")
    assert len(forecasts) == 6
    assert (forecasts["lower_80"] < forecasts["predicted_price"]).all()
    assert (forecasts["predicted_price"] < forecasts["upper_80"]).all()
    assert checks_of(result)["no_look_ahead"].passed


def test_forecast_command_rejects_a_short_horizon(pg_clean, data_dir):
    import subprocess
    import sys
    from pathlib import Path

    marketflow = Path(sys.executable).with_name("marketflow")
    env = {"MARKETFLOW_POSTGRES_URL": pg_clean, "MARKETFLOW_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [str(marketflow), "forecast", "--horizon", "60"],
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "--horizon must be at least 300" in done.stderr
