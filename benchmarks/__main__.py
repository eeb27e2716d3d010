"""``python -m benchmarks [--quick | --full] [--only engine,incremental,latency]``."""

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
        default="engine,incremental,latency",
        help="comma-separated subset of: engine, incremental, latency",
    )
    parser.add_argument(
        "--latency-path",
        choices=("daemon", "inprocess"),
        default="daemon",
        help="Parquet->Postgres hop of the latency benchmark: dagster dev with its sensors "
        "(default), or an in-process refresh loop (lower bound)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    args.mode = args.mode or "quick"
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("alembic", "py4j", "dagster"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from marketflow_assets.settings import export_pyspark_python

    export_pyspark_python()
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
        elif name == "latency":
            from benchmarks import latency

            latency.run(args.mode, args.latency_path)
        else:
            parser.error(f"unknown benchmark {name!r}")
    print(f"benchmarks ({args.mode}) finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
