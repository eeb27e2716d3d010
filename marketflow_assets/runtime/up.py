"""``marketflow up``: the whole pipeline on one machine, supervised, stopped cleanly by a signal.

Order of start-up: PostgreSQL and Kafka (embedded unless configured), the tables and topics, then
the child processes — the ingest loop, the Spark streaming job, Dagster (:func:`dagster_children`:
its code server, then the webserver on 127.0.0.1:3000 and the daemon), a Spark Connect server for
the Dagster runs (its URL is served from the start, its JVM started when a run first connects:
:class:`OnDemandConnect`), the follower, the live path and the dashboard. Each child runs in its
own process group with its output in ``$MARKETFLOW_DATA_DIR/logs/<name>.log`` (Dagster's three:
``dagster.log``); one line is printed per component when it is ready. A child that exits is
restarted with exponential backoff; one that exits while a service it needs (Kafka, PostgreSQL) is
down waits for it instead; a crash loop (more than ``--max-restarts`` restarts within
``--restart-window`` seconds while its services are up) stops that child only, and ingest never
(see :mod:`marketflow_assets.runtime.supervisor`). An embedded broker or PostgreSQL that dies is
started again on the same port / data directory. Each service outage and each crash loop is alerted
(``MARKETFLOW_ALERT_WEBHOOK_URL``). On SIGINT (Ctrl-C), SIGTERM or SIGHUP (a closed terminal) the
children are stopped in reverse order (whole process groups, so Dagster's run workers and Spark's
JVM go too), then the broker and PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

from marketflow_assets.runtime import supervisor as _supervisor
from marketflow_assets.runtime.services import (
    EmbeddedKafka,
    EmbeddedPostgres,
    ServiceError,
    free_port,
    kafka_reachable,
    postgres_reachable,
    running_services,
)
from marketflow_assets.runtime.spark_connect import (
    SPARK_REMOTE_ENV,
    StartOnConnect,
    connect_server_command,
    wait_for_port,
)
from marketflow_assets.runtime.supervisor import (  # noqa: F401 - Child & co. are used via `up.` too
    JVM_NOISE,
    Child,
    Dependencies,
    RestartPolicy,
    Supervisor,
    describe_exit,
    stop_child,
    tail,
)
from marketflow_assets.settings import (
    DEFAULT_DAGSTER_UI_URL,
    ConfigError,
    Settings,
    child_environment,
    load_live_settings,
)

logger = logging.getLogger("marketflow.up")

REPO_ROOT = Path(__file__).resolve().parents[2]
SPARK_JOB = REPO_ROOT / "spark_streaming" / "kafka_streaming.py"
#: Micro-batch trigger of the streaming job under ``up``: 0 = a micro-batch as soon as a poll's
#: records are in (``--trigger-seconds 0``), not on the next tick of a clock (a 2 s trigger
#: held a poll up to 2 s before its micro-batch started; docs/PERFORMANCE.md, twelfth round).
STREAMING_TRIGGER_SECONDS = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from marketflow_assets import cli_defaults

    cli_defaults.add_source_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="host of the Dagster UI")
    parser.add_argument("--port", type=int, default=3000, help="port of the Dagster UI")
    parser.add_argument("--dashboard-port", type=int, default=8501, help="analyst dashboard port")
    parser.add_argument(
        "--spark-master",
        default=None,
        help="master URL of Spark for the streaming job and the assets "
        "(default: $MARKETFLOW_SPARK_MASTER, else local[*])",
    )
    parser.add_argument(
        "--record",
        type=Path,
        help="append every poll to this replay file (JSON Lines) once it is in the spool "
        "(or, without a spool, acknowledged by the broker)",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        help="a child restarted more often than this within --restart-window while Kafka and "
        "PostgreSQL are up is crash-looping: it is stopped and alerted (ingest is restarted "
        "every minute instead); `up` exits 1 when stopped",
    )
    parser.add_argument(
        "--restart-window",
        type=float,
        default=300.0,
        help="seconds over which restarts are counted",
    )


def resolve_source(args: argparse.Namespace, settings: Settings) -> str:
    """``auto`` → ``coingecko`` when the API answers, else ``simulate``; says which in one line."""
    from marketflow_assets.cli_defaults import check_replay_file
    from marketflow_assets.ingest.sources import resolve_source as resolve

    check_replay_file(args)

    return resolve(args.source, settings, logger)


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
            "MARKETFLOW_PRICE_ALERTS_FILE": str(settings.price_alerts_file or ""),
            "MARKETFLOW_SPARK_MASTER": args.spark_master,
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "PYTHONUNBUFFERED": "1",
        },
        # glibc's malloc keeps up to 8 arenas per core in every multi-threaded process (the
        # JVM, the gRPC servers): two are enough here, ~25 MB less across the stack
        defaults={"MALLOC_ARENA_MAX": "2"},
    )
    security = settings.kafka_security
    for name, path in (
        ("MARKETFLOW_KAFKA_SSL_CAFILE", security.ssl_cafile),
        ("MARKETFLOW_KAFKA_SSL_CERTFILE", security.ssl_certfile),
        ("MARKETFLOW_KAFKA_SSL_KEYFILE", security.ssl_keyfile),
    ):
        if path is not None:  # absolute: children may run in another directory
            env[name] = str(path)
    env.update(prepare_dagster_home(settings.data_dir / "dagster_home"))
    return env


def start_child(child: Child, env: dict[str, str]) -> None:
    """Start ``child`` unsupervised (benchmarks), in the repository root like ``up`` does (and,
    like ``up``, wait until it listens when the children after it need its port)."""
    _supervisor.start_child(child, env, REPO_ROOT)
    if child.listens_on:
        wait_listening(child, threading.Event())


def replay_progress_path(settings: Settings) -> Path:
    """Where a replaying ingest child keeps its position, so a restart resumes after it."""
    return settings.data_dir / "ingest" / "replay_progress.json"


def build_children(args, settings: Settings, source: str) -> list[Child]:
    logs = settings.data_dir / "logs"
    ingest = [sys.executable, "-m", "marketflow_assets.cli", "ingest", "--source", source]
    ingest += ["--interval", str(args.interval), "--coins", str(args.coins)]
    if source == "replay":
        ingest += ["--replay-file", str(Path(args.replay_file).absolute())]
        ingest += ["--speed", str(args.speed)]
        ingest += ["--resume-file", str(replay_progress_path(settings))]
    if getattr(args, "record", None):
        ingest += ["--record", str(Path(args.record).absolute())]
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
    children = [
        # a replay that reached the end of its file is done; other sources run until stopped
        Child(
            "ingest",
            ingest,
            logs / "ingest.log",
            finished_on_success=source == "replay",
            needs=("kafka",),
            essential=True,  # the collection: never stopped but by the user
        ),
        Child(
            "spark", spark, logs / "spark_streaming.log", needs=("kafka",), quiet_lines=JVM_NOISE
        ),
        *dagster_children(args, settings),
        Child("follow", follow, logs / "follow.log", needs=("postgres",)),
    ]
    for child in children:
        with_batch_priority(child, settings)
    if load_live_settings().enabled:  # MARKETFLOW_LIVE=0 turns the live path off
        children.append(live_child(settings))
    return children


#: The children doing batch work, started with ``settings.batch_nice`` added to their niceness:
#: the streaming job and the Dagster processes that run materializations (the daemon; runs start
#: in the code server's processes). The live path, ingest, the follower (the exact path's last
#: step), the webserver and the dashboard keep the default priority.
BATCH_CHILDREN = ("spark", "dagster-code", "dagster-daemon", "spark-connect")


def with_batch_priority(child: Child, settings: Settings) -> Child:
    """``child``, started at ``settings.batch_nice`` when it is one of :data:`BATCH_CHILDREN`."""
    if child.name in BATCH_CHILDREN:
        child.nice = settings.batch_nice
    return child


#: The code location's name in the UI (as ``workspace.yaml`` names it for a plain ``dagster dev``).
LOCATION_NAME = "marketflow"


def dagster_children(args, settings: Settings) -> list[Child]:
    """Dagster as three children, what ``dagster dev`` would start under a process of its own
    plus a code-server proxy (~170 MB for the two): ``dagster-code``, the code location's gRPC
    server on 127.0.0.1 (webserver, daemon and runs talk to it; runs start in its processes);
    ``dagster``, the webserver (the UI on ``--host``:``--port``); ``dagster-daemon`` (sensors,
    schedules, run queue and retries). One workspace file in the Dagster home points both at the
    code server; all three log to ``logs/dagster.log`` and run in the Dagster home (beside the
    repository's SQLite ``dagster.yaml`` Dagster would warn about it). A code change needs
    ``dagster-code`` restarted (or ``up``): the UI's "Reload" re-reads the running server."""
    port = free_port()
    home = settings.data_dir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    workspace = home / "workspace.yaml"
    workspace.write_text(
        "# written by `marketflow up`: the code server it supervises (child dagster-code)\n"
        "load_from:\n"
        "  - grpc_server:\n"
        "      host: 127.0.0.1\n"
        f"      port: {port}\n"
        f"      location_name: {LOCATION_NAME}\n"
    )
    bin_dir = Path(sys.executable).parent
    code = [sys.executable, "-m", "dagster", "api", "grpc", "-m", "marketflow_assets.definitions"]
    code += ["-d", str(REPO_ROOT), "--location-name", LOCATION_NAME]
    # lazy: the server listens at once and a definitions error is shown in the UI, not a crash
    code += ["-h", "127.0.0.1", "-p", str(port), "--lazy-load-user-code"]
    webserver = [str(bin_dir / "dagster-webserver"), "-w", str(workspace)]
    webserver += ["-h", args.host, "-p", str(args.port)]
    daemon = [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)]
    log = settings.data_dir / "logs" / "dagster.log"
    children = [
        Child(name, argv, log, stop_signal=signal.SIGINT, needs=("postgres",), cwd=home)
        for name, argv in (
            ("dagster-code", code),
            ("dagster", webserver),
            ("dagster-daemon", daemon),
        )
    ]
    children[0].listens_on = port  # the webserver and the daemon start once it listens
    for child in children[1:]:
        child.death_signal = signal.SIGKILL  # when `up` dies: see Child.death_signal
    return children


def wait_listening(child: Child, stop_requested: threading.Event, timeout_s: float = 120.0) -> None:
    """Wait until ``child`` listens on its port (:attr:`Child.listens_on`), it exited (the
    supervisor restarts it), a stop is requested or ``timeout_s`` passed (said, not raised)."""
    deadline = time.monotonic() + timeout_s
    while not stop_requested.is_set() and time.monotonic() < deadline:
        if wait_for_port("127.0.0.1", child.listens_on, 0.2):
            return
        if child.proc is None or child.proc.poll() is not None:
            return
    if not stop_requested.is_set():
        logger.warning(
            "%s: not listening on 127.0.0.1:%s after %.0f s; starting the rest anyway (see %s)",
            child.name,
            child.listens_on,
            timeout_s,
            child.log_path,
        )


def dashboard_child(args, settings: Settings) -> Child:
    """``marketflow dashboard`` on 127.0.0.1:--dashboard-port, reading the same PostgreSQL."""
    argv = [sys.executable, "-m", "marketflow_assets.cli", "dashboard"]
    argv += ["--port", str(args.dashboard_port)]
    child = Child(
        "dashboard", argv, settings.data_dir / "logs" / "dashboard.log", needs=("postgres",)
    )
    if settings.dagster_ui_url == DEFAULT_DAGSTER_UI_URL:  # its links to runs: this UI
        child.env["MARKETFLOW_DAGSTER_UI_URL"] = f"http://127.0.0.1:{args.port}"
    return child


def live_child(settings: Settings) -> Child:
    """``marketflow live``: Kafka -> price_indicators / market_movers in seconds."""
    argv = [sys.executable, "-m", "marketflow_assets.cli", "live"]
    return Child("live", argv, settings.data_dir / "logs" / "live.log", needs=("kafka", "postgres"))


def spark_connect_child(settings: Settings, args) -> tuple[Child, str]:
    """The Spark Connect server that Dagster runs use for large inputs (backfills): one warm
    driver instead of a JVM per run, on a fixed free port (a restart keeps its URL). Returns the
    child and its ``sc://`` URL (:class:`OnDemandConnect` starts it when first needed)."""
    import pyspark

    port = free_port()
    logs = settings.data_dir / "logs"
    env = {
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_REMOTE": None,
        SPARK_REMOTE_ENV: None,
    }
    argv = connect_server_command(port, args.spark_master)
    child = Child(
        "spark-connect", argv, logs / "spark-connect.log", env=env, cwd=logs, quiet_lines=JVM_NOISE
    )
    return with_batch_priority(child, settings), f"sc://127.0.0.1:{port}"


class ReadinessProbes:
    """One log line per component when it is ready, checked from the outside (no log parsing)."""

    def __init__(self, settings: Settings, args):
        self.settings = settings
        self.args = args
        self.announced: set[str] = set()

    def _kafka_has_messages(self) -> bool:
        from marketflow_assets import kafka_client

        # never names the topic in a metadata request: Tansu would create it (4 partitions)
        consumer = kafka_client.consumer(
            self.settings.kafka_bootstrap, self.settings.kafka_security
        )
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
        from marketflow_assets.raw_dataset import has_files

        return has_files(self.settings.raw_dir)

    def _ui_serves(self) -> bool:
        url = f"http://{self.args.host}:{self.args.port}/server_info"
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200

    def indicator_rows(self, source: str | None = None) -> int:
        """Rows of ``price_indicators`` (only those of ``source``: 'live' or 'dagster')."""
        import psycopg2

        conn = psycopg2.connect(self.settings.postgres_url, connect_timeout=3)
        try:
            with conn.cursor() as cur:
                sql = "SELECT count(*) FROM price_indicators"
                if source is None:
                    cur.execute(sql)
                else:
                    cur.execute(f"{sql} WHERE source = %s", (source,))
                return int(cur.fetchone()[0])
        finally:
            conn.close()

    def _dashboard_serves(self) -> bool:
        from marketflow_assets.dashboard.command import serves

        port = getattr(self.args, "dashboard_port", None)
        return bool(port) and serves(port)

    def check(self) -> None:
        probes = {
            "ingest": (
                self._kafka_has_messages,
                f"first poll published to {self.settings.kafka_topic}",
            ),
            "spark": (
                self._parquet_written,
                f"raw_prices rows committed under {self.settings.raw_dir}",
            ),
            "dagster": (
                self._ui_serves,
                f"UI serving on http://{self.args.host}:{self.args.port}",
            ),
            "indicators": (self.indicator_rows, "price_indicators has rows in PostgreSQL"),
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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def check_configuration(args: argparse.Namespace) -> None:
    """Everything ``up`` will read later, checked before anything starts (a ConfigError names
    the bad variable or option: one line, exit 2); warns about a UI open to the network."""
    from marketflow_assets.settings import (
        load_check_settings,
        load_live_settings,
        load_monitoring_settings,
    )

    if args.max_restarts < 0 or args.restart_window <= 0:
        raise ConfigError("--max-restarts must be >= 0 and --restart-window > 0")
    for port, option in ((args.port, "--port"), (args.dashboard_port, "--dashboard-port")):
        if not 0 < port < 65536:
            raise ConfigError(f"{option} {port} is not a TCP port")
    load_check_settings()
    load_monitoring_settings()
    load_live_settings()
    warn_if_exposed(args.host)


def warn_if_exposed(host: str) -> None:
    """``--host`` must be an address of this machine; any but loopback gets a warning: the
    Dagster UI has no login of its own (anyone reaching the port can launch and wipe runs)."""
    import ipaddress

    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise ConfigError(f"--host {host!r} is not an address of this machine") from None
    addresses = {info[4][0] for info in infos}
    if all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        return
    logger.warning(
        "the Dagster UI will listen on %s, reachable from other machines, and has NO "
        "authentication: put it behind the TLS + password proxy of docs/DEPLOY.md "
        "(deploy/nginx/) or keep the default --host 127.0.0.1",
        host,
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    check_configuration(args)
    args.spark_master = args.spark_master or settings.spark_master
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stop_requested = threading.Event()
    hurry = threading.Event()  # a second signal: do not wait for the Spark job to drain

    def request_stop(signum, _frame) -> None:
        if stop_requested.is_set():
            logger.info(
                "received %s again; not waiting for the Spark job", signal.Signals(signum).name
            )
            hurry.set()
            return
        logger.info("received %s; stopping", signal.Signals(signum).name)
        stop_requested.set()

    previous = {s: signal.signal(s, request_stop) for s in STOP_SIGNALS}
    try:
        embedded: dict = {}
        with running_services(settings, log=logger.info, embedded=embedded) as resolved:
            code = _supervise(
                args,
                resolved,
                stop_requested,
                embedded.get("kafka"),
                hurry,
                embedded.get("postgres"),
            )
        report_spool(resolved)
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("all components stopped")


def create_marketflow_tables(postgres_url: str) -> None:
    """The Marketflow tables (idempotent), over plain psycopg2: ``up`` lives as long as the
    stack and loads neither Dagster nor pandas (the children do)."""
    import psycopg2

    from marketflow_assets.schema import create_tables

    conn = psycopg2.connect(postgres_url, connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            create_tables(cur)
    finally:
        conn.close()


def _supervise(
    args,
    settings: Settings,
    stop_requested: threading.Event,
    broker: EmbeddedKafka | None,
    hurry: threading.Event | None = None,
    postgres: EmbeddedPostgres | None = None,
) -> int:
    """Start the children, announce readiness, restart the ones that exit, stop them all in
    reverse order on exit."""
    from marketflow_assets.instance import seed_in_child

    create_marketflow_tables(settings.postgres_url)
    source = resolve_source(args, settings)
    if source == "replay":  # a new `up` replays the file from its start
        replay_progress_path(settings).unlink(missing_ok=True)
    env = child_env(settings, args)
    seed_in_child(env)  # the run-retry daemon's first start then logs no warning
    children = build_children(args, settings, source)
    children.append(dashboard_child(args, settings))
    policy = RestartPolicy(max_restarts=args.max_restarts, window_s=args.restart_window)
    supervisor = Supervisor([], env, policy, cwd=REPO_ROOT, dependencies=dependencies(settings))
    connect: OnDemandConnect | None = None
    with contextlib.ExitStack() as stack:
        stack.callback(_stop_all, supervisor, settings, broker is not None, hurry)
        for child in children:
            if stop_requested.is_set():
                return 0
            # runs start in the code server's processes: it needs the Spark Connect URL
            if child.name == "dagster-code" and not env.get(SPARK_REMOTE_ENV):
                connect = OnDemandConnect(settings, args)
                stack.callback(connect.close)
                env[SPARK_REMOTE_ENV] = connect.url
                logger.info(
                    "spark-connect: %s for Dagster runs; its JVM starts with the first run "
                    "that computes on Spark (a backfill, a large input)",
                    connect.url,
                )
            supervisor.start(child)
            if child.listens_on:
                wait_listening(child, stop_requested)
        return _watch(supervisor, settings, args, stop_requested, connect, broker, postgres)


class OnDemandConnect:
    """``up``'s Spark Connect server, started when a client first connects
    (:class:`~marketflow_assets.runtime.spark_connect.StartOnConnect`): its URL is ``up``'s
    own port, the server listens on another one."""

    def __init__(self, settings: Settings, args):
        self.child, backend = spark_connect_child(settings, args)
        self.backend_port = int(backend.rsplit(":", 1)[1])
        self.relay = StartOnConnect(free_port(), self.backend_port)
        self.url = f"sc://127.0.0.1:{self.relay.port}"
        self.started = self.ready = False
        self.child.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.child.log_path.touch()  # its log exists from the start, like every child's

    def check(self, supervisor: Supervisor) -> None:
        """Start the server once a client asked for it; say once when it is ready."""
        if not self.started and self.relay.wanted.is_set():
            logger.info("spark-connect: a Dagster run needs Spark; starting the server")
            supervisor.start(self.child)
            self.started = True
        if self.started and not self.ready and wait_for_port("127.0.0.1", self.backend_port, 0.1):
            logger.info("spark-connect: ready at %s for Dagster runs", self.url)
            self.ready = True

    def close(self) -> None:
        self.relay.close()


def _watch(
    supervisor: Supervisor,
    settings: Settings,
    args,
    stop_requested,
    connect: OnDemandConnect | None,
    broker: EmbeddedKafka | None = None,
    postgres: EmbeddedPostgres | None = None,
) -> int:
    """Announce readiness and supervise until a stop is requested; then 0, or 1 when a child
    had been stopped for crash-looping."""
    from marketflow_assets.monitoring.location_health import LocationWatch

    probes = ReadinessProbes(settings, args)
    locations = LocationWatch(f"http://{args.host}:{args.port}")  # code-location load errors
    watches = embedded_watches(supervisor, settings, broker, postgres)
    logger.info("marketflow is starting; Ctrl-C stops everything")
    while not stop_requested.wait(1.0):
        for watch in watches:
            watch.check()
        supervisor.poll()
        probes.check()
        locations.check()  # every 30 s: one alert per load failure, one when it loads again
        if connect is not None:
            connect.check(supervisor)
    for reason in supervisor.given_up.values():
        logger.error("stopped while crash-looping: %s", reason)
    return 1 if supervisor.given_up else 0


def emit_alert(key: str, previous: str, state: str, text: str) -> bool:
    """An alert of ``up`` (a service outage, a crash loop) through the project's one alert
    path: a log line, and the webhook when ``MARKETFLOW_ALERT_WEBHOOK_URL`` is set."""
    from marketflow_assets.monitoring.alerts import PASSED, Alert, emit_alert
    from marketflow_assets.settings import load_monitoring_settings

    webhook = load_monitoring_settings().alert_webhook_url
    state = PASSED if state == "up" else state  # a recovery: logged at INFO, like the checks'
    try:
        return emit_alert(Alert(key, previous, state, text), webhook)
    except Exception as exc:  # noqa: BLE001 - an alert must never stop the supervisor
        logger.warning("could not send the alert %r: %s", text, exc)
        return False


def dependencies(settings: Settings, alert=emit_alert) -> Dependencies:
    """Probes of the services the children need: a TCP connect to the broker, a connection to
    PostgreSQL; each outage alerted through ``alert`` on both edges."""
    probes = {}
    if settings.kafka_bootstrap:
        probes["kafka"] = lambda: kafka_reachable(settings.kafka_bootstrap)
    if settings.postgres_url:
        probes["postgres"] = lambda: postgres_reachable(settings.postgres_url)
    return Dependencies(probes, alert)


class EmbeddedWatch:
    """Starts an embedded service (``name``) again when it died: ``alive`` says whether it
    runs, ``restart`` starts it (raises ServiceError), ``after`` runs after a restart. Failed
    attempts are retried with the supervisor's backoff; the outage is marked in the
    supervisor's :class:`Dependencies` (one alert when it goes, one when it is back)."""

    def __init__(self, name: str, supervisor: Supervisor, alive, restart, after=None):
        self.name = name
        self.supervisor = supervisor
        self.alive = alive
        self.restart = restart
        self.after = after
        self.attempts = 0
        self.next_try: float | None = None  # set while the service is down

    def check(self) -> None:
        deps = self.supervisor.dependencies
        now = time.monotonic()
        if self.next_try is None:
            if self.alive():
                return
            deps.mark(self.name, False, "the embedded server died")
            self.attempts, self.next_try = 0, now
        if now < self.next_try:
            return
        try:
            self.restart()
        except Exception as exc:  # noqa: BLE001 - ServiceError or worse: heal, never halt
            self.attempts += 1
            delay = self.supervisor.policy.delay(self.attempts)
            self.next_try = now + delay
            logger.warning("%s: restart failed (%s); trying again in %.3g s", self.name, exc, delay)
            return
        self.next_try = None
        deps.mark(self.name, True)
        if self.after is not None:
            self.after()


def embedded_watches(
    supervisor: Supervisor,
    settings: Settings,
    broker: EmbeddedKafka | None,
    postgres: EmbeddedPostgres | None,
) -> list[EmbeddedWatch]:
    """Watches of the embedded broker and PostgreSQL that ``up`` started."""
    watches = []
    if postgres is not None:

        def restart_postgres() -> None:
            logger.warning(
                "postgres: the embedded PostgreSQL died; starting it again on %s",
                postgres.pgdata,
            )
            postgres.restart()
            logger.info("postgres: embedded PostgreSQL restarted (%s)", postgres.url)

        watches.append(EmbeddedWatch("postgres", supervisor, postgres.alive, restart_postgres))
    if broker is not None:
        watches.append(
            EmbeddedWatch(
                "kafka",
                supervisor,
                lambda: broker.proc is not None and broker.proc.poll() is None,
                lambda: _restart_broker(broker, settings),
                lambda: _replay_spool_after_restart(supervisor, settings),
            )
        )
    return watches


def report_spool(settings: Settings) -> int:
    """Print one line when records not yet in raw Parquet are left in the ingest spool (a stop
    after a crash loop or a lost broker); returns their count."""
    from marketflow_assets.ingest.spool import stop_line, unwritten_count

    try:
        count = unwritten_count(settings.spool_dir, settings.kafka_topic, settings.raw_dir)
    except Exception as exc:  # noqa: BLE001 - stopping goes on whatever happens here
        logger.warning("could not count the records of the spool %s: %s", settings.spool_dir, exc)
        return 0
    if count:
        print(stop_line(count, settings.spool_dir), flush=True)
    return count


def spool_replay_child(settings: Settings) -> Child:
    """A one-off ``marketflow ingest --replay-spool`` (after a broker restart, when the ingest
    child has finished its replay and cannot resend the spool itself)."""
    argv = [sys.executable, "-m", "marketflow_assets.cli", "ingest", "--replay-spool"]
    log_path = settings.data_dir / "logs" / "ingest.log"
    return Child("spool-replay", argv, log_path, finished_on_success=True)


def _replay_spool_after_restart(supervisor: Supervisor, settings: Settings | None) -> None:
    """After a broker restart: a running ingest child notices the lost topic itself (its sender
    reconnects, recreates the topics and resends the spool; its polls never stop), so it is left
    alone; a finished one (a replay at its end) gets a one-off ``--replay-spool`` instead."""
    ingest = next((c for c in supervisor.children if c.name == "ingest"), None)
    if ingest is None or not ingest.finished:
        return
    if settings is None or settings.spool_dir is None:
        return
    child = next((c for c in supervisor.children if c.name == "spool-replay"), None)
    if child is None:
        child = spool_replay_child(settings)
    else:
        stop_child(child)
        child.finished = False
    logger.info("spool-replay: resending the spool %s to the new broker", settings.spool_dir)
    supervisor.start(child)


def _watch_broker(
    broker: EmbeddedKafka,
    supervisor: Supervisor,
    restarts: list[float],
    settings: Settings | None = None,
):
    """Restart the embedded broker on its port when it died; ingest, never restarted, recreates
    the topics and resends its spool (the records not yet in raw Parquet). Without a spool, the
    messages the Spark job had not yet read are lost; the job itself notices the new topic and
    continues with its messages. Returns why it could not be restarted, else None. (``up``
    itself uses an :class:`EmbeddedWatch`, which retries with backoff.)"""
    if broker.proc is None or broker.proc.poll() is None:
        return None
    restarts.append(time.monotonic())
    try:
        _restart_broker(broker, settings)
    except ServiceError as exc:
        return f"kafka: the embedded broker could not be restarted: {exc}"
    _replay_spool_after_restart(supervisor, settings)
    return None


def _restart_broker(broker: EmbeddedKafka, settings: Settings | None) -> None:
    """Start the embedded broker again on its port (raises ServiceError)."""
    what = describe_exit(broker.proc.returncode) if broker.proc is not None else "is down"
    spooled = settings is not None and settings.spool_dir is not None
    logger.warning(
        "kafka: the embedded broker %s; restarting it on %s. Its topics were in memory only: %s",
        what,
        broker.bootstrap,
        f"ingest resends the records of its spool {settings.spool_dir} not yet in raw Parquet"
        if spooled
        else "messages not yet read by the Spark job are lost (MARKETFLOW_SPOOL_DIR is off)",
    )
    broker.proc = None
    broker.start()
    logger.info("kafka: embedded broker restarted on %s", broker.bootstrap)


DRAIN_TIMEOUT_S = 120.0


def _stop_all(
    supervisor: Supervisor,
    settings: Settings,
    embedded_broker: bool,
    hurry: threading.Event | None = None,
) -> None:
    """Stop ingest first, let the Spark job write what the broker still holds (the embedded
    broker forgets it on exit), then stop the other children in reverse order of start."""
    by_name = {child.name: child for child in supervisor.children}
    ingest, spark = by_name.get("ingest"), by_name.get("spark")
    if ingest is not None:
        stop_child(ingest)
    if spark is not None and spark.proc is not None and spark.proc.poll() is None:
        try:
            drain_spark(settings, spark, DRAIN_TIMEOUT_S, embedded_broker, hurry)
        except Exception as exc:  # noqa: BLE001 - stopping goes on whatever happens here
            logger.warning("could not wait for the Spark job to drain the topic: %s", exc)
    supervisor.stop_all()


def unread_messages(settings: Settings, probe) -> int:
    """Messages in the topic beyond the Spark job's last committed batch."""
    from marketflow_assets.monitoring.lag import batch_end_offsets

    checkpoint = settings.checkpoint_dir / "raw_prices" / settings.kafka_topic
    batches = [int(f.name) for f in (checkpoint / "commits").glob("*") if f.name.isdigit()]
    done_json = batch_end_offsets(checkpoint, max(batches)) if batches else None
    done = {int(p): int(o) for p, o in ((done_json or {}).get(settings.kafka_topic) or {}).items()}
    end = probe.end_offsets(probe.partitions())
    return sum(max(0, e - done.get(p, 0)) for p, e in end.items())


def drain_spark(
    settings: Settings,
    spark: Child,
    timeout: float,
    embedded_broker: bool,
    hurry: threading.Event | None = None,
) -> None:
    """Wait (at most ``timeout`` s, or until ``hurry`` is set) until the Spark job has committed
    every message of the topic."""
    from marketflow_assets.kafka_client import KafkaOffsetProbe

    probe = KafkaOffsetProbe(
        settings.kafka_bootstrap,
        settings.kafka_topic,
        "marketflow-up-drain",
        security=settings.kafka_security,
    )
    try:
        deadline = time.monotonic() + timeout
        left = unread_messages(settings, probe)
        if left:
            logger.info("spark: writing the last %d message(s) before stopping", left)
        hurry = hurry or threading.Event()
        while left and time.monotonic() < deadline and spark.proc.poll() is None:
            if hurry.wait(1.0):
                break
            left = unread_messages(settings, probe)
        if left:
            logger.warning(
                "spark: %d message(s) not yet written; %s",
                left,
                "the next start reads them"
                if not embedded_broker
                else "they are kept in the spool"
                if settings.spool_dir is not None
                else "they are lost with the embedded broker",
            )
        else:
            logger.info("spark: every message of %s is written", settings.kafka_topic)
    finally:
        probe.close()
