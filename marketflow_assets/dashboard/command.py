"""``marketflow dashboard [--port 8501]``: serve the analyst dashboard on 127.0.0.1.

Reads only PostgreSQL: ``MARKETFLOW_POSTGRES_URL`` (not required to be up: the page says so and
retries), else the embedded server under ``$MARKETFLOW_DATA_DIR/postgres`` (started here through
:mod:`marketflow_assets.runtime.services`, and stopped on exit). Streamlit runs as a child process
(``python -m streamlit run app.py``) bound to 127.0.0.1, headless, without usage statistics;
Ctrl-C or SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from marketflow_assets.runtime.services import LOOPBACK, running_services, stop_process
from marketflow_assets.settings import ConfigError, Settings, child_environment, redact_url

logger = logging.getLogger("marketflow.dashboard")

APP = Path(__file__).with_name("app.py")
DEFAULT_PORT = 8501
READY_TIMEOUT_SECONDS = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1")


def streamlit_argv(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        LOOPBACK,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]


def url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}"


def serves(port: int, timeout: float = 2.0) -> bool:
    """True when Streamlit's health endpoint answers on ``port``."""
    try:
        with urllib.request.urlopen(f"{url(port)}/_stcore/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a TCP port")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            raise ConfigError(
                f"port {port} on {LOOPBACK} is in use ({exc.strerror}); pass --port"
            ) from None


def database(settings: Settings):
    """The configured PostgreSQL as is (the page reports an outage and retries), else the
    embedded one under the data dir, started here."""
    if settings.postgres_url:
        logger.info("dashboard: reading %s", redact_url(settings.postgres_url))
        return contextlib.nullcontext(settings)
    return running_services(settings, log=logger.info, kafka=False)


def run(args: argparse.Namespace, settings: Settings) -> int:
    _check_port(args.port)
    with database(settings) as resolved:
        env = child_environment(
            {
                "MARKETFLOW_POSTGRES_URL": resolved.postgres_url or "",
                "MARKETFLOW_DATA_DIR": str(resolved.data_dir),
            }
        )
        proc = subprocess.Popen(streamlit_argv(args.port), env=env, stdin=subprocess.DEVNULL)
        stopping = []

        def stop(signum, _frame) -> None:
            stopping.append(signum)
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while proc.poll() is None and time.monotonic() < deadline and not stopping:
                if serves(args.port):
                    logger.info("dashboard: serving on %s (Ctrl-C stops it)", url(args.port))
                    break
                time.sleep(0.5)
            code = proc.wait()
        finally:
            stop_process(proc, "streamlit", timeout=10)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if stopping:
            return 0
        logger.error("dashboard: streamlit exited with code %s", code)
        return 1
