"""Checks of the forecast assets (plain ``*_outcome`` functions + thin ``@dg.asset_check``s).

* ``forecast_evaluation``:
  ``learned_model_promoted`` (WARN when the naive forecast serves; the description says why),
  ``no_look_ahead`` (ERROR: the look-ahead audit the asset ran - features at sample origins are
  unchanged when later data is removed, no fold trained on a target observed after its first
  test origin - read from the newest materialization),
  ``interval_calibration`` (WARN: backtest coverage of the promoted model's 80 % interval within
  [0.7, 0.9]);
* ``price_forecasts``: ``intervals_ordered`` (``lower_80 <= predicted_price <= upper_80`` for
  every forecast of the newest origin).
"""

import dagster as dg
import pandas as pd

from marketflow_assets.defs.common.outcome import Outcome, report
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.schema import FORECAST_EVALUATION_ASSET, PRICE_FORECASTS_ASSET

EVALUATION = dg.AssetKey(FORECAST_EVALUATION_ASSET)
FORECASTS = dg.AssetKey(PRICE_FORECASTS_ASSET)
COVERAGE_RANGE = (0.7, 0.9)
WARN = dg.AssetCheckSeverity.WARN

_NEWEST_EVALUATION = """
SELECT model, promoted, learned, mase, coverage_80, dm_pvalue, reason, horizon_s, evaluated_at
FROM forecast_evaluation
WHERE evaluated_at = (SELECT max(evaluated_at) FROM forecast_evaluation) AND promoted
ORDER BY horizon_s
"""


def _promoted_rows(postgres: PostgresResource) -> pd.DataFrame:
    postgres.ensure_tables()
    with postgres.get_connection() as conn, conn.cursor() as cur:
        cur.execute(_NEWEST_EVALUATION)
        cols = [d[0] for d in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=cols)


def promotion_outcome(promoted: pd.DataFrame) -> Outcome:
    if promoted.empty:
        return Outcome(False, "no forecast evaluation yet", {}, WARN)
    naive = promoted[~promoted["learned"].astype(bool)]
    reasons = "; ".join(str(r) for r in promoted["reason"])
    meta = {
        "promoted": ", ".join(
            f"{m} ({h}s)" for m, h in zip(promoted["model"], promoted["horizon_s"], strict=True)
        ),
        "reason": reasons,
    }
    if len(naive):
        return Outcome(False, f"the naive forecast serves - {reasons}", meta, WARN)
    return Outcome(True, reasons, meta, WARN)


def calibration_outcome(promoted: pd.DataFrame, bounds=COVERAGE_RANGE) -> Outcome:
    if promoted.empty:
        return Outcome(False, "no forecast evaluation yet", {}, WARN)
    lo, hi = bounds
    cov = pd.to_numeric(promoted["coverage_80"], errors="coerce")
    ok = bool(cov.between(lo, hi).all())
    values = ", ".join(f"{m}: {c:.3f}" for m, c in zip(promoted["model"], cov, strict=True))
    return Outcome(
        ok,
        f"backtest coverage of the promoted 80 % interval {values} "
        f"{'within' if ok else 'outside'} [{lo}, {hi}]",
        {
            "coverage_80": float(cov.iloc[0]) if len(cov) else float("nan"),
            "bounds": f"[{lo}, {hi}]",
        },
        WARN,
    )


def look_ahead_outcome(metadata: dict | None) -> Outcome:
    if not metadata or "look_ahead_ok" not in metadata:
        return Outcome(False, "forecast_evaluation has no look-ahead audit yet (materialize it)")
    ok = bool(metadata["look_ahead_ok"].value)
    problems = (
        str(metadata.get("look_ahead_problems").value) if "look_ahead_problems" in metadata else ""
    )
    return Outcome(
        ok,
        "no look-ahead: features at sample origins unchanged when later data is removed; every "
        "fold trained only on targets observed before its first test origin"
        if ok
        else f"look-ahead detected: {problems}",
        {
            "origins_checked": int(metadata["look_ahead_origins_checked"].value),
            "max_feature_diff": float(metadata["look_ahead_max_feature_diff"].value),
            "problems": problems,
        },
    )


def intervals_outcome(conn) -> Outcome:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE NOT (lower_80 <= predicted_price AND "
            "predicted_price <= upper_80)), max(origin_ts) FROM price_forecasts "
            "WHERE origin_ts = (SELECT max(origin_ts) FROM price_forecasts)"
        )
        rows, bad, origin = cur.fetchone()
    if not rows:
        return Outcome(
            True, "Skipped: no forecasts yet, so nothing was checked.", {"rows": 0, "skipped": True}
        )
    return Outcome(
        bad == 0,
        f"{bad} of {rows} forecasts at {origin.isoformat()} have an interval not holding the "
        "forecast"
        if bad
        else f"all {rows} forecasts at {origin.isoformat()} have lower_80 <= predicted <= upper_80",
        {"rows": int(rows), "bad_rows": int(bad)},
    )


@dg.asset_check(
    asset=EVALUATION,
    name="learned_model_promoted",
    description="WARN when the naive forecast serves (no learned model passed the gate), with why.",
)
def learned_model_promoted(postgres: PostgresResource) -> dg.AssetCheckResult:
    return promotion_outcome(_promoted_rows(postgres)).to_result()


@dg.asset_check(
    asset=EVALUATION,
    name="interval_calibration",
    description="Backtest coverage of the promoted model's 80 % interval is within [0.7, 0.9].",
)
def interval_calibration(postgres: PostgresResource) -> dg.AssetCheckResult:
    return calibration_outcome(_promoted_rows(postgres)).to_result()


@dg.asset_check(
    asset=EVALUATION,
    name="no_look_ahead",
    description="Features use no data after their origin; training never sees test-period targets.",
)
def no_look_ahead(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    event = context.instance.get_latest_materialization_event(EVALUATION)
    metadata = (
        event.asset_materialization.metadata if event and event.asset_materialization else None
    )
    return look_ahead_outcome(metadata).to_result()


@dg.asset_check(
    asset=FORECASTS,
    name="intervals_ordered",
    description="Every forecast of the newest origin has lower_80 <= predicted_price <= upper_80.",
)
def intervals_ordered(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource
) -> dg.AssetCheckResult | None:
    postgres.ensure_tables()
    with postgres.get_connection() as conn:
        return report(context, intervals_outcome(conn))


FORECAST_CHECKS = [learned_model_promoted, interval_calibration, no_look_ahead, intervals_ordered]
