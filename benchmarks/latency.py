"""End-to-end freshness: poll ``ts`` -> row visible in ``price_indicators``.

The whole pipeline runs as ``marketflow up`` runs it (the same helpers of
:mod:`marketflow_assets.up`): embedded Kafka (Tansu) and PostgreSQL, the Spark streaming job and
``dagster dev`` (daemon, the ``raw_prices`` observation sensor, the automation sensor that
launches ``refresh_indicators_job`` runs) as child processes; not the Spark Connect server ``up``
keeps for backfills, since runs of the newest hour compute in process and open no Spark session.
Once the streaming job and the Dagster UI are up, the simulator (``marketflow ingest --source
simulate --coins 250``) publishes ``N`` polls; ``ts`` is the wall-clock time of each poll.

From the outside, this process watches

* the raw Parquet directory (every 0.2 s): when a poll's ``ts`` first appears in a visible file
  -> Kafka->Parquet latency (ingest + broker + streaming micro-batch);
* ``price_indicators`` (every 0.5 s): when all coins of a poll's ``ts`` are visible
  -> Parquet->Postgres latency (observation sensor + automation sensor + run launch + refresh);

and reports p50 / p95 / max per stage and in total. Full mode: 20 polls at 30 s (10 minutes),
after one warm-up poll through the whole pipeline (the numbers describe the running pipeline;
setup including the warm-up is printed separately). Quick mode compresses time: the same 20
polls every 2 s (40 s), several polls then share a micro-batch and a Dagster run (a harder
test, not an easier one), and there is no warm-up poll: the first measured poll meets the
streaming job's first non-empty micro-batch and the first Dagster run (a cold start, included).

``path="inprocess"`` (``python -m benchmarks --latency-path inprocess``) replaces ``dagster dev``
by a loop in this process that materializes the partitions new raw files touch as soon as they
appear (``dg.materialize`` of both assets, one warm SparkSession): a lower bound of what the
Dagster hop costs without sensor intervals, run launch and Spark start-up per run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks import data
from benchmarks.report import print_table, ratio_line

logger = logging.getLogger(__name__)

MODES = {
    "quick": {"polls": 20, "interval": 2.0, "warmup": False},
    "full": {"polls": 20, "interval": 30.0, "warmup": True},
}
COINS = 250
DRAIN_TIMEOUT_S = 240.0


class Watcher:
    """Records when each poll ``ts`` first becomes visible in Parquet and in Postgres."""

    def __init__(self, raw_dir: Path, postgres_url: str, coins: int, since: datetime):
        self.raw_dir = raw_dir
        self.postgres_url = postgres_url
        self.coins = coins
        self.since = since
        self.parquet_seen: dict[datetime, float] = {}
        self.pg_seen: dict[datetime, float] = {}
        self._files: set[Path] = set()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch_files, daemon=True),
            threading.Thread(target=self._watch_pg, daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _watch_files(self) -> None:
        import pyarrow.parquet as pq

        while not self._stop.wait(0.2):
            now = time.time()
            for path in self.raw_dir.glob("date=*/*.parquet"):
                if path in self._files or path.name.startswith((".", "_")):
                    continue
                self._files.add(path)
                try:
                    ts = pq.read_table(path, columns=["ts"]).column("ts").unique().to_pylist()
                except Exception:  # noqa: BLE001 - a file being replaced; retry next scan
                    self._files.discard(path)
                    continue
                for value in ts:
                    if value >= self.since:
                        self.parquet_seen.setdefault(value, now)

    def _watch_pg(self) -> None:
        import psycopg2

        conn = None
        while not self._stop.wait(0.5):
            try:
                if conn is None:
                    conn = psycopg2.connect(self.postgres_url, connect_timeout=3)
                    conn.autocommit = True
                now = time.time()
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT ts, count(*) FROM price_indicators WHERE ts >= %s GROUP BY ts",
                        (self.since,),
                    )
                    for ts, count in cur.fetchall():
                        if count >= self.coins:
                            self.pg_seen.setdefault(ts, now)
            except Exception as exc:  # noqa: BLE001 - table not there yet / transient
                logger.debug("postgres watch: %s", exc)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
        if conn is not None:
            conn.close()


class RefreshLoop:
    """In-process stand-in for the automation sensor (``path="inprocess"``)."""

    def __init__(self, data_dir: Path, postgres_url: str):
        self.data_dir = data_dir
        self.postgres_url = postgres_url
        self.runs: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        from benchmarks import project

        seen: set[Path] = set()
        raw_dir = self.data_dir / "raw_prices"
        while not self._stop.wait(0.5):
            new = [p for p in raw_dir.glob("date=*/*.parquet") if p not in seen]
            if not new:
                continue
            seen.update(new)
            hours = set()
            for path in new:
                try:
                    lo, hi = (int(x) for x in path.stem.rsplit("-", 2)[1:])
                except ValueError:
                    continue
                for us in (lo, hi):
                    moment = datetime.fromtimestamp(us / 1e6, tz=UTC)
                    hours.add(moment.replace(minute=0, second=0, microsecond=0))
            for hour in sorted(hours):
                try:
                    self.runs.append(
                        project.materialize_partition(
                            self.data_dir,
                            self.postgres_url,
                            project.partition_key(hour),
                            whole_hour=False,
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - reported at the end
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    logger.warning("in-process refresh failed: %s", exc)


def _stats(values: list[float]) -> tuple[float, float, float]:
    arr = np.asarray(values, dtype=float)
    if not len(arr):
        return (float("nan"),) * 3
    return (
        float(np.percentile(arr, 50)),
        float(np.percentile(arr, 95)),
        float(arr.max()),
    )


def _wait(predicate, timeout: float, what: str, children) -> None:
    from marketflow_assets.up import tail

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if child.proc is not None and child.proc.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with code {child.proc.returncode} while waiting for "
                    f"{what}:\n{tail(child.log_path)}"
                )
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def run(mode: str = "quick", path: str = "daemon") -> dict[str, tuple[float, float, float]]:
    import psycopg2
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from marketflow_assets import up
    from marketflow_assets.resources.postgres import PostgresResource
    from marketflow_assets.services import free_port, running_services
    from marketflow_assets.settings import Settings

    polls, interval = MODES[mode]["polls"], MODES[mode]["interval"]
    scratch = data.bench_dir() / "latency"
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    settings = Settings(data_dir=work)
    args = argparse.Namespace(
        source="simulate",
        coins=COINS,
        interval=interval,
        replay_file=None,
        speed=1.0,
        host="127.0.0.1",
        port=free_port(),
        spark_master="local[*]",
    )
    hop = {
        "daemon": "dagster dev: observation sensor -> automation sensor -> run launcher",
        "inprocess": "in-process refresh loop (dg.materialize, warm Spark) instead of dagster dev",
    }[path]
    print(
        f"latency: {polls} simulated polls of {COINS} coins every {interval:g} s"
        + (" (quick mode: time compressed from 30 s)" if interval != 30 else "")
        + f"; Parquet->Postgres via {hop}"
    )
    children: list[up.Child] = []
    watcher: Watcher | None = None
    loop: RefreshLoop | None = None
    started_at = time.monotonic()
    try:
        with running_services(settings, log=logger.info) as resolved:
            PostgresResource(url=resolved.postgres_url).ensure_tables()
            admin = KafkaAdminClient(bootstrap_servers=resolved.kafka_bootstrap)
            with contextlib.suppress(Exception):
                admin.create_topics(
                    [
                        NewTopic(resolved.kafka_topic, 3, 1),
                        NewTopic(resolved.dlq_topic, 3, 1),
                    ]
                )
            admin.close()
            env = up.child_env(resolved, args)
            ingest, spark, dagster = up.build_children(args, resolved, "simulate")
            warmup = up.Child("ingest-warmup", [*ingest.argv, "--max-polls", "1"], ingest.log_path)
            ingest.argv += ["--max-polls", str(polls)]
            # Not started here: the Spark Connect server that ``up`` keeps for backfills. Runs of
            # the newest hour compute in process and never open a Spark session.
            for child in (spark, dagster) if path == "daemon" else (spark,):
                up.start_child(child, env)
                children.append(child)
            probes = up.ReadinessProbes(resolved, args)
            spark_log = spark.log_path
            if path == "daemon":
                _wait(probes._ui_serves, 180, "the Dagster UI", children)
            else:
                from benchmarks import project

                project.get_bench_spark()
                loop = RefreshLoop(work, resolved.postgres_url)
                loop.start()
            _wait(
                lambda: "micro-batch" in spark_log.read_text(errors="replace"),
                180,
                "the Spark streaming job",
                children,
            )
            if path == "daemon":  # the daemon has loaded the code and ticks the automation sensor
                _wait(
                    lambda: (
                        "sensor: indicators_follow_raw_prices"
                        in dagster.log_path.read_text(errors="replace")
                    ),
                    180,
                    "the first tick of the automation sensor",
                    children,
                )
            if MODES[mode]["warmup"]:  # one poll through the whole pipeline, not measured
                up.start_child(warmup, env)
                children.append(warmup)
                warmup.proc.wait(120)
                children.remove(warmup)
                _wait(
                    lambda: probes._indicator_rows() >= COINS,
                    300,
                    "the warm-up poll in price_indicators",
                    children,
                )
            setup_s = time.monotonic() - started_at
            since = datetime.now(UTC)
            watcher = Watcher(resolved.raw_dir, resolved.postgres_url, COINS, since)
            watcher.start()
            up.start_child(ingest, env)
            children.append(ingest)
            ingest.proc.wait(polls * interval + 120)
            if ingest.proc.returncode != 0:
                raise RuntimeError(f"ingest exited with {ingest.proc.returncode}")
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while time.monotonic() < deadline:
                if len(watcher.pg_seen) >= polls:
                    break
                time.sleep(1)
            watcher.stop()
            if loop is not None:
                loop.stop()
            conn = psycopg2.connect(resolved.postgres_url)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM price_indicators WHERE ts >= %s", (since,))
                    total_rows = cur.fetchone()[0]
            finally:
                conn.close()
            for child in reversed(children):
                up.stop_child(child)
            children.clear()
    finally:
        if watcher is not None:
            watcher.stop()
        if loop is not None:
            loop.stop()
        for child in reversed(children):
            with contextlib.suppress(Exception):
                up.stop_child(child)
        logs = work / "logs"
        if logs.is_dir():
            keep = scratch / "last-logs"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(logs, keep)
        shutil.rmtree(work, ignore_errors=True)

    poll_ts = sorted(set(watcher.parquet_seen) | set(watcher.pg_seen))
    k2p, p2pg, total = [], [], []
    for ts in poll_ts:
        t0 = ts.timestamp()
        a, b = watcher.parquet_seen.get(ts), watcher.pg_seen.get(ts)
        if a is not None:
            k2p.append(a - t0)
        if a is not None and b is not None:
            p2pg.append(max(0.0, b - a))
        if b is not None:
            total.append(b - t0)
    missing = polls - len(watcher.pg_seen)
    stats = {
        "Kafka->Parquet": _stats(k2p),
        "Parquet->Postgres": _stats(p2pg),
        "total (poll ts -> price_indicators)": _stats(total),
    }
    print_table(
        f"latency: poll ts -> visible (s); {polls} polls x {COINS} coins every {interval:g} s, "
        f"{total_rows} rows; setup{' incl. one warm-up poll' if MODES[mode]['warmup'] else ''} "
        f"{setup_s:.0f} s excluded",
        ["stage", "polls", "p50", "p95", "max"],
        [
            [name, str(len(v)), *(f"{x:.1f}" for x in stats[name])]
            for name, v in (
                ("Kafka->Parquet", k2p),
                ("Parquet->Postgres", p2pg),
                ("total (poll ts -> price_indicators)", total),
            )
        ],
    )
    if missing:
        print(f"latency: {missing} of {polls} polls never became visible in price_indicators")
    if loop is not None:
        print(
            f"latency: in-process loop ran {len(loop.runs)} refreshes "
            f"(median {np.median(loop.runs) if loop.runs else float('nan'):.1f} s), "
            f"{len(loop.errors)} failed"
        )
    for name, (p50, p95, mx) in stats.items():
        short = name.split(" ")[0]
        print(f"latency {short}: p50 = {p50:.1f} s, p95 = {p95:.1f} s, max = {mx:.1f} s")
    ratio_line("latency_p95_seconds", stats["total (poll ts -> price_indicators)"][1], "<= 60")
    return stats


if __name__ == "__main__":  # pragma: no cover - manual runs
    logging.basicConfig(level=logging.INFO)
    run("quick")
