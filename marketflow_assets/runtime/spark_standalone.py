"""A Spark standalone cluster (one master, one worker) on 127.0.0.1, from the pyspark wheel.

Spark ships its cluster daemons inside the pyspark wheel (``pyspark/bin/spark-class``); this
module starts them the way ``sbin/start-master.sh`` / ``start-worker.sh`` would, but on loopback
with ephemeral ports, small memory and no REST submission server, and stops them (and every
executor and Python worker they launched) again::

    python -m marketflow_assets.runtime.spark_standalone [--cores 2] [--memory 1g] [--work-dir DIR]

prints ``MARKETFLOW_SPARK_MASTER=spark://127.0.0.1:<port>`` and runs until Ctrl-C / SIGTERM. Point
the streaming job and the Dagster assets at it with that variable (and
``MARKETFLOW_LOCAL_MAX_ROWS=0`` to make every refresh run on it). The tests use
:class:`StandaloneCluster` as a fixture (``marketflow_assets_tests/engines/conftest.py``).

Executors launched by this worker run their Python workers with the driver's ``PYSPARK_PYTHON``
(the venv interpreter, which has pyspark, kafka-python and the ``marketflow`` package); on a real
cluster ship that environment with ``spark.archives`` (see docs/DEPLOY.md).

Nothing here imports Marketflow or reads its configuration: it needs only pyspark and Java 17.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from marketflow_assets.cli_defaults import HelpFormatter
from marketflow_assets.settings import ConfigError, child_environment

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
_MASTER_URL = re.compile(r"Starting Spark master at (spark://\S+)")
_MASTER_UI = re.compile(r"Successfully started service 'MasterUI' on port (\d+)")
_REGISTERED = "Successfully registered with master"

#: Daemon settings (``--properties-file``): no REST submission server (it would take the fixed port
#: 6066), executors' work directories of finished applications cleaned up.
DAEMON_PROPERTIES = {
    "spark.master.rest.enabled": "false",
    "spark.worker.cleanup.enabled": "true",
    "spark.worker.cleanup.appDataTtl": "3600",
    "spark.ui.reverseProxy": "false",
}


class ClusterError(RuntimeError):
    """The cluster did not start; the message names the daemon and its log."""


def spark_home() -> Path:
    """The Spark distribution inside the pyspark wheel (the driver's own Spark version)."""
    import pyspark

    return Path(pyspark.__file__).parent


class StandaloneCluster:
    """``with StandaloneCluster(work_dir) as master_url:`` - a master and one worker on loopback.

    ``cores`` / ``memory`` are what the worker offers to applications. An application takes
    ``app_cores`` of them unless it sets ``spark.cores.max`` (the master's
    ``spark.deploy.defaultCores``; default: half the cores), so that the streaming job and a
    Dagster run - or ``marketflow up``'s Spark Connect server - run side by side instead of the
    second one waiting for the first to end. Each executor asks for ``spark.executor.memory``
    (1g by default), so ``memory`` of 2g holds two applications' executors.
    Logs: ``work_dir/master.log``, ``work_dir/worker.log``; executors' stdout/stderr under
    ``work_dir/work/<app id>/<executor id>/``.
    """

    def __init__(
        self,
        work_dir: str | os.PathLike[str],
        cores: int = 2,
        memory: str = "2g",
        app_cores: int | None = None,
        daemon_memory: str = "256m",
        python: str | None = None,
        timeout: float = 120.0,
    ):
        self.work_dir = Path(work_dir).absolute()
        self.cores = cores
        self.memory = memory
        self.app_cores = app_cores or max(1, cores // 2)
        self.daemon_memory = daemon_memory
        self.python = python or sys.executable
        self.timeout = timeout
        self.master_url: str | None = None
        self.master_ui_port: int | None = None
        self.master: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.process_groups: set[int] = set()  # of master and worker, kept after stop()

    # -- paths ---------------------------------------------------------------------------------
    @property
    def master_log(self) -> Path:
        return self.work_dir / "master.log"

    @property
    def worker_log(self) -> Path:
        return self.work_dir / "worker.log"

    @property
    def executors_dir(self) -> Path:
        """Where the worker runs executors: ``<app id>/<executor id>/{stdout,stderr}``."""
        return self.work_dir / "work"

    # -- lifecycle -----------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = child_environment(
            {
                "SPARK_HOME": str(spark_home()),
                "SPARK_LOCAL_IP": "127.0.0.1",
                "SPARK_DAEMON_MEMORY": self.daemon_memory,
                "PYSPARK_PYTHON": self.python,
            }
        )
        env.pop("SPARK_REMOTE", None)
        return env

    def _launch(self, args: list[str], log: Path) -> subprocess.Popen:
        cmd = [str(spark_home() / "bin" / "spark-class"), *args]
        cmd += ["--properties-file", str(self.work_dir / "spark-daemons.conf")]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                cwd=self.work_dir,
                start_new_session=True,  # own process group: stop() takes executors along
            )
        self.process_groups.add(proc.pid)
        return proc

    def _wait_for(self, proc: subprocess.Popen, log: Path, pattern: re.Pattern | str, name: str):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            found = pattern.search(text) if isinstance(pattern, re.Pattern) else pattern in text
            if found:
                return found
            if proc.poll() is not None:
                raise ClusterError(
                    f"Spark {name} exited with code {proc.returncode} (log: {log}): "
                    + _last_line(text)
                )
            time.sleep(0.2)
        raise ClusterError(f"Spark {name} not ready within {self.timeout:.0f} s (log: {log})")

    def start(self) -> str:
        """Start master and worker; returns the master URL once the worker is registered."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.executors_dir.mkdir(exist_ok=True)
        properties = {**DAEMON_PROPERTIES, "spark.deploy.defaultCores": str(self.app_cores)}
        (self.work_dir / "spark-daemons.conf").write_text(
            "".join(f"{k}={v}\n" for k, v in properties.items())
        )
        try:
            self.master = self._launch(
                [MASTER_CLASS, "--host", "127.0.0.1", "--port", "0", "--webui-port", "0"],
                self.master_log,
            )
            self.master_url = self._wait_for(
                self.master, self.master_log, _MASTER_URL, "master"
            ).group(1)
            ui = _MASTER_UI.search(self.master_log.read_text(errors="replace"))
            self.master_ui_port = int(ui.group(1)) if ui else None
            self.worker = self._launch(
                [
                    WORKER_CLASS,
                    self.master_url,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--webui-port",
                    "0",
                    "--cores",
                    str(self.cores),
                    "--memory",
                    self.memory,
                    "--work-dir",
                    str(self.executors_dir),
                ],
                self.worker_log,
            )
            self._wait_for(self.worker, self.worker_log, _REGISTERED, "worker")
        except BaseException:
            self.stop()
            raise
        return self.master_url

    def pids(self) -> set[int]:
        """Process ids of every live process in the daemons' process groups (executors, their
        Python workers), also after :meth:`stop` (then it should be empty)."""
        groups = self.process_groups
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                # fields after the ")" that closes the command name: state ppid pgrp ...
                state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
                if int(pgrp) in groups and state != "Z":
                    found.add(int(entry.name))
        return found

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM worker then master (whole process groups), SIGKILL what is left."""
        for proc in (self.worker, self.master):
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            # executors / Python workers of the group that outlived their daemon
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.worker = self.master = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(empty log)"


PROG = "python -m marketflow_assets.runtime.spark_standalone"
DESCRIPTION = "Run a Spark standalone cluster (master + 1 worker) on 127.0.0.1 until Ctrl-C."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``marketflow spark-cluster`` and of ``python -m`` this module."""
    parser.add_argument("--cores", type=int, default=2, help="cores the worker offers")
    parser.add_argument("--memory", default="2g", help="memory the worker offers")
    parser.add_argument(
        "--app-cores",
        type=int,
        default=None,
        help="cores an application gets unless it sets spark.cores.max (default: half of --cores)",
    )
    parser.add_argument(
        "--work-dir", default="data/spark-standalone", help="logs and executor work dirs"
    )


def check_args(args: argparse.Namespace) -> str | None:
    """The one-line reason ``args`` are unusable, or None."""
    if args.cores < 1 or (args.app_cores is not None and not 1 <= args.app_cores <= args.cores):
        return "--cores must be at least 1 and --app-cores 1..--cores"
    return None


def run(args: argparse.Namespace, settings=None) -> int:  # noqa: ARG001 - `marketflow` handler
    """Start the cluster, print its master URL, run until SIGINT/SIGTERM; the exit code.

    Unusable options raise :class:`~marketflow_assets.settings.ConfigError` (exit 2).
    """
    reason = check_args(args)
    if reason:
        raise ConfigError(reason)
    cluster = StandaloneCluster(
        args.work_dir, cores=args.cores, memory=args.memory, app_cores=args.app_cores
    )
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    try:
        url = cluster.start()
    except ClusterError as exc:
        print(f"spark_standalone: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"MARKETFLOW_SPARK_MASTER={url}", flush=True)
        if cluster.master_ui_port:
            print(f"master UI: http://127.0.0.1:{cluster.master_ui_port}", flush=True)
        print(f"logs: {cluster.work_dir}; Ctrl-C stops the cluster", flush=True)
        while not stop and all(p.poll() is None for p in (cluster.master, cluster.worker)):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, formatter_class=HelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    reason = check_args(args)
    if reason:
        parser.exit(2, f"{parser.prog}: {reason}\n")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
