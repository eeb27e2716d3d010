"""``marketflow forecast``: backtest, gate, train and forecast through Dagster; print the table.

Materializes ``forecast_evaluation``, ``forecast_model`` and ``price_forecasts`` (and their
checks) in one run on the data in ``price_indicators`` (run ``marketflow refresh`` first), on the
Dagster instance of ``$DAGSTER_HOME`` when set, else an ephemeral one, then prints the newest
evaluation: per model n, MAE (% of the origin price), MASE, directional accuracy, 80 % interval
coverage and which model was promoted, followed by the gate's reason.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from marketflow_assets.settings import ConfigError, Settings, redact_url

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--horizon", type=int, default=300, metavar="SECONDS",
                        help="forecast horizon in seconds, at least 300")  # fmt: skip
    parser.add_argument("--history-hours", type=float, default=12.0, metavar="H",
                        help="hours of data the backtest reads, newest first")  # fmt: skip
    parser.add_argument("--train-hours", type=float, default=6.0, metavar="H",
                        help="rolling training window of each fit, in hours")  # fmt: skip
    parser.add_argument("--folds", type=int, default=4, help="backtest folds")


def run_config(args: argparse.Namespace) -> dict:
    if args.horizon < 300:
        raise ConfigError(f"--horizon must be at least 300 seconds (got {args.horizon})")
    if args.history_hours <= 0 or args.train_hours <= 0 or args.folds < 2:
        raise ConfigError("--history-hours and --train-hours must be > 0 and --folds >= 2")
    config = {
        "horizon_s": args.horizon,
        "history_hours": args.history_hours,
        "train_hours": args.train_hours,
        "folds": args.folds,
    }
    ops = {name: {"config": config} for name in ASSET_NAMES}
    return {"ops": ops, "loggers": {"console": {"config": {"log_level": "WARNING"}}}}


ASSET_NAMES = ("forecast_evaluation", "forecast_model", "price_forecasts")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import dagster as dg

    from marketflow_assets.defs.common.launch import CLI, LAUNCHED_BY_TAG
    from marketflow_assets.defs.forecasts import assets as forecasts
    from marketflow_assets.defs.forecasts import checks as forecast_checks
    from marketflow_assets.defs.indicators.assets import price_indicators
    from marketflow_assets.defs.raw_prices.assets import raw_prices
    from marketflow_assets.forecasting import report
    from marketflow_assets.resources import build_resources, without_secrets_in_config

    if not settings.postgres_url:
        raise ConfigError("MARKETFLOW_POSTGRES_URL is not set (forecast needs PostgreSQL)")
    config = run_config(args)
    resources = build_resources(settings.postgres_url, str(settings.data_dir))
    postgres = resources["postgres"]
    resources = without_secrets_in_config(resources)  # no password in run storage
    newest = forecasts.newest_indicator_ts(postgres)
    if newest is None:
        print("forecast: price_indicators is empty; run `marketflow refresh` first. Nothing to do.")
        return 0
    print(
        f"forecast: horizon {args.horizon}s, newest data {newest.isoformat()}, "
        f"{args.history_hours:g} h of history from {redact_url(settings.postgres_url)}",
        flush=True,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # instance storage migrations
    instance = dg.DagsterInstance.get() if settings.dagster_home else dg.DagsterInstance.ephemeral()
    started = time.perf_counter()
    result = dg.materialize(
        [
            raw_prices,
            price_indicators,
            *forecasts.FORECAST_ASSETS,
            *forecast_checks.FORECAST_CHECKS,
        ],
        selection=list(ASSET_NAMES),
        resources=resources,
        instance=instance,
        run_config=config,
        tags={LAUNCHED_BY_TAG: CLI},
        raise_on_error=False,
    )
    if not result.success:
        from marketflow_assets.defs.indicators.refresh import failure_message

        print(f"forecast: FAILED: {failure_message(result)}", file=sys.stderr)
        return 1
    table = forecasts.latest_evaluation(postgres, args.horizon)
    print(report.text(table))
    promoted = table[table["promoted"]]
    if len(promoted):
        print(f"promoted: {promoted['model'].iloc[0]} - {promoted['reason'].iloc[0]}")
    evaluated = set()
    for check in result.get_asset_check_evaluations():
        state = "passed" if check.passed else f"FAILED ({check.severity.value})"
        evaluated.add(check.asset_check_key)
        print(f"check {check.asset_key.to_user_string()}.{check.check_name}: {state}")
    planned = {c.check_key for c in forecast_checks.FORECAST_CHECKS}
    for key in sorted(planned - evaluated, key=lambda k: k.to_user_string()):
        print(f"check {key.asset_key.to_user_string()}.{key.name}: skipped (nothing to check)")
    rows = _metadata(result, "price_forecasts", "coins")
    print(
        f"forecast: {rows} forecasts at {newest.isoformat()} written to price_forecasts "
        f"in {time.perf_counter() - started:.1f}s",
        flush=True,
    )
    return 0


def _metadata(result, node: str, key: str):
    events = result.asset_materializations_for_node(node)
    if not events or key not in events[0].metadata:
        return 0
    return events[0].metadata[key].value
