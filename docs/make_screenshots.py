"""Screenshots of a real, running Marketflow for the docs: ``docs/images/dashboard.png`` (the
analyst dashboard's landing page with the top-5 gainers and losers), ``market.png`` (its market
table), ``coin.png`` (the coin view) and ``docs/images/asset_graph.png`` (the Dagster UI's
global asset lineage graph).

    .venv/bin/python docs/make_screenshots.py [--coins 10] [--interval 5] [--out docs/images]

It starts ``marketflow up --source simulate`` with a temporary ``MARKETFLOW_DATA_DIR`` (and
``DAGSTER_HOME`` under it), so ``./data`` is never touched, on free ports; waits until
``market_movers`` has rows (the simulator needs 5 minutes of prices before the first 5-minute
change, so this takes ~6-8 minutes) and the Dagster instance has a materialization of
``price_indicators``; takes both screenshots with Playwright driving a headless Chromium
(``apt-get install -y chromium``; the ``playwright`` pip package of the ``dev`` extra, no
browser download); then stops the stack with SIGINT and waits for it. One progress line per step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "docs" / "images"
VIEWPORT = (1400, 900)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: The Dagster 1.13 page with the global asset lineage graph (every group, every asset).
ASSET_GRAPH_PATH = "/asset-groups"
#: Assets whose labels bound the graph (to centre it) and that the screenshot must show.
GRAPH_ASSETS = ("raw_prices", "price_indicators", "market_movers", "price_forecasts")
#: Top-left corner of the graph canvas (right of Dagster's navigation, below the toolbar).
CANVAS_LEFT, CANVAS_TOP = 240, 110
PG_URL_RE = re.compile(r"embedded PostgreSQL ready .*\((postgresql://[^)]+)\)")


def progress(message: str) -> None:
    print(f"[screenshots {time.strftime('%H:%M:%S')}] {message}", flush=True)


def chromium_path() -> str | None:
    """The system Chromium (``apt-get install -y chromium``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def browser():
    """A headless Chromium driven by Playwright (the system binary, no download)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("chromium not found on PATH (apt-get install -y chromium)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def screenshot(
    chromium,
    url: str,
    path: Path,
    *,
    wait_for_text: tuple[str, ...] = (),
    absent_text: tuple[str, ...] = (),
    wait_for_selector: str | None = None,
    prepare=None,
    settle_s: float = 2.0,
    timeout_s: float = 120.0,
    viewport: tuple[int, int] = VIEWPORT,
) -> Path:
    """Load ``url`` in a new page of ``viewport``, wait until every ``wait_for_text`` (and
    ``wait_for_selector``) is visible and no ``absent_text`` is (e.g. a loading message), call
    ``prepare(page)`` (clicks, zoom), let it settle, and save a PNG of the viewport to ``path``.
    Returns ``path``."""
    page = chromium.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    try:
        page.goto(url, wait_until="domcontentloaded", timeout=timeout_s * 1000)
        deadline = time.monotonic() + timeout_s
        for text in wait_for_text:
            left = max(1.0, deadline - time.monotonic())
            page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=left * 1000)
        for text in absent_text:
            while page.get_by_text(text, exact=False).count():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url}: {text!r} still shown after {timeout_s:.0f} s")
                page.wait_for_timeout(500)
        if wait_for_selector:
            left = max(1.0, deadline - time.monotonic())
            page.locator(wait_for_selector).first.wait_for(state="visible", timeout=left * 1000)
        if prepare is not None:
            prepare(page)
        page.wait_for_timeout(settle_s * 1000)
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
        return path
    finally:
        page.close()


def show_coin_view(page) -> None:
    """The Coin page of the largest coin, its chart drawn."""
    page.get_by_text("Coin", exact=True).first.click()
    page.get_by_text("volatility 5 min (std of price)").first.wait_for(timeout=60_000)


def show_whole_asset_graph(page, zoom_steps: int = 2) -> None:
    """On Dagster's global lineage page: dismiss the first-visit community dialog, expand every
    asset group, hide the asset tree, centre the graph and zoom in ``zoom_steps`` times."""
    skip = page.get_by_role("button", name="Skip", exact=True)
    with contextlib.suppress(Exception):  # shown once per Dagster instance
        skip.wait_for(state="visible", timeout=5000)
        skip.click()
        page.wait_for_timeout(500)
    page.get_by_role("button", name="settings", exact=True).click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.get_by_text(GRAPH_ASSETS[1], exact=True).first.wait_for(state="visible", timeout=30_000)
    page.get_by_role("button", name="panel_show_right", exact=True).click()  # the asset tree
    page.wait_for_timeout(1000)
    boxes = [page.get_by_text(name, exact=True).first.bounding_box() for name in GRAPH_ASSETS]
    boxes = [b for b in boxes if b]
    if boxes:  # drag the graph's centre to the middle of the canvas, then zoom in around it
        cx = (min(b["x"] for b in boxes) + max(b["x"] + b["width"] for b in boxes)) / 2
        cy = (min(b["y"] for b in boxes) + max(b["y"] + b["height"] for b in boxes)) / 2
        width, height = page.viewport_size["width"], page.viewport_size["height"]
        gx, gy = (CANVAS_LEFT + width) / 2, (CANVAS_TOP + height) / 2
        start = (CANVAS_LEFT + 40, CANVAS_TOP + 40)  # empty canvas in the top-left corner
        page.mouse.move(*start)
        page.mouse.down()
        page.mouse.move(start[0] + gx - cx, start[1] + gy - cy, steps=10)
        page.mouse.up()
        page.wait_for_timeout(500)
    for _ in range(zoom_steps):
        page.get_by_role("button", name="zoom_in", exact=True).click()
        page.wait_for_timeout(700)


def _free_port() -> int:
    from marketflow_assets.runtime.services import free_port

    return free_port()


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def indicators_materialized(port: int) -> bool:
    """True when the Dagster instance behind the UI has a materialization of price_indicators."""
    query = """{ assetOrError(assetKey: {path: ["price_indicators"]}) {
        ... on Asset { assetMaterializations(limit: 1) { timestamp } } } }"""
    try:
        asset = _graphql(port, query)["data"]["assetOrError"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool((asset or {}).get("assetMaterializations"))


def movers_rows(log_path: Path) -> int:
    """Rows of market_movers in the embedded PostgreSQL whose URL ``up`` logged (0: not yet)."""
    import psycopg2

    found = PG_URL_RE.search(log_path.read_text(errors="replace"))
    if not found:
        return 0
    try:
        conn = psycopg2.connect(found.group(1), connect_timeout=3)
    except psycopg2.Error:
        return 0
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM market_movers")
            return int(cur.fetchone()[0])
    except psycopg2.Error:
        return 0
    finally:
        conn.close()


def _stack_env(data_dir: Path) -> dict[str, str]:
    from marketflow_assets.settings import fresh_stack_environment

    return fresh_stack_environment(data_dir, PYSPARK_PYTHON=sys.executable)


def _wait(predicate, timeout_s: float, what: str, up: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if up.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"marketflow up exited ({up.returncode}) waiting for {what}\n{tail}")
        if predicate():
            return
        time.sleep(3)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def stop_stack(up: subprocess.Popen, timeout_s: float = 180.0) -> int:
    """SIGINT (Ctrl-C) to ``up`` and wait; SIGTERM, then SIGKILL, if it does not stop."""
    if up.poll() is None:
        up.send_signal(signal.SIGINT)
        try:
            return up.wait(timeout_s)
        except subprocess.TimeoutExpired:
            up.terminate()
            try:
                return up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
    return up.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coins", type=int, default=10, help="simulated coins (10)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls (5)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for data")
    parser.add_argument("--spark-master", default="local[1]", help="Spark master (local[1])")
    args = parser.parse_args(argv)

    if chromium_path() is None:
        print("chromium not found on PATH (apt-get install -y chromium)", file=sys.stderr)
        return 2
    marketflow = str(Path(sys.executable).with_name("marketflow"))
    ui_port, dashboard_port = _free_port(), _free_port()
    with tempfile.TemporaryDirectory(prefix="marketflow-shots-") as tmp:
        data_dir = Path(tmp) / "data"
        log_path = Path(tmp) / "up.log"
        command = [marketflow, "up", "--source", "simulate", "--coins", str(args.coins)]
        command += ["--interval", str(args.interval), "--spark-master", args.spark_master]
        command += ["--port", str(ui_port), "--dashboard-port", str(dashboard_port)]
        progress(f"starting: {' '.join(command[1:])} (data dir {data_dir}, log {log_path})")
        with open(log_path, "w") as log:
            up = subprocess.Popen(
                command,
                env=_stack_env(data_dir),
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            started = time.monotonic()
            text = lambda: log_path.read_text(errors="replace")  # noqa: E731
            for component in ("ingest", "spark", "dagster", "indicators", "dashboard"):
                _wait(
                    lambda c=component: f"ready: {c}" in text(),
                    args.timeout,
                    component,
                    up,
                    log_path,
                )
                progress(f"ready: {component} ({time.monotonic() - started:.0f} s)")
            _wait(
                lambda: indicators_materialized(ui_port),
                args.timeout,
                "a materialization",
                up,
                log_path,
            )
            progress(
                f"price_indicators materialized in Dagster ({time.monotonic() - started:.0f} s)"
            )
            progress(
                "waiting for market_movers (5 minutes of prices before the first 5-min change)"
            )
            _wait(
                lambda: movers_rows(log_path) > 0, args.timeout, "market_movers rows", up, log_path
            )
            progress(f"market_movers has rows ({time.monotonic() - started:.0f} s)")
            time.sleep(2 * args.interval)  # a few snapshots with movers, so the table is full

            with browser() as chromium:
                dashboard = screenshot(
                    chromium,
                    f"http://127.0.0.1:{dashboard_port}/",
                    args.out / "dashboard.png",
                    wait_for_text=("Top 5 gainers (5 min)", "Top 5 losers (5 min)", "Top gainer:"),
                    absent_text=("No market data yet",),
                    wait_for_selector=".js-plotly-plot .main-svg",
                    settle_s=4.0,
                )
                progress(f"wrote {dashboard}")
                market = screenshot(
                    chromium,
                    f"http://127.0.0.1:{dashboard_port}/",
                    args.out / "market.png",
                    wait_for_text=("Search coins",),
                    prepare=lambda page: page.get_by_text(
                        "Search coins"
                    ).first.scroll_into_view_if_needed(),
                    settle_s=4.0,
                )
                progress(f"wrote {market}")
                coin = screenshot(
                    chromium,
                    f"http://127.0.0.1:{dashboard_port}/",
                    args.out / "coin.png",
                    wait_for_text=("Top gainer:",),
                    prepare=show_coin_view,
                    settle_s=4.0,
                )
                progress(f"wrote {coin}")
                graph = screenshot(
                    chromium,
                    f"http://127.0.0.1:{ui_port}{ASSET_GRAPH_PATH}",
                    args.out / "asset_graph.png",
                    wait_for_text=("Global asset lineage", "market_data"),
                    prepare=show_whole_asset_graph,
                    settle_s=3.0,
                )
                progress(f"wrote {graph}")
        finally:
            progress("stopping the stack (SIGINT)")
            code = stop_stack(up)
            progress(f"marketflow up exited with {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
