"""The outside check's flow in a real headless browser (Debian ``chromium`` + Playwright):

raw Parquet -> ``marketflow refresh`` -> ``marketflow dashboard`` (both on the embedded PostgreSQL
under ``$MARKETFLOW_DATA_DIR``) -> the landing page shows the top gainer and loser of the latest
snapshot with their 5-minute changes (two decimals) equal to a reference computed from the raw
rows; on an empty database the page shows a message, not an error. Skipped where Chromium or
Playwright is absent."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from marketflow_assets.indicators import compute_indicators, compute_movers
from marketflow_assets.services import free_port
from marketflow_assets_tests.dashboard.dashboard_data import synthetic_raw
from marketflow_assets_tests.helpers import write_raw_parquet

MARKETFLOW = str(Path(sys.executable).with_name("marketflow"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)"),
    pytest.mark.timeout(300),
]


def _env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MARKETFLOW_", "COINGECKO_", "DAGSTER_"))
    }
    env.update({"MARKETFLOW_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
    return env


class Dashboard:
    """``marketflow dashboard --port P`` as a subprocess; stopped with SIGTERM."""

    def __init__(self, data_dir: Path, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                [MARKETFLOW, "dashboard", "--port", str(self.port)],
                env=_env(data_dir),
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


def page_text(url: str, expect: str, timeout_ms: int = 90_000) -> str:
    """Text of the page at ``url`` once ``expect`` appears (Chromium, headless)."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.goto(url)
            page.get_by_text(expect).first.wait_for(timeout=timeout_ms)
            return page.inner_text("body")
        finally:
            browser.close()


def test_refresh_then_landing_page_in_a_browser(tmp_path):
    data_dir = tmp_path / "data"
    raw = synthetic_raw(pd.Timestamp("2026-03-02T10:20:00Z"), coins=15, polls=30, seed=11)
    rows = raw[["id", "symbol", "ts", "current_price"]].itertuples(index=False, name=None)
    write_raw_parquet(data_dir / "raw_prices", list(rows))
    refresh = subprocess.run(
        [MARKETFLOW, "refresh"], env=_env(data_dir), capture_output=True, text=True, timeout=240
    )
    assert refresh.returncode == 0, refresh.stderr[-3000:]

    # the reference, computed from the raw rows (not from PostgreSQL)
    movers = compute_movers(compute_indicators(raw))
    latest = movers[movers["snapshot_ts"] == movers["snapshot_ts"].max()]
    gainer = latest[(latest.direction == "gainer") & (latest["rank"] == 1)].iloc[0]
    loser = latest[(latest.direction == "loser") & (latest["rank"] == 1)].iloc[0]

    dashboard = Dashboard(data_dir, tmp_path / "dashboard.log")
    try:
        dashboard.wait_ready()
        text = page_text(dashboard.url, "Top gainer")
    finally:
        assert dashboard.stop() == 0
    found = re.search(
        r"Top gainer: (\S+) ([+-]\d+\.\d\d)% · top loser: (\S+) ([+-]\d+\.\d\d)%", text
    )
    assert found, text[:3000]
    assert found.group(1) == gainer.coin_id and found.group(2) == f"{gainer.change_5min:+.2f}"
    assert found.group(3) == loser.coin_id and found.group(4) == f"{loser.change_5min:+.2f}"
    assert "Stale data" in text  # 2026-03-02 data is old: the banner says so
    assert "Traceback" not in text


def test_empty_database_in_a_browser(tmp_path):
    dashboard = Dashboard(tmp_path / "data", tmp_path / "dashboard.log")
    try:
        dashboard.wait_ready()
        text = page_text(dashboard.url, "No market data yet")
    finally:
        assert dashboard.stop() == 0
    assert "Traceback" not in text and "Error" not in text
