"""The ``marketflow`` command: ``up``, ``ingest``, ``refresh``, ``follow``, ``forecast``,
``dashboard``, ``compact``.

Exit codes (README): 0 success, 2 bad usage or configuration (one line on stderr), 1 runtime
failure.
Tracebacks are shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from marketflow_assets.runtime.services import ServiceError
from marketflow_assets.settings import ConfigError, load_settings

logger = logging.getLogger("marketflow")


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with a one-line reason (argparse already uses 2 for usage errors)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from marketflow_assets import compaction
    from marketflow_assets.defs.forecasts import command as forecast
    from marketflow_assets.defs.indicators import refresh
    from marketflow_assets.ingest import command as ingest_command
    from marketflow_assets.runtime import up

    parser = _Parser(prog="marketflow", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p_up = sub.add_parser("up", help="start the whole pipeline (embedded services as needed)")
    up.add_arguments(p_up)
    p_up.set_defaults(handler=up.run)

    p_ingest = sub.add_parser("ingest", help="publish coin prices to Kafka")
    ingest_command.add_arguments(p_ingest)
    p_ingest.set_defaults(handler=ingest_command.run)

    from marketflow_assets.defs.indicators import follow

    p_follow = sub.add_parser(
        "follow", help="refresh price_indicators in process as soon as raw files appear"
    )
    follow.add_arguments(p_follow)
    p_follow.set_defaults(handler=follow.run)

    p_refresh = sub.add_parser("refresh", help="materialize the indicator tables through Dagster")
    refresh.add_arguments(p_refresh)
    p_refresh.set_defaults(handler=_refresh_with_services(refresh.run))

    p_forecast = sub.add_parser(
        "forecast", help="backtest, gate, train and forecast through Dagster; print the table"
    )
    forecast.add_arguments(p_forecast)
    p_forecast.set_defaults(handler=_refresh_with_services(forecast.run))
    from marketflow_assets.dashboard import command as dashboard_command

    p_dashboard = sub.add_parser("dashboard", help="serve the analyst dashboard (Streamlit)")
    dashboard_command.add_arguments(p_dashboard)
    p_dashboard.set_defaults(handler=dashboard_command.run)
    p_compact = sub.add_parser(
        "compact", help="rewrite each closed hour of raw Parquet into one file"
    )
    compaction.add_arguments(p_compact)
    p_compact.set_defaults(handler=compaction.run)
    return parser


def _refresh_with_services(run):
    """``refresh`` needs Postgres: the configured one, or the embedded one under the data dir."""

    def handler(args, settings) -> int:
        from marketflow_assets.runtime.services import running_services

        with running_services(settings, log=logger.info, kafka=False) as resolved:
            return run(args, resolved)

    return handler


def configure_logging(debug: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("kafka", "py4j", "urllib3", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("kafka.coordinator.consumer").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports the definitions' resources, which read the environment
    except ConfigError as exc:
        print(f"marketflow: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    configure_logging(args.debug)
    try:
        settings = load_settings()
        return int(args.handler(args, settings) or 0)
    except (ConfigError, ServiceError) as exc:
        if args.debug:
            logger.exception("failed")
        print(f"marketflow {args.command}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) or _is_config_problem(exc) else 1
    except KeyboardInterrupt:
        print(f"marketflow {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, exit 1
        if args.debug:
            logger.exception("failed")
        reason = " ".join(str(exc).split())[:500]
        print(
            f"marketflow {args.command}: {type(exc).__name__}: {reason} (rerun with --debug)",
            file=sys.stderr,
        )
        return 1


def _is_config_problem(exc: ServiceError) -> bool:
    """An unreachable *configured* service is a configuration problem (exit 2)."""
    return getattr(exc, "configured", False)


if __name__ == "__main__":
    sys.exit(main())
