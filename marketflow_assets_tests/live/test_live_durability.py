"""The live path's two commits against a PostgreSQL crash (``kill -9`` of the whole server): the
indicator transaction does not wait for the WAL flush (``synchronous_commit = off``: rows
visible at once, durable shortly after), the offsets' transaction and a price alert's record do -
and flush everything before them - so stored offsets never pass rows that a crash took back, and
no alert is sent about such rows."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime

import pandas as pd
import psutil
import psycopg2
import pytest

from marketflow_assets.live import alerting
from marketflow_assets.live.alerting import LiveAlerts
from marketflow_assets.live.store import LiveStore
from marketflow_assets.runtime.services import EmbeddedPostgres, ServiceError
from marketflow_assets_tests.live.live_helpers import indicator_rows

TOPIC = "crypto_prices"


def _server(pg: EmbeddedPostgres) -> list[psutil.Process]:
    """The server's processes: its postmaster and what it started."""
    postmaster = next(
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "postgres" and str(pg.pgdata) in " ".join(p.info["cmdline"] or [])
    )
    return [postmaster, *postmaster.children(recursive=True)]


def _hold_background_writers(pg: EmbeddedPostgres) -> None:
    """SIGSTOP the WAL writer and the background writer: WAL that no commit flushed stays in
    the server's shared memory (the WAL writer would write an asynchronous commit out within
    its delay - to the OS, where a process crash no longer loses it)."""
    held = [p for p in _server(pg) if any(w in " ".join(p.cmdline()) for w in BACKGROUND_WRITERS)]
    assert len(held) == len(BACKGROUND_WRITERS), [p.cmdline() for p in _server(pg)]
    for proc in held:
        proc.suspend()


#: the server's processes that write WAL out without a commit asking
BACKGROUND_WRITERS = ("walwriter", "background writer")


def _crash(pg: EmbeddedPostgres) -> None:
    """SIGKILL to every process of the server at once (what is only in its shared memory is
    gone, as in a power cut), then start it again (crash recovery from the WAL written)."""
    group = _server(pg)
    for proc in group:  # all frozen first: none acts on another one's death
        proc.suspend()
    for proc in group:
        proc.kill()
    psutil.wait_procs(group, timeout=30)
    deadline = time.monotonic() + 60
    while True:  # the killed server's backends may hold its shared memory a moment
        try:
            pg.restart()
            return
        except ServiceError:
            assert time.monotonic() < deadline, "the killed PostgreSQL did not start again"
            time.sleep(0.5)


def _stored(url: str, ts: datetime) -> tuple[int, dict[int, int]]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM price_indicators WHERE ts = %s", (ts,))
            rows = cur.fetchone()[0]
            cur.execute("SELECT partition, next_offset FROM live_offsets")
            return rows, dict(cur.fetchall())
    finally:
        conn.close()


@pytest.mark.timeout(300)
def test_stored_offsets_never_pass_rows_a_postgresql_crash_took_back(tmp_path, monkeypatch):
    pg = EmbeddedPostgres(tmp_path / "pgdata")
    url = pg.start()
    try:
        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn.cursor() as cur:
            # no other transaction's commit flushes the WAL meanwhile (an autovacuum's ANALYZE
            # of the new tables would)
            cur.execute("ALTER SYSTEM SET autovacuum = off")
            cur.execute("SELECT pg_reload_conf()")
        conn.close()
        first = pd.Timestamp(datetime(2026, 12, 7, 12, 0, tzinfo=UTC))
        second = first + pd.Timedelta(seconds=30)

        # 1. indicator rows committed, the offsets not yet: the crash takes the rows back
        store = LiveStore(url)
        _hold_background_writers(pg)
        assert store.write_indicators(indicator_rows(first, [None] * 40, seed=1)) == (40, 0)
        with store.conn.cursor() as cur:  # the setting was for that transaction only
            cur.execute("SHOW synchronous_commit")
            assert cur.fetchone()[0] == "on"
        store.conn.rollback()
        assert _stored(url, first.to_pydatetime()) == (40, {})  # visible at once
        _crash(pg)
        assert _stored(url, first.to_pydatetime()) == (0, {})

        # 2. rows, then the offsets past their records: the offsets' commit made both durable
        store = LiveStore(url)
        _hold_background_writers(pg)
        store.write_indicators(indicator_rows(second, [None] * 40, seed=2))
        store.write_market(TOPIC, None, {0: 17, 1: 23})
        _crash(pg)
        assert _stored(url, second.to_pydatetime()) == (40, {0: 17, 1: 23})

        # 3. rows, then a price alert they fire, and the server crashes as the alert goes out:
        # the alert was recorded first (a synchronous commit), so the rows it is about survive
        third = second + pd.Timedelta(seconds=30)
        rules = tmp_path / "price_alerts.txt"
        rules.write_text("coin-000 price > 500\n")  # 1-100 at the second snapshot
        store = LiveStore(url)
        alerts = LiveAlerts(rules, None)
        alerts.prime(store.conn)
        _hold_background_writers(pg)
        rows = indicator_rows(third, [None] * 40, seed=3)
        rows.loc[rows["coin_id"] == "coin-000", "price"] = 1000.0
        store.write_indicators(rows)
        sent = []

        def crash_as_sent(alert, webhook_url):
            sent.append(alert.text)
            _crash(pg)

        monkeypatch.setattr(alerting, "emit_alert", crash_as_sent)
        assert [a.coin_id for a in alerts.after_batch(store.conn, rows)] == ["coin-000"]
        assert len(sent) == 1 and "coin-000" in sent[0]
        assert _stored(url, third.to_pydatetime()) == (40, {0: 17, 1: 23})
    finally:
        for proc in _server(pg) if pg.alive() else []:  # a failure left them held
            with contextlib.suppress(psutil.Error):
                proc.resume()
        pg.stop()
