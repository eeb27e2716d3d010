"""Forecast assets: ``forecast_evaluation`` -> ``forecast_model`` -> ``price_forecasts``.

* ``forecast_evaluation`` backtests every candidate on the last ``history_hours`` of
  ``price_indicators`` (+ ``last_updated`` from the raw data), applies the promotion gate and
  writes one row per model to PostgreSQL table ``forecast_evaluation``. Its checks: the gate's
  verdict (WARN when naive serves, with the reason), the look-ahead audit and the interval
  calibration.
* ``forecast_model`` fits the promoted model on the newest ``train_hours`` and stores it under
  ``$MARKETFLOW_DATA_DIR/models/`` (training is the expensive step: hourly, or on degradation).
* ``price_forecasts`` forecasts every coin of the newest snapshot with the stored model (cheap:
  reads the last hour, runs after every indicator refresh).

All math is in :mod:`marketflow_assets.forecasting`; this module only reads and writes. Writes are
idempotent: an evaluation is keyed by the newest data time it used (``evaluated_at``), forecasts
by (coin, origin, horizon); re-materializing on the same data rewrites the same rows.
"""

import logging
import os
import pickle
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from marketflow_assets.defs.common.launch import tag_launcher
from marketflow_assets.forecasting import backtest as bt
from marketflow_assets.forecasting import report, serve
from marketflow_assets.forecasting.features import LOOKBACK_SECONDS
from marketflow_assets.forecasting.warmup import WarmUp, warm_up
from marketflow_assets.raw_dataset import list_raw_files
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource
from marketflow_assets.schema import (
    FORECAST_EVALUATION_ASSET,
    FORECAST_MODEL_ASSET,
    PRICE_FORECASTS_ASSET,
    PRICE_INDICATORS_ASSET,
    RAW_PRICES_ASSET,
    column_names,
)

logger = logging.getLogger(__name__)

GROUP = "forecasting"
CODE_VERSION = "forecast-1"
PRICE_INDICATORS_KEY = dg.AssetKey(PRICE_INDICATORS_ASSET)
EVALUATION_KEY = dg.AssetKey(FORECAST_EVALUATION_ASSET)
MODEL_KEY = dg.AssetKey(FORECAST_MODEL_ASSET)
FORECASTS_KEY = dg.AssetKey(PRICE_FORECASTS_ASSET)


class ForecastConfig(dg.Config):
    """Run configuration shared by the three forecast assets."""

    horizon_s: int = 300
    history_hours: float = 12.0  # data read by the backtest (its newest half is tested)
    train_hours: float = 6.0  # rolling training window of each fit
    folds: int = 4
    seed: int = 0

    def backtest(self) -> bt.BacktestConfig:
        if self.horizon_s < 300:
            raise dg.Failure(f"horizon_s must be at least 300 (got {self.horizon_s})")
        return bt.BacktestConfig(
            horizon_s=self.horizon_s,
            train_seconds=self.train_hours * 3600.0,
            folds=self.folds,
            seed=self.seed,
        )


# ------------------------------------------------------------------------------------------
# I/O
# ------------------------------------------------------------------------------------------
def newest_indicator_ts(postgres: PostgresResource) -> pd.Timestamp | None:
    postgres.ensure_tables()
    with postgres.get_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT max(ts) FROM price_indicators")
        (value,) = cur.fetchone()
    return None if value is None else pd.Timestamp(value).tz_convert("UTC")


#: How far back the warm-up looks (the first training needs well under an hour at 30-s polls).
WARM_UP_WINDOW = "3 hours"


def forecast_warm_up(postgres: PostgresResource, horizon_s: int) -> WarmUp:
    """The warm-up state of ``price_indicators`` (:mod:`marketflow_assets.forecasting.warmup`),
    from the snapshot times of the coin of the newest row (one index range scan, whatever the
    number of coins)."""
    postgres.ensure_tables()
    with postgres.get_connection() as conn, conn.cursor() as cur:
        cur.execute(
            "WITH newest AS (SELECT coin_id, ts FROM price_indicators ORDER BY ts DESC LIMIT 1) "
            "SELECT p.ts FROM price_indicators p, newest n "
            "WHERE p.coin_id = n.coin_id AND p.ts >= n.ts - %s::interval ORDER BY p.ts",
            (WARM_UP_WINDOW,),
        )
        times = [row[0] for row in cur.fetchall()]
    return warm_up(times, horizon_s)


def read_last_updated(raw_dir: Path, start: datetime, end: datetime) -> pd.DataFrame:
    """``coin_id, ts, last_updated`` of the raw rows with ``ts`` in ``[start, end]``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tz = pa.timestamp("us", tz="UTC")
    lo, hi = pa.scalar(pd.Timestamp(start), type=tz), pa.scalar(pd.Timestamp(end), type=tz)
    tables = []
    end_exclusive = pd.Timestamp(end) + pd.Timedelta(microseconds=1)
    for raw_file in list_raw_files(raw_dir, start, end_exclusive.to_pydatetime()):
        try:
            table = pq.read_table(raw_file.path, columns=["id", "ts", "last_updated"])
        except (OSError, ValueError, KeyError, pa.ArrowInvalid):
            continue  # foreign or partial file: staleness is optional
        table = table.cast(pa.schema([("id", pa.string()), ("ts", tz), ("last_updated", tz)]))
        keep = pc.and_(pc.greater_equal(table["ts"], lo), pc.less_equal(table["ts"], hi))
        tables.append(table.filter(keep))
    if not tables:
        return pd.DataFrame(columns=["coin_id", "ts", "last_updated"])
    frame = pa.concat_tables(tables).to_pandas().rename(columns={"id": "coin_id"})
    return frame.drop_duplicates(["coin_id", "ts"], keep="last")


def read_panel(
    postgres: PostgresResource,
    raw_dir: Path,
    start: pd.Timestamp,
    end: pd.Timestamp,
    last_updated_since: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """``price_indicators`` rows in ``[start, end]`` with ``last_updated`` from the raw data
    (read for rows from ``last_updated_since`` on; default all)."""
    stop = end + pd.Timedelta(microseconds=1)
    panel = postgres.read_period(
        "price_indicators",
        start.to_pydatetime(),
        stop.to_pydatetime(),
        columns=["coin_id", "ts", "price", "sma_5min", "ema_3min", "volatility_5min"],
    )
    since = start if last_updated_since is None else max(start, last_updated_since)
    lu = read_last_updated(raw_dir, since.to_pydatetime(), end.to_pydatetime())
    if len(lu):
        panel = panel.merge(lu, on=["coin_id", "ts"], how="left")
    else:
        panel["last_updated"] = pd.NaT
    return panel


def _upsert(postgres: PostgresResource, table: str, frame: pd.DataFrame, where: dict) -> int:
    """Replace the rows of ``table`` matching ``where`` (column = value) by ``frame``."""
    from psycopg2.extras import execute_values

    columns = column_names(table)
    records = [
        tuple(None if isinstance(v, float) and not np.isfinite(v) else v for v in row)
        for row in frame.loc[:, list(columns)].astype(object).itertuples(index=False, name=None)
    ]
    cond = " AND ".join(f"{k} = %s" for k in where)
    with postgres.get_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"marketflow:{table}",))
        cur.execute(f"DELETE FROM {table} WHERE {cond}", tuple(where.values()))
        if records:
            execute_values(cur, f"INSERT INTO {table} ({', '.join(columns)}) VALUES %s", records)
    return len(records)


def latest_evaluation(postgres: PostgresResource, horizon_s: int) -> pd.DataFrame:
    """Rows of the newest evaluation for ``horizon_s`` (empty when none)."""
    columns = column_names("forecast_evaluation")
    postgres.ensure_tables()
    with postgres.get_connection() as conn, conn.cursor() as cur:
        cur.execute("SET LOCAL TIME ZONE 'UTC'")
        cur.execute(
            f"SELECT {', '.join(columns)} FROM forecast_evaluation WHERE horizon_s = %s AND "
            "evaluated_at = (SELECT max(evaluated_at) FROM forecast_evaluation "
            "WHERE horizon_s = %s) ORDER BY model",
            (horizon_s, horizon_s),
        )
        return pd.DataFrame(cur.fetchall(), columns=list(columns))


SERVED_OUTCOMES_SQL = """
SELECT f.origin_ts, f.predicted_price, f.lower_80, f.upper_80,
       o.price AS origin_price, r.price AS realized_price
FROM price_forecasts f
JOIN price_indicators o ON o.coin_id = f.coin_id AND o.ts = f.origin_ts
LEFT JOIN LATERAL (
    SELECT p.price FROM price_indicators p
    WHERE p.coin_id = f.coin_id AND p.ts > f.origin_ts AND p.ts <= f.target_ts
    ORDER BY p.ts DESC LIMIT 1
) r ON true
WHERE f.model = %(model)s AND f.horizon_s = %(horizon)s AND f.origin_ts >= %(since)s
  AND f.target_ts <= %(newest)s
"""


def served_outcomes(
    postgres: PostgresResource, model: str, horizon_s: int, since: pd.Timestamp
) -> pd.DataFrame:
    """Forecasts served by ``model`` since ``since`` whose target time has passed, with the
    origin price and the realized price (as of ``target_ts``); see :mod:`..forecasting.live`."""
    newest = newest_indicator_ts(postgres)
    columns = ["origin_ts", "predicted_price", "lower_80", "upper_80", "origin_price",
               "realized_price"]  # fmt: skip
    if newest is None:
        return pd.DataFrame(columns=columns)
    params = {
        "model": model,
        "horizon": int(horizon_s),
        "since": pd.Timestamp(since).to_pydatetime(),
        "newest": newest.to_pydatetime(),
    }
    with postgres.get_connection() as conn, conn.cursor() as cur:
        cur.execute(SERVED_OUTCOMES_SQL, params)
        frame = pd.DataFrame(cur.fetchall(), columns=columns)
    for col in columns[1:]:
        frame[col] = frame[col].astype("float64")
    return frame


def artifact_path(data_dir: str | Path, horizon_s: int) -> Path:
    return Path(data_dir).expanduser().absolute() / "models" / f"forecast_model_h{horizon_s}.pkl"


def save_artifact(artifact: serve.ForecastArtifact, path: Path) -> None:
    """Atomic write (temporary file + rename): readers never see half a model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        pickle.dump(artifact, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def load_artifact(path: Path) -> serve.ForecastArtifact | None:
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        return pickle.load(fh)  # noqa: S301 - our own file under MARKETFLOW_DATA_DIR


def _newest_or_fail(postgres: PostgresResource) -> pd.Timestamp:
    newest = newest_indicator_ts(postgres)
    if newest is None:
        raise dg.Failure(
            "price_indicators is empty: nothing to forecast (run `marketflow refresh` first)"
        )
    return newest


def evaluation_frame(ev: bt.Evaluation, evaluated_at, horizon_s: int) -> pd.DataFrame:
    table = ev.table.copy()
    table.insert(0, "evaluated_at", pd.Timestamp(evaluated_at))
    table.insert(2, "horizon_s", int(horizon_s))
    table["reason"] = np.where(table["promoted"], ev.reason, None)
    return table


# ------------------------------------------------------------------------------------------
# Assets
# ------------------------------------------------------------------------------------------
@dg.asset(
    name="forecast_evaluation",
    deps=[PRICE_INDICATORS_KEY, dg.AssetKey(RAW_PRICES_ASSET)],
    group_name=GROUP,
    kinds={"scikitlearn", "postgres"},
    owners=["team:marketflow"],
    code_version=CODE_VERSION,
    metadata={
        "table": "forecast_evaluation",
        "primary_key": "(evaluated_at, model, horizon_s)",
        "formulas": "marketflow_assets/forecasting/ (backtest.py, gate.py)",
    },
)
def forecast_evaluation(
    context: dg.AssetExecutionContext,
    config: ForecastConfig,
    postgres: PostgresResource,
    raw_data: RawDataResource,
) -> dg.MaterializeResult:
    """Rolling-origin backtest of every forecast candidate, and the promotion gate.

    Candidates: naive last price, drift, EMA reversion, ridge and LightGBM, all scored on the same
    origins of the newest `history_hours` (gap of one horizon between training and test). Writes
    MAE, MASE, directional accuracy and 80 % coverage per model to `forecast_evaluation`;
    `promoted` marks the model that serves `price_forecasts`: a learned model only if MASE < 1
    and a Diebold-Mariano test against naive gives p < 0.05, else naive.
    """
    tag_launcher(context)
    cfg = config.backtest()
    newest = _newest_or_fail(postgres)
    warm = forecast_warm_up(postgres, config.horizon_s)
    if not warm.ready:  # a model fitted on nothing: zero-width intervals, nan scores
        raise dg.Failure(
            f"not enough history to train a forecast model yet ({warm.message()}); the "
            "forecasts_follow_indicators sensor trains it as soon as there is"
        )
    start = newest - pd.Timedelta(hours=config.history_hours)
    t0 = time.perf_counter()
    panel = read_panel(postgres, raw_data.raw_dir, start, newest)
    read_s = time.perf_counter() - t0
    ev = bt.run_backtest(panel, cfg)
    context.log.info(
        f"backtest of {panel['coin_id'].nunique()} coins, {len(panel)} rows "
        f"({start} .. {newest}): {ev.reason}"
    )
    frame = evaluation_frame(ev, newest, config.horizon_s)
    _upsert(
        postgres,
        "forecast_evaluation",
        frame,
        {"evaluated_at": newest.to_pydatetime(), "horizon_s": int(config.horizon_s)},
    )
    audit_origins = [f["test_start"] for f in ev.folds[:3]] + [newest]
    t1 = time.perf_counter()
    audit = serve.look_ahead_audit(panel, config.horizon_s, audit_origins, ev.folds)
    audit_s = time.perf_counter() - t1
    promoted = frame[frame["promoted"]].iloc[0]
    return dg.MaterializeResult(
        metadata={
            "evaluated_at": dg.MetadataValue.timestamp(newest.to_pydatetime()),
            "promoted": dg.MetadataValue.text(str(promoted["model"])),
            "reason": dg.MetadataValue.text(ev.reason),
            "promoted_mase": dg.MetadataValue.float(_f(promoted["mase"])),
            "promoted_coverage_80": dg.MetadataValue.float(_f(promoted["coverage_80"])),
            "n": dg.MetadataValue.int(int(promoted["n"])),
            "coins": dg.MetadataValue.int(int(panel["coin_id"].nunique())),
            "horizon_s": dg.MetadataValue.int(int(config.horizon_s)),
            "horizon_polls": dg.MetadataValue.int(int(ev.horizon_steps)),
            "read_seconds": dg.MetadataValue.float(round(read_s, 3)),
            "fit_seconds": dg.MetadataValue.float(round(ev.seconds.get("fit", 0.0), 3)),
            "backtest_seconds": dg.MetadataValue.float(round(ev.seconds.get("total", 0.0), 3)),
            "audit_seconds": dg.MetadataValue.float(round(audit_s, 3)),
            "evaluation": dg.MetadataValue.md(report.markdown(frame)),
            # read by the no_look_ahead check (checks/forecasts.py)
            "look_ahead_ok": dg.MetadataValue.bool(bool(audit["ok"])),
            "look_ahead_origins_checked": dg.MetadataValue.int(audit["origins_checked"]),
            "look_ahead_max_feature_diff": dg.MetadataValue.float(audit["max_feature_diff"]),
            "look_ahead_problems": dg.MetadataValue.text("; ".join(audit["problems"]) or "none"),
            "folds": dg.MetadataValue.int(len(ev.folds)),
        },
    )


def _f(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out


@dg.asset(
    name="forecast_model",
    deps=[EVALUATION_KEY],
    group_name=GROUP,
    kinds={"scikitlearn"},
    owners=["team:marketflow"],
    code_version=CODE_VERSION,
    metadata={"store": "$MARKETFLOW_DATA_DIR/models/forecast_model_h<horizon>.pkl"},
)
def forecast_model(
    context: dg.AssetExecutionContext,
    config: ForecastConfig,
    postgres: PostgresResource,
    raw_data: RawDataResource,
) -> dg.MaterializeResult:
    """The promoted forecast model, fitted on the newest `train_hours` of data.

    Reads the newest `forecast_evaluation` for the horizon, fits its promoted model (nothing to
    fit for the naive forecast) with the interval quantiles of its backtest, and stores it for
    `price_forecasts`.
    """
    tag_launcher(context)
    evaluation = latest_evaluation(postgres, config.horizon_s)
    if evaluation.empty:
        raise dg.Failure(f"no forecast_evaluation for horizon {config.horizon_s}s yet")
    promoted = evaluation[evaluation["promoted"]].iloc[0]
    newest = _newest_or_fail(postgres)
    start = newest - pd.Timedelta(hours=config.train_hours) - pd.Timedelta(seconds=LOOKBACK_SECONDS)
    t0 = time.perf_counter()
    panel = read_panel(postgres, raw_data.raw_dir, start, newest)
    artifact = serve.train_artifact(
        panel,
        str(promoted["model"]),
        config.horizon_s,
        config.train_hours * 3600.0,
        _f(promoted["q_lower"]) if pd.notna(promoted["q_lower"]) else 0.0,
        _f(promoted["q_upper"]) if pd.notna(promoted["q_upper"]) else 0.0,
        promoted["evaluated_at"],
        seed=config.seed,
    )
    fit_s = time.perf_counter() - t0
    if not artifact.q_lower < artifact.q_upper:  # an interval is never zero-width
        raise dg.Failure(
            f"the promoted {artifact.model} has no interval (q_lower {artifact.q_lower}, q_upper "
            f"{artifact.q_upper}): its backtest scored no forecast; not stored"
        )
    path = artifact_path(raw_data.root, config.horizon_s)
    save_artifact(artifact, path)
    context.log.info(f"forecast model {artifact.model} ({artifact.train_rows} rows) -> {path}")
    return dg.MaterializeResult(
        metadata={
            "model": dg.MetadataValue.text(artifact.model),
            "train_rows": dg.MetadataValue.int(int(artifact.train_rows)),
            "trained_until": dg.MetadataValue.timestamp(artifact.trained_until.to_pydatetime()),
            "evaluated_at": dg.MetadataValue.timestamp(pd.Timestamp(promoted["evaluated_at"])),
            "q_lower": dg.MetadataValue.float(artifact.q_lower),
            "q_upper": dg.MetadataValue.float(artifact.q_upper),
            "seconds": dg.MetadataValue.float(round(fit_s, 3)),
            "path": dg.MetadataValue.path(str(path)),
        }
    )


@dg.asset(
    name="price_forecasts",
    deps=[MODEL_KEY, PRICE_INDICATORS_KEY],
    group_name=GROUP,
    kinds={"postgres"},
    owners=["team:marketflow"],
    code_version=CODE_VERSION,
    metadata={"table": "price_forecasts", "primary_key": "(coin_id, origin_ts, horizon_s)"},
)
def price_forecasts(
    context: dg.AssetExecutionContext,
    config: ForecastConfig,
    postgres: PostgresResource,
    raw_data: RawDataResource,
) -> dg.MaterializeResult:
    """Forecasts of every coin at the newest snapshot, `horizon_s` ahead, with an 80 % interval.

    Served by the stored `forecast_model` (the promoted model, or naive). Cheap: reads only the
    last hour of indicators, so it runs after every indicator refresh.
    """
    tag_launcher(context)
    path = artifact_path(raw_data.root, config.horizon_s)
    artifact = load_artifact(path)
    if artifact is None:
        raise dg.Failure(
            f"no forecast model at {path}: materialize forecast_evaluation and forecast_model "
            "first (`marketflow forecast`)"
        )
    newest = _newest_or_fail(postgres)
    start = newest - pd.Timedelta(seconds=LOOKBACK_SECONDS + 60)
    panel = read_panel(
        postgres,
        raw_data.raw_dir,
        start,
        newest,
        last_updated_since=newest - pd.Timedelta(seconds=60),
    )
    rows = serve.forecast_rows(artifact, panel)
    _upsert(
        postgres,
        "price_forecasts",
        rows,
        {"origin_ts": newest.to_pydatetime(), "horizon_s": int(config.horizon_s)},
    )
    lag = (pd.Timestamp.now(tz="UTC") - newest).total_seconds()
    context.log.info(f"{len(rows)} forecasts at {newest} by {artifact.model}")
    return dg.MaterializeResult(
        metadata={
            "origin_ts": dg.MetadataValue.timestamp(newest.to_pydatetime()),
            "coins": dg.MetadataValue.int(len(rows)),
            "model": dg.MetadataValue.text(artifact.model),
            "model_trained_until": dg.MetadataValue.timestamp(
                pd.Timestamp(artifact.trained_until).to_pydatetime()
            )
            if artifact.trained_until is not None
            else dg.MetadataValue.text("n/a"),
            "data_age_seconds": dg.MetadataValue.float(round(lag, 1)),
        },
    )


FORECAST_ASSETS = [forecast_evaluation, forecast_model, price_forecasts]
