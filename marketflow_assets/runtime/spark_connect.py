"""Embedded Spark Connect server: one long-lived Spark driver shared by every Dagster run.

``dagster dev`` launches each run in a fresh process. With a local Spark master every run would
start its own JVM and Python workers (~15-30 s before the first row is computed); with
``MARKETFLOW_SPARK_REMOTE=sc://host:port`` the ``pyspark`` resource connects to a running Spark
Connect server instead, whose JVM and Python workers stay warm (a partition refresh then takes a
few seconds). :class:`EmbeddedSparkConnect` starts such a server from the pyspark distribution in
the venv (``spark-submit --class ...SparkConnectServer``) with :func:`spark_conf`, bound to
127.0.0.1. Needs the ``pyspark[connect]`` client extras (grpcio-status, googleapis-common-protos,
zstandard).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from marketflow_assets.runtime.services import (
    ServiceError,
    die_with_parent,
    free_port,
    stop_process,
)
from marketflow_assets.settings import ENV_SPARK_REMOTE, child_environment, load_settings
from marketflow_assets.spark_session import long_running_driver_conf, spark_conf

logger = logging.getLogger(__name__)

SPARK_REMOTE_ENV = ENV_SPARK_REMOTE
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def connect_server_command(port: int, master: str | None = None) -> list[str]:
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    settings = load_settings()
    conf = long_running_driver_conf(spark_conf(master, settings), settings.spark_connect_memory)
    cmd = [str(spark_home / "bin" / "spark-submit"), "--class", SERVER_CLASS]
    cmd += ["--master", conf.pop("spark.master")]
    conf.update(
        {
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(port),
            # Dagster runs come now and then (backfills): one idle Python worker kept between
            # them, not one per task slot of the last run
            "spark.python.factory.idleWorkerMaxPoolSize": "1",
        }
    )
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    return cmd


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            if sock.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.5)
    return False


class EmbeddedSparkConnect:
    """Spark Connect server on 127.0.0.1; ``with EmbeddedSparkConnect(log_dir) as remote:``."""

    def __init__(
        self,
        log_dir: Path,
        port: int | None = None,
        master: str | None = None,
        timeout: float = 120.0,
    ):
        self.log_dir = Path(log_dir)
        self.port = port or free_port()
        self.master = master
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.log_path = self.log_dir / "spark-connect.log"

    @property
    def remote(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def start(self) -> str:
        """Launch the server and wait until it accepts connections; returns :attr:`remote`."""
        self.launch()
        return self.wait_ready()

    def launch(self) -> str:
        """Launch the server without waiting (see :meth:`wait_ready`); returns :attr:`remote`.

        Clients may connect right away: the Spark Connect client retries while the server's
        JVM starts (~20 s), so other components can start meanwhile.
        """
        import pyspark

        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = child_environment(
            overrides={
                "SPARK_HOME": str(Path(pyspark.__file__).parent),
                "SPARK_LOCAL_IP": "127.0.0.1",
            },
            defaults={"PYSPARK_PYTHON": sys.executable},
        )
        env.pop("SPARK_REMOTE", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                connect_server_command(self.port, self.master),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.log_dir,
                preexec_fn=die_with_parent,
                start_new_session=True,  # a terminal's Ctrl-C must not kill it before its clients
            )
        return self.remote

    def wait_ready(self) -> str:
        """Block until the launched server listens; ServiceError (server stopped) if it does not."""
        if not wait_for_port("127.0.0.1", self.port, self.timeout) or self.proc.poll() is not None:
            self.stop()
            raise ServiceError(
                f"Spark Connect server did not start on 127.0.0.1:{self.port} within "
                f"{self.timeout:.0f} s (log: {self.log_path}); "
                f"set {SPARK_REMOTE_ENV} to use another"
            )
        logger.info("Spark Connect server ready at %s (log %s)", self.remote, self.log_path)
        return self.remote

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, "Spark Connect server", timeout=20)
            self.proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class StartOnConnect:
    """The Spark Connect URL of ``marketflow up`` before its server runs: ``up`` listens on
    127.0.0.1:``port`` itself, and the server's JVM (~250 MB, started on ``backend_port``) only
    starts when a client first connects (a Dagster run that computes on Spark: a backfill, a
    large input). That first connection sets :attr:`wanted` (the supervisor then starts the
    server), is held until the server listens (at most ``wait_s``; the Spark Connect client
    retries after that, as it does while any server starts), then relayed both ways byte for
    byte, like every later connection. The server is restarted by the supervisor like any
    child; connections during a restart wait for it the same way."""

    def __init__(self, port: int, backend_port: int, wait_s: float = 120.0):
        self.port = port
        self.backend_port = backend_port
        self.wait_s = wait_s
        self.wanted = threading.Event()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, name="spark-connect-relay", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self.wanted.set()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _backend(self) -> socket.socket | None:
        deadline = time.monotonic() + self.wait_s
        while not self._closed.is_set() and time.monotonic() < deadline:
            try:
                return socket.create_connection(("127.0.0.1", self.backend_port), timeout=2)
            except OSError:
                time.sleep(0.25)
        return None

    def _serve(self, client: socket.socket) -> None:
        backend = self._backend()
        if backend is None:
            client.close()
            return
        backend.settimeout(None)
        for sock in (client, backend):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        other = threading.Thread(target=_pipe, args=(backend, client), daemon=True)
        other.start()
        _pipe(client, backend)
        other.join()
        client.close()
        backend.close()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    """Copy ``source`` to ``target`` until ``source`` ends, then end ``target``'s writing side."""
    with contextlib.suppress(OSError):
        while data := source.recv(1 << 16):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)
