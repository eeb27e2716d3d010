"""The outside check's flow in a real headless browser (Debian ``chromium`` + Playwright):

raw Parquet -> ``marketflow refresh`` -> ``marketflow dashboard`` (both on the embedded PostgreSQL
under ``$MARKETFLOW_DATA_DIR``) -> the landing page shows the top gainer and loser of the latest
snapshot with their 5-minute changes (two decimals) equal to a reference computed from the raw
rows; on an empty database the page shows a message, not an error. Skipped where Chromium or
Playwright is absent."""

from __future__ import annotations

import re
import shutil
import subprocess

import pandas as pd
import pytest

from marketflow_assets.indicators import compute_indicators, compute_movers
from marketflow_assets.runtime.services import free_port
from marketflow_assets_tests.dashboard.dashboard_data import synthetic_raw
from marketflow_assets_tests.dashboard.processes import MARKETFLOW, Dashboard, env
from marketflow_assets_tests.helpers import write_raw_parquet

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)"),
    pytest.mark.timeout(300),
]


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
        [MARKETFLOW, "refresh"], env=env(data_dir), capture_output=True, text=True, timeout=240
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


def test_unreachable_database_in_a_browser(tmp_path):
    url = f"postgresql://mf:s3cret@127.0.0.1:{free_port()}/mf"
    dashboard = Dashboard(tmp_path / "data", tmp_path / "dashboard.log", postgres_url=url)
    try:
        dashboard.wait_ready()
        text = page_text(dashboard.url, "Database not reachable")
    finally:
        assert dashboard.stop() == 0
    assert "Traceback" not in text and "s3cret" not in text
