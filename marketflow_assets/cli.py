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


def _up():
    from marketflow_assets.runtime import up

    return up.add_arguments, up.run


def _ingest():
    from marketflow_assets.ingest import command

    def run(args, settings) -> int:
        return command.run(args, settings, own_process=True)

    return command.add_arguments, run


def _follow():
    from marketflow_assets.defs.indicators import follow

    return follow.add_arguments, _with_definitions(follow.run)


def _live():
    from marketflow_assets.live import command

    return command.add_arguments, command.run


def _refresh():
    from marketflow_assets.defs.indicators import refresh

    return refresh.add_arguments, _refresh_with_services(refresh.run)


def _forecast():
    from marketflow_assets.defs.forecasts import command

    return command.add_arguments, _refresh_with_services(command.run)


def _dashboard():
    from marketflow_assets.dashboard import command

    return command.add_arguments, command.run


def _compact():
    from marketflow_assets import compaction

    return compaction.add_arguments, compaction.run


def _stream_command():
    from spark_streaming import kafka_streaming

    return kafka_streaming.add_arguments, _stream


def _spark_cluster():
    from marketflow_assets.runtime import spark_standalone

    return spark_standalone.add_arguments, spark_standalone.run


#: Each subcommand: its help line and what loads its options and handler. A process imports only
#: the module of the command it runs (``marketflow live`` does not import Dagster, Spark or the
#: dashboard): each ``marketflow`` process of ``up`` is ~50 MB smaller for it.
COMMANDS = {
    "up": ("start the whole pipeline (embedded services as needed)", _up),
    "ingest": ("publish coin prices to Kafka", _ingest),
    "follow": ("refresh price_indicators in process as soon as raw files appear", _follow),
    "live": ("update price_indicators and market_movers straight from the Kafka topic", _live),
    "refresh": ("materialize the indicator tables through Dagster", _refresh),
    "forecast": ("backtest, gate, train and forecast through Dagster; print the table", _forecast),
    "dashboard": ("serve the analyst dashboard (Streamlit)", _dashboard),
    "compact": ("compact raw_prices: Delta OPTIMIZE of closed hours, VACUUM, checkpoint", _compact),
    "stream": (
        "run the Spark streaming job (Kafka -> raw_prices Delta table) in this process",
        _stream_command,
    ),
    "spark-cluster": (
        "run a Spark standalone cluster (master + 1 worker) on 127.0.0.1 until Ctrl-C",
        _spark_cluster,
    ),
}


def build_parser(only: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only``, the options of those subcommands alone (the others
    are listed with their help line, their modules not imported)."""
    parser = _Parser(prog="marketflow", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"marketflow {version()}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = _common_options()
    for name, (help, load) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help, description=help, parents=[common], formatter_class=HelpFormatter
        )
        if only is None or name in only:
            add_arguments, handler = load()
            add_arguments(p)
            p.set_defaults(handler=handler)
    return parser


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first word: the top-level options take no value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


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
        # the chosen command's module only (it may read the environment: ConfigError)
        command = chosen_command(argv)
        parser = build_parser(only=[command] if command in COMMANDS else [])
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
