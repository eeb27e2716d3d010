"""``marketflow`` processes for the dashboard tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from marketflow_assets.runtime.services import free_port

MARKETFLOW = str(Path(sys.executable).with_name("marketflow"))


def env(data_dir: Path, postgres_url: str | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MARKETFLOW_", "COINGECKO_", "DAGSTER_"))
    }
    env.update({"MARKETFLOW_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
    if postgres_url:
        env["MARKETFLOW_POSTGRES_URL"] = postgres_url
    return env


class Dashboard:
    """``marketflow dashboard --port P`` as a subprocess; stopped with SIGTERM."""

    def __init__(self, data_dir: Path, log_path: Path, postgres_url: str | None = None):
        self.port = free_port()
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                [MARKETFLOW, "dashboard", "--port", str(self.port)],
                env=env(data_dir, postgres_url),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            if "dashboard: serving on" in self.log_path.read_text():
                return
            time.sleep(0.5)
        raise AssertionError("dashboard not serving:\n" + self.log_path.read_text()[-3000:])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
