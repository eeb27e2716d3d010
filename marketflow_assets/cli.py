"""The ``marketflow`` command: ``up``, ``ingest``, ``live``, ``refresh``, ``follow``, ``forecast``,
``dashboard``, ``compact``, ``stream``, ``spark-cluster``.

Exit codes (README): 0 success, 2 bad usage or configuration (one line on stderr), 1 runtime
failure.
Tracebacks are shown only with ``--debug`` (before or after the subcommand).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from marketflow_assets.cli_defaults import HelpFormatter
from marketflow_assets.runtime.services import ServiceError
from marketflow_assets.settings import ConfigError, load_settings

logger = logging.getLogger("marketflow")

DESCRIPTION = "near-real-time crypto analytics: Kafka, Spark, Dagster and PostgreSQL on one machine"
DEBUG_HELP = "show tracebacks and debug logs (before or after the subcommand)"


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with a one-line reason (argparse already uses 2 for usage errors)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def version() -> str:
    """The installed distribution's version, else the package's own ``__version__``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("marketflow")
    except PackageNotFoundError:
        from marketflow_assets import __version__

        return __version__


def _common_options() -> argparse.ArgumentParser:
    """Options every subcommand also takes after its name (``marketflow up --debug``).

    The default is SUPPRESS: a subcommand without ``--debug`` leaves the top-level value alone
    (``marketflow --debug up`` stays in debug mode).
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return common


def build_parser() -> argparse.ArgumentParser:
    from marketflow_assets import compaction
    from marketflow_assets.dashboard import command as dashboard_command
    from marketflow_assets.defs.forecasts import command as forecast
    from marketflow_assets.defs.indicators import follow, refresh
    from marketflow_assets.ingest import command as ingest_command
    from marketflow_assets.live import command as live_command
    from marketflow_assets.runtime import spark_standalone, up
    from spark_streaming import kafka_streaming

    parser = _Parser(prog="marketflow", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"marketflow {version()}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = _common_options()

    def add(name: str, help: str, add_arguments, handler) -> None:
        p = sub.add_parser(
            name, help=help, description=help, parents=[common], formatter_class=HelpFormatter
        )
        add_arguments(p)
        p.set_defaults(handler=handler)

    add("up", "start the whole pipeline (embedded services as needed)", up.add_arguments, up.run)
    add(
        "ingest",
        "publish coin prices to Kafka",
        ingest_command.add_arguments,
        ingest_command.run,
    )
    add(
        "follow",
        "refresh price_indicators in process as soon as raw files appear",
        follow.add_arguments,
        _with_definitions(follow.run),
    )
    add(
        "live",
        "update price_indicators and market_movers straight from the Kafka topic",
        live_command.add_arguments,
        live_command.run,
    )
    add(
        "refresh",
        "materialize the indicator tables through Dagster",
        refresh.add_arguments,
        _refresh_with_services(refresh.run),
    )
    add(
        "forecast",
        "backtest, gate, train and forecast through Dagster; print the table",
        forecast.add_arguments,
        _refresh_with_services(forecast.run),
    )
    add(
        "dashboard",
        "serve the analyst dashboard (Streamlit)",
        dashboard_command.add_arguments,
        dashboard_command.run,
    )
    add(
        "compact",
        "compact raw_prices: Delta OPTIMIZE of closed hours, VACUUM, checkpoint",
        compaction.add_arguments,
        compaction.run,
    )
    add(
        "stream",
        "run the Spark streaming job (Kafka -> raw_prices Delta table) in this process",
        kafka_streaming.add_arguments,
        _stream,
    )
    add(
        "spark-cluster",
        "run a Spark standalone cluster (master + 1 worker) on 127.0.0.1 until Ctrl-C",
        spark_standalone.add_arguments,
        spark_standalone.run,
    )
    return parser


def _stream(args, settings) -> int:
    """``marketflow stream``: spark_streaming/kafka_streaming.py's job, same options."""
    from spark_streaming import kafka_streaming

    # kafka-python logs every failed connection attempt; the job reports failures itself.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    return kafka_streaming.run(args, settings)


def _wants_version(argv: Sequence[str]) -> bool:
    """``--version`` among the top-level options (before the subcommand)."""
    for arg in argv:
        if arg == "--version":
            return True
        if not arg.startswith("-"):
            return False
    return False


def _with_definitions(run):
    """Hand the code location's Definitions to a command that runs its jobs (loaded here, at
    the top: nothing under ``defs/`` imports ``definitions.py``)."""

    def wrapped(args, settings):
        from marketflow_assets.definitions import defs

        return run(args, settings, defs=defs)

    return wrapped


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
    # alembic: the Dagster instance storage migrations, seven INFO lines at every start
    for noisy in ("kafka", "py4j", "urllib3", "pgserver", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("kafka.coordinator.consumer").setLevel(logging.ERROR)
    # "Task ... ran for 0.123s (>0.100s threshold)": the client's own event-loop timing
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _wants_version(argv):  # answers even when the configuration is broken
        print(f"marketflow {version()}")
        return 0
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
