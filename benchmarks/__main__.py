"""``python -m benchmarks [--quick | --full] [--only engine,incremental,scale,latency]``."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="reduced sizes, finishes in < 5 min on 2 cores (default)",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="all sizes of issue 8 (1 M and 10 M rows, 10 min of real-time polls)",
    )
    parser.add_argument(
        "--only",
        default="engine,incremental,scale,latency,dashboard,costs,memory",
        help=(
            "comma-separated subset of: engine, incremental, scale, latency, dashboard, costs,"
            " memory, forecast (opt-in)"
        ),
    )
    parser.add_argument(
        "--latency-path",
        choices=("up", "daemon", "inprocess"),
        default="up",
        help="Parquet->Postgres hop of the latency benchmark: what `marketflow up` runs (the "
        "live follower + Dagster, default), Dagster's daemon with its sensors only, or an "
        "in-process refresh loop",
    )
    parser.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        help="latency without the Quix Streams baseline processor beside Marketflow",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    args.mode = args.mode or "quick"
    from marketflow_assets.cli import configure_logging

    configure_logging(args.verbose)  # the CLI's: kafka-python, py4j, alembic ... at WARNING
    logging.getLogger("dagster").setLevel(logging.WARNING)
    from marketflow_assets.settings import export_default, export_pyspark_python

    export_pyspark_python()
    # The synthetic histories lie in the past (Dec 2025 - Jan 2026): partitions must cover them
    # (the default start is the first hour of ./data/raw_prices, else today).
    export_default("MARKETFLOW_PARTITION_START", "2025-12-01")
    from benchmarks import machine

    print(machine.describe())
    started = time.perf_counter()
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    for name in selected:
        if name == "engine":
            from benchmarks import engine

            engine.run(args.mode)
        elif name == "incremental":
            from benchmarks import incremental

            incremental.run(args.mode)
        elif name == "scale":
            from benchmarks import scale

            scale.run(args.mode)
        elif name == "latency":
            from benchmarks import latency

            latency.run(args.mode, args.latency_path, baseline=args.baseline)
        elif name == "forecast":
            from benchmarks import forecast

            forecast.run(args.mode)
        elif name == "dashboard":
            from benchmarks import dashboard

            dashboard.run(args.mode)
        elif name == "costs":
            from benchmarks import costs

            costs.run(args.mode)
        elif name == "memory":
            from benchmarks import memory

            memory.run(args.mode)
        else:
            parser.error(f"unknown benchmark {name!r}")
    print(f"benchmarks ({args.mode}) finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
