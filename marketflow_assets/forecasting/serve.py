"""Training the serving model, forecasting the newest snapshot, and the look-ahead audit.

* :func:`train_artifact` fits the promoted candidate on the newest training window: origins in
  ``[t_last - train_seconds, t_last]`` whose target was observed (so at or before ``t_last``), and
  keeps the interval quantiles its backtest produced.
* :func:`forecast_rows` forecasts every coin observed at the newest snapshot ``t``:
  ``predicted = p exp(r_hat)``, ``[lower_80, upper_80] = [p exp(r_hat + q_lower sigma),
  p exp(r_hat + q_upper sigma)]`` (``q_lower <= 0 <= q_upper``, so the interval holds the
  forecast). A coin without a scale yet (one observation) takes the snapshot's median scale.
* :func:`look_ahead_audit` re-computes features on the panel truncated at sample origins and
  compares them with the features computed on the whole panel (any use of later data shows up
  as a difference), and checks that no fold trained on a target observed after its first test
  origin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from marketflow_assets.forecasting.backtest import interval
from marketflow_assets.forecasting.features import (
    FEATURE_COLUMNS,
    build_features,
    choose_leader,
    find_leader,
    with_leader,
)
from marketflow_assets.forecasting.models import Candidate, make_candidate

FORECAST_COLUMNS = (
    "coin_id",
    "origin_ts",
    "horizon_s",
    "target_ts",
    "predicted_price",
    "lower_80",
    "upper_80",
    "model",
)


@dataclass
class ForecastArtifact:
    """The serving model: what :func:`forecast_rows` needs (pickled by the model asset)."""

    model: str
    candidate: Candidate
    horizon_s: int
    q_lower: float
    q_upper: float
    evaluated_at: pd.Timestamp
    trained_until: pd.Timestamp | None
    train_rows: int = 0
    leader: str | None = None
    info: dict = field(default_factory=dict)


def train_artifact(
    panel: pd.DataFrame,
    model: str,
    horizon_s: int,
    train_seconds: float,
    q_lower: float,
    q_upper: float,
    evaluated_at: pd.Timestamp,
    seed: int = 0,
) -> ForecastArtifact:
    """Fit ``model`` on the newest ``train_seconds`` of ``panel`` (no fit for baselines)."""
    leader = choose_leader(panel)
    candidate = make_candidate(model)
    rows = 0
    last = None
    if candidate.learned:
        feats = build_features(panel, horizon_s, leader=leader)
        last = feats["ts"].max()
        leader = find_leader(feats, last) or leader
        feats = with_leader(feats, leader)
        train = feats[feats["ts"] >= last - pd.Timedelta(seconds=train_seconds)]
        candidate.fit(train, seed=seed)
        rows = candidate.train_rows
    elif len(panel):
        last = pd.to_datetime(panel["ts"], utc=True).max()
    return ForecastArtifact(
        model=model,
        candidate=candidate,
        horizon_s=int(horizon_s),
        q_lower=float(q_lower),
        q_upper=float(q_upper),
        evaluated_at=pd.Timestamp(evaluated_at),
        trained_until=last,
        train_rows=rows,
        leader=leader,
    )


def forecast_rows(artifact: ForecastArtifact, panel: pd.DataFrame) -> pd.DataFrame:
    """Forecasts of every coin observed at the newest snapshot of ``panel``."""
    if panel.empty:
        return pd.DataFrame(columns=list(FORECAST_COLUMNS))
    feats = build_features(panel, artifact.horizon_s, leader=artifact.leader)
    origin = feats["ts"].max()
    now = feats[feats["ts"] == origin].copy()
    sigma = now["sigma"]
    fallback = sigma.median() if sigma.notna().any() else 0.0
    now["sigma"] = sigma.fillna(fallback)
    r_hat = artifact.candidate.predict_ret(now)
    price = now["price"].to_numpy(np.float64)
    lower, upper = interval(price, r_hat, now["sigma"], artifact.q_lower, artifact.q_upper)
    predicted = price * np.exp(r_hat)
    return pd.DataFrame(
        {
            "coin_id": now["coin_id"].to_numpy(),
            "origin_ts": origin,
            "horizon_s": int(artifact.horizon_s),
            "target_ts": origin + pd.Timedelta(seconds=artifact.horizon_s),
            "predicted_price": predicted,
            # rounding must not break lower <= predicted <= upper
            "lower_80": np.minimum(lower, predicted),
            "upper_80": np.maximum(upper, predicted),
            "model": artifact.model,
        }
    )


def look_ahead_audit(
    panel: pd.DataFrame, horizon_s: int, origins, folds: list[dict] | None = None
) -> dict:
    """Evidence that nothing after an origin reaches its features or its fold's training.

    Returns ``{"ok": bool, "origins_checked": n, "max_feature_diff": x, "problems": [...]}``.
    """
    problems = []
    leader = choose_leader(panel)
    full = build_features(panel, horizon_s, leader=leader).set_index(["coin_id", "ts"])
    ts = pd.to_datetime(panel["ts"], utc=True)
    worst = 0.0
    checked = 0
    for origin in origins:
        origin = pd.Timestamp(origin)
        part = build_features(panel[ts <= origin], horizon_s, leader=leader)
        part = part[part["ts"] == origin].set_index(["coin_id", "ts"])
        if part.empty:
            continue
        cols = [*FEATURE_COLUMNS, "sigma", "drift_ret", "ema_ret"]
        a = part[cols].to_numpy(np.float64)
        b = full.loc[part.index, cols].to_numpy(np.float64)
        same_nan = np.isnan(a) == np.isnan(b)
        diff = np.nanmax(np.abs(a - b)) if np.isfinite(a - b).any() else 0.0
        worst = max(worst, float(diff))
        if not same_nan.all() or diff > 1e-9:
            problems.append(f"features at {origin.isoformat()} change when later data is added")
        checked += 1
    for fold in folds or []:
        last_target, start = fold.get("train_last_target"), fold.get("test_start")
        if last_target is not None and pd.notna(last_target) and last_target > start:
            problems.append(
                f"fold {fold['fold']} trained on a target observed at {last_target} after its "
                f"first test origin {start}"
            )
    return {
        "ok": not problems,
        "origins_checked": checked,
        "max_feature_diff": worst,
        "problems": problems,
    }
