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


def _browser(pw):
    return pw.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
    )


def _grid_column(page, name: str, timeout_s: float = 60.0) -> list[str]:
    """The cells of column ``name`` of the page's data grid that has such a column (read from
    the grid's accessible table). Waits for that grid: while Streamlit reruns a page, the
    previous page's grids can still be in the document."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        grids = page.locator('[role="grid"]')
        for g in range(grids.count()):
            grid = grids.nth(g)
            headers = [
                h.strip(" ↑↓") for h in grid.locator('[role="columnheader"]').all_inner_texts()
            ]
            if name in headers:
                index = headers.index(name)
                rows = grid.locator('[role="row"]')
                return [
                    rows.nth(r).locator('[role="gridcell"]').nth(index).inner_text()
                    for r in range(1, rows.count())
                ]
        assert time.monotonic() < deadline, f"no data grid with a column {name!r}"
        page.wait_for_timeout(250)


def test_market_table_sorts_and_the_coin_view_stacks_panes_in_a_browser(seeded, tmp_path):
    """Issue 28: the market table sorts on a click of its header; the coin view's panes share
    one time axis; prices carry no SI prefixes."""
    from marketflow_assets.dashboard.app import MARKET_WIDTHS

    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    url, raw = seeded[0], seeded[1]
    coins = raw["id"].nunique()
    dashboard = Dashboard(tmp_path / "data", tmp_path / "dashboard.log", postgres_url=url)
    try:
        dashboard.wait_ready()
        with playwright_api.sync_playwright() as pw:
            browser = _browser(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.goto(dashboard.url)
            page.get_by_text("Search coins").first.wait_for(timeout=90_000)
            page.locator('[role="grid"]').first.wait_for(state="attached")
            assert _grid_column(page, "#")[:3] == ["1", "2", "3"]  # rank order
            # a click on the "market cap" header (drawn on a canvas: fixed column widths)
            box = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
            order = list(MARKET_WIDTHS)
            x = box["x"] + sum(MARKET_WIDTHS[c] for c in order[: order.index("market cap")])
            page.mouse.click(x + MARKET_WIDTHS["market cap"] / 2, box["y"] + 17)
            page.wait_for_timeout(1000)
            ascending = _grid_column(page, "#")
            assert ascending[0] == str(len(ascending)), ascending  # the smallest cap first
            page.mouse.click(x + MARKET_WIDTHS["market cap"] / 2, box["y"] + 17)
            page.wait_for_timeout(1000)
            assert _grid_column(page, "#")[0] == "1"
            assert len(ascending) <= coins

            page.get_by_text("Coin", exact=True).first.click()
            page.get_by_text("volatility 5 min (std of price)").first.wait_for(timeout=60_000)
            svg = page.locator(".js-plotly-plot").first
            assert svg.locator(".cartesianlayer .subplot").count() == 4  # price + three panes
            texts = " ".join(svg.locator("text").all_text_contents())
            assert "change (%)" in texts and "24 h volume" in texts
            ticks = " ".join(svg.locator(".ytick text").all_text_contents())
            assert ticks and not any(p in ticks for p in ("μ", "m", "k", "n"))
            browser.close()
    finally:
        assert dashboard.stop() == 0


def test_warm_up_and_health_pages_in_a_browser(empty_db, tmp_path):
    """Issue 28: the first minutes say what they wait for; the health page lists failed runs
    with a link to the run in the Dagster UI."""
    from datetime import UTC, datetime, timedelta

    import psycopg2

    from marketflow_assets.defs.monitoring.history import record_run_failures
    from marketflow_assets.resources.postgres import PostgresResource

    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    PostgresResource(url=empty_db).ensure_tables()
    now = datetime.now(UTC).replace(microsecond=0)
    with psycopg2.connect(empty_db) as conn, conn.cursor() as cur:
        for i in range(3):
            cur.execute(
                "INSERT INTO price_indicators (coin_id, symbol, ts, price, source) "
                "VALUES ('bitcoin', 'btc', %s, 100, 'live')",
                (now - timedelta(seconds=30 * (2 - i)),),
            )
    conn.close()
    failure = ("run-1234", now, "refresh_indicators_job", "schedule", None, "Permission denied")
    assert record_run_failures(empty_db, [failure]) == 1
    dashboard = Dashboard(tmp_path / "data", tmp_path / "dashboard.log", postgres_url=empty_db)
    try:
        dashboard.wait_ready()
        with playwright_api.sync_playwright() as pw:
            browser = _browser(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(dashboard.url)
            page.get_by_text("Warming up: the movers compare prices").first.wait_for(timeout=90_000)
            page.get_by_text("Forecasts warming up").first.wait_for(timeout=60_000)
            text = page.inner_text("body")
            assert "3 polls so far" in text and "Forecasts warming up: 0 of 60" in text
            page.get_by_text("Pipeline", exact=True).first.click()
            page.get_by_text("Failed runs (last 24 hours)").first.wait_for(timeout=60_000)
            assert _grid_column(page, "job")[0] == "refresh_indicators_job"
            assert "Traceback" not in page.inner_text("body")
            browser.close()
    finally:
        assert dashboard.stop() == 0
