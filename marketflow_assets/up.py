"""``marketflow up``: the whole pipeline on one machine, stopped cleanly by Ctrl-C.

Order of start-up: PostgreSQL and Kafka (embedded unless configured), the tables and topics, then
three child processes — the ingest loop, the Spark streaming job and ``dagster dev`` on
127.0.0.1:3000. Each child runs in its own process group with its output in
``$MARKETFLOW_DATA_DIR/logs/<name>.log``; one line is printed per component when it is ready. On
Ctrl-C (SIGINT) or SIGTERM the children are stopped in reverse order (whole process groups, so
Dagster's run workers and Spark's JVM go too), then the broker and PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from marketflow_assets.services import die_with_parent, free_port, running_services
from marketflow_assets.settings import ConfigError, Settings, child_environment
from marketflow_assets.spark_connect import SPARK_REMOTE_ENV, EmbeddedSparkConnect

logger = logging.getLogger("marketflow.up")

REPO_ROOT = Path(__file__).resolve().parents[1]
SPARK_JOB = REPO_ROOT / "spark_streaming" / "kafka_streaming.py"
SOURCES = ("auto", "coingecko", "replay", "simulate")
#: Micro-batch trigger of the streaming job under ``up``: a new poll waits at most this long
#: before its micro-batch starts (docs/PERFORMANCE.md, "Where the seconds go").
STREAMING_TRIGGER_SECONDS = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="auto",
        help="price source; auto = live CoinGecko when reachable, else the simulator",
    )
    parser.add_argument("--coins", type=int, default=50, help="coins per poll (default 50)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between polls")
    parser.add_argument("--replay-file", help="replay file for --source replay")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed (0 = max)")
    parser.add_argument("--host", default="127.0.0.1", help="Dagster UI host (127.0.0.1)")
    parser.add_argument("--port", type=int, default=3000, help="Dagster UI port (3000)")
    parser.add_argument(
        "--dashboard-port", type=int, default=8501, help="analyst dashboard port (8501)"
    )
    parser.add_argument(
        "--spark-master",
        default=None,
        help="Spark master for the streaming job and the assets (default $MARKETFLOW_SPARK_MASTER,"
        " else local[*])",
    )


@dataclasses.dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    ready: bool = False


def resolve_source(args: argparse.Namespace, settings: Settings) -> str:
    """``auto`` → ``coingecko`` when the API answers, else ``simulate``; says which in one line."""
    if args.source == "replay" and not args.replay_file:
        raise ConfigError("--source replay needs --replay-file PATH")
    if args.source != "auto":
        return args.source
    from marketflow_assets.ingest.coingecko import coingecko_reachable

    if coingecko_reachable(settings):
        logger.info("source: live CoinGecko at %s", settings.coingecko_api_url)
        return "coingecko"
    logger.info(
        "source: simulator (CoinGecko at %s is not reachable from here)",
        settings.coingecko_api_url,
    )
    return "simulate"


def child_env(settings: Settings, args: argparse.Namespace) -> dict[str, str]:
    """Environment of every child: the resolved (embedded or real) services, absolute paths, and
    a Dagster home whose instance stores runs and events in the same PostgreSQL."""
    from marketflow_assets.instance import prepare_dagster_home

    env = child_environment(
        overrides={
            "MARKETFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
            "MARKETFLOW_KAFKA_TOPIC": settings.kafka_topic,
            "MARKETFLOW_POSTGRES_URL": settings.postgres_url or "",
            "MARKETFLOW_DATA_DIR": str(settings.data_dir),
            "MARKETFLOW_SPARK_MASTER": args.spark_master,
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(prepare_dagster_home(settings.data_dir / "dagster_home"))
    return env


def build_children(args, settings: Settings, source: str) -> list[Child]:
    logs = settings.data_dir / "logs"
    ingest = [sys.executable, "-m", "marketflow_assets.cli", "ingest", "--source", source]
    ingest += ["--interval", str(args.interval), "--coins", str(args.coins)]
    if source == "replay":
        ingest += ["--replay-file", args.replay_file, "--speed", str(args.speed)]
    spark = [sys.executable, str(SPARK_JOB), "--master", args.spark_master]
    spark += ["--trigger-seconds", str(STREAMING_TRIGGER_SECONDS)]
    metrics = {"ingest": free_port(), "spark": free_port()}  # Prometheus, on 127.0.0.1
    ingest += ["--metrics-port", str(metrics["ingest"])]
    spark += ["--metrics-port", str(metrics["spark"])]
    logger.info(
        "metrics: ingest http://127.0.0.1:%d/metrics, spark http://127.0.0.1:%d/metrics",
        metrics["ingest"],
        metrics["spark"],
    )
    follow = [sys.executable, "-m", "marketflow_assets.cli", "follow"]
    dagster = [
        str(Path(sys.executable).with_name("dagster")),
        "dev",
        "-w",
        str(REPO_ROOT / "workspace.yaml"),
        "-h",
        args.host,
        "-p",
        str(args.port),
    ]
    return [
        Child("ingest", ingest, logs / "ingest.log"),
        Child("spark", spark, logs / "spark_streaming.log"),
        Child("dagster", dagster, logs / "dagster.log"),
        Child("follow", follow, logs / "follow.log"),
    ]


def dashboard_child(args, settings: Settings) -> Child:
    """``marketflow dashboard`` on 127.0.0.1:--dashboard-port, reading the same PostgreSQL."""
    argv = [sys.executable, "-m", "marketflow_assets.cli", "dashboard"]
    argv += ["--port", str(args.dashboard_port)]
    return Child("dashboard", argv, settings.data_dir / "logs" / "dashboard.log")


def start_child(child: Child, env: dict[str, str]) -> None:
    child.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(child.log_path, "ab") as log_file:
        child.proc = subprocess.Popen(
            child.argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
            preexec_fn=die_with_parent,
        )
    logger.info("%s: started (pid %s, log %s)", child.name, child.proc.pid, child.log_path)


def stop_child(child: Child, timeout: float = 20.0) -> None:
    """Stop a child's whole process group: SIGINT/SIGTERM, then SIGKILL after ``timeout``."""
    proc = child.proc
    if proc is None:
        return
    pgid = proc.pid
    first = signal.SIGINT if child.name == "dagster" else signal.SIGTERM
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, first)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        logger.warning("%s did not stop within %.0f s; killing it", child.name, timeout)
    # Whatever is left in the group (JVMs, run workers, webserver) goes now.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    logger.info("%s: stopped", child.name)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ReadinessProbes:
    """One log line per component when it is ready, checked from the outside (no log parsing)."""

    def __init__(self, settings: Settings, args):
        self.settings = settings
        self.args = args
        self.announced: set[str] = set()

    def _kafka_has_messages(self) -> bool:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap)
        try:
            parts = consumer.partitions_for_topic(self.settings.kafka_topic) or set()
            from kafka import TopicPartition

            tps = [TopicPartition(self.settings.kafka_topic, p) for p in parts]
            if not tps:
                return False
            consumer.assign(tps)
            consumer.seek_to_beginning()
            return bool(consumer.poll(1000, max_records=1))
        finally:
            consumer.close()

    def _parquet_written(self) -> bool:
        return any(self.settings.raw_dir.rglob("*.parquet"))

    def _ui_serves(self) -> bool:
        url = f"http://{self.args.host}:{self.args.port}/server_info"
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200

    def _dashboard_serves(self) -> bool:
        from marketflow_assets.dashboard.command import serves

        port = getattr(self.args, "dashboard_port", None)
        return bool(port) and serves(port)

    def _indicator_rows(self) -> int:
        import psycopg2

        conn = psycopg2.connect(self.settings.postgres_url, connect_timeout=3)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM price_indicators")
                return int(cur.fetchone()[0])
        finally:
            conn.close()

    def check(self) -> None:
        probes = {
            "ingest": (
                self._kafka_has_messages,
                f"first poll published to {self.settings.kafka_topic}",
            ),
            "spark": (self._parquet_written, f"raw Parquet written under {self.settings.raw_dir}"),
            "dagster": (
                self._ui_serves,
                f"UI serving on http://{self.args.host}:{self.args.port}",
            ),
            "indicators": (self._indicator_rows, "price_indicators has rows in PostgreSQL"),
            "dashboard": (
                self._dashboard_serves,
                f"http://127.0.0.1:{getattr(self.args, 'dashboard_port', '')}",
            ),
        }
        for name, (probe, message) in probes.items():
            if name in self.announced:
                continue
            try:
                ok = probe()
            except Exception:  # noqa: BLE001 - not ready yet
                ok = False
            if ok:
                self.announced.add(name)
                logger.info("ready: %s — %s", name, message)


def run(args: argparse.Namespace, settings: Settings) -> int:
    args.spark_master = args.spark_master or settings.spark_master
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stop_requested = threading.Event()

    def request_stop(signum, _frame) -> None:
        logger.info("received %s; stopping", signal.Signals(signum).name)
        stop_requested.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with running_services(settings, log=logger.info) as resolved:
            return _supervise(args, resolved, stop_requested)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("all components stopped")


def _supervise(args, settings: Settings, stop_requested: threading.Event) -> int:
    """Start the children, announce readiness, stop them all in reverse order on exit."""
    from marketflow_assets.resources.postgres import PostgresResource

    PostgresResource(url=settings.postgres_url).ensure_tables()
    source = resolve_source(args, settings)
    env = child_env(settings, args)
    children = build_children(args, settings, source)
    children.append(dashboard_child(args, settings))
    with contextlib.ExitStack() as stack:  # unwinds last-started first
        server = None
        for child in children:
            if stop_requested.is_set():
                return 0
            if child.name == "dagster" and not env.get(SPARK_REMOTE_ENV):
                server = launch_spark_connect(settings, args, env, stack)
            stack.callback(stop_child, child)
            start_child(child, env)
        if server is not None:
            server.wait_ready()  # its JVM started alongside dagster dev
            logger.info("spark-connect: ready at %s for Dagster runs", server.remote)
        return _watch(children, settings, args, stop_requested)


def launch_spark_connect(
    settings: Settings, args, env: dict[str, str], stack: contextlib.ExitStack
) -> EmbeddedSparkConnect:
    """Launch the Spark Connect server that Dagster runs use for large inputs (backfills): one
    warm driver instead of a JVM per run. Sets ``MARKETFLOW_SPARK_REMOTE`` in ``env``; does not
    wait for the server (call ``wait_ready``), so dagster dev starts meanwhile."""
    server = EmbeddedSparkConnect(settings.data_dir / "logs", master=args.spark_master)
    stack.callback(server.stop)
    env[SPARK_REMOTE_ENV] = server.launch()
    return server


def _watch(children: list[Child], settings: Settings, args, stop_requested) -> int:
    """Announce readiness; return 1 as soon as a child dies, 0 when a stop is requested."""
    probes = ReadinessProbes(settings, args)
    logger.info("marketflow is starting; Ctrl-C stops everything")
    while not stop_requested.wait(2.0):
        for child in children:
            code = child.proc.poll()
            if code is not None:
                logger.error(
                    "%s exited with code %s; stopping. Last lines of %s:\n%s",
                    child.name,
                    code,
                    child.log_path,
                    tail(child.log_path),
                )
                return 1
        probes.check()
    return 0
