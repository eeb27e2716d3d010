"""Outages of a running `marketflow up` (issue 27): collection never stops, nothing is lost.

Two stacks, simulated source, each followed to the end:

* **embedded services**: kill -9 of the embedded PostgreSQL (`up` starts it again on the same
  data directory and URL), then the live path (`marketflow live`) SIGSTOPped for two minutes;
* **external services** (`MARKETFLOW_POSTGRES_URL` at a PostgreSQL server of the system's
  binaries, `MARKETFLOW_KAFKA_BOOTSTRAP` at a Tansu broker of the test's own, neither managed by
  `up`): PostgreSQL stopped for three minutes, then the broker stopped for three minutes (memory
  only: it comes back empty, and the topic must come back with its configured partitions).

After the outages, ingest is paused between two polls and the data settles. Each test then asserts:
every recorded poll (the broker acknowledged it) is in the raw table and in ``price_indicators``
exactly once; every ``price_indicators`` row equals a full recompute of the raw table; ingest was
never restarted and polled at every interval (no gap over 1.5 intervals between recorded polls,
outages included); one alert when a dependency went away and one when it was back; nothing
counted as a crash loop; no process of `up` left after it stopped.

``MARKETFLOW_TEST_OUTAGE_SECONDS`` (default 180; the live stop is two thirds of it) shortens the
outages for a quick local run; CI runs the issue's lengths.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from datetime import UTC, datetime

import pandas as pd
import psutil
import pytest

from marketflow_assets_tests.stack import (
    Stack,
    alive,
    cadence_gaps,
    exactness,
    indicator_rows,
    kill,
    newest,
    poll_times,
    postgres_processes,
    raw_rows,
    recompute_differences,
    recorded,
    settle,
    stop_ingest_between_polls,
)

OUTAGE_S = float(os.environ.get("MARKETFLOW_TEST_OUTAGE_SECONDS", "180"))
LIVE_STOP_S = OUTAGE_S * 2 / 3
COINS, INTERVAL_S = 4, 3

pytestmark = [pytest.mark.fault, pytest.mark.outage]


class Timeline:
    """Timestamped notes, printed as they come and in the failure message."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.lines: list[str] = []

    def __call__(self, message: str) -> None:
        line = f"[{time.monotonic() - self.t0:5.0f} s] {message}"
        self.lines.append(line)
        print(line, flush=True)


def _flows_after(stack: Stack, moment: datetime, what: str, note, source=None) -> None:
    """Wait until price_indicators (rows of ``source`` when given; ``"raw"``: the raw table) has
    a poll after ``moment``."""
    cut = pd.Timestamp(moment)

    def newer() -> bool:
        if source == "raw":
            latest = newest(raw_rows(stack.raw_dir))
        else:
            latest = newest(indicator_rows(stack.postgres_url(), source))
        return latest is not None and latest > cut

    where = "raw_prices" if source == "raw" else "price_indicators"
    took = stack.wait_for(newer, 480, f"{where} rows after {what}")
    label = f" ({source} rows)" if source not in (None, "raw") else ""
    note(f"{where}{label} has polls after {what} ({took:.0f} s)")


def _hold(stack: Stack, seconds: float, ingest: psutil.Process) -> None:
    """Let an outage last ``seconds``; `up` and its ingest process must live throughout."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert stack.proc.poll() is None, f"up exited during the outage\n{stack.tail()}"
        assert ingest.is_running() and ingest.status() != psutil.STATUS_ZOMBIE, (
            f"ingest stopped during the outage\n{stack.tail()}"
        )
        time.sleep(2)


def _outage(stack: Stack, ingest, what: str, stop, start, note) -> datetime:
    """``stop()`` a service, hold the outage for ``OUTAGE_S`` (`up` and ingest alive throughout),
    ``start()`` it again; returns the moment it was back."""
    stop()
    note(f"{what} stopped for {OUTAGE_S:.0f} s")
    try:
        _hold(stack, OUTAGE_S, ingest)
    finally:
        start()
    note(f"{what} started again")
    return datetime.now(UTC)


def _finish(stack: Stack, note, url_for_read) -> None:
    """Pause ingest between polls, let the data settle, stop `up`; then the common checks."""
    stopped = stop_ingest_between_polls(stack)
    note("ingest paused (SIGSTOP) right after a recorded poll")
    try:
        url = url_for_read()
        note(f"settled after {settle(stack, url):.0f} s")
        compared, differences = recompute_differences(stack.raw_dir, url)
        note(f"price_indicators vs a full recompute: {compared} rows compared")
        expected = recorded(stack.record)
        result = exactness(expected, raw_rows(stack.raw_dir), indicator_rows(url))
        times = poll_times(stack.record)
    finally:
        with contextlib.suppress(psutil.Error):
            stopped.send_signal(signal.SIGCONT)
    descendants = stack.up.children(recursive=True)
    code = stack.stop()
    time.sleep(2)
    left = alive(descendants)
    names = [kill(p) for p in left]
    summary = (
        f"published={len(result['published'])} lost_raw={len(result['lost_raw'])} "
        f"lost_indicators={len(result['lost_indicators'])} duplicated={result['duplicated']} "
        f"extra={len(result['extra'])}"
    )
    note(f"outage test: {summary}; polls={len(times)}")
    history = "\n".join(note.lines)
    assert code == 0, f"up exited with {code}\n{stack.tail()}\n{history}"
    assert not names, f"processes of up left after it stopped: {names}\n{history}"
    assert compared > 0 and differences.empty, f"{differences.head(10)}\n{history}"
    assert not (result["lost_raw"] or result["lost_indicators"] or result["extra"]), (
        f"{summary}\n{history}"
    )
    assert result["duplicated"] == 0, f"{summary}\n{history}"
    gaps = cadence_gaps(times, stack.interval_s)
    assert not gaps, f"ingest missed polls between {gaps[:5]}\n{history}"
    text = stack.log()
    assert "crash-looping" not in text, stack.tail()
    for name in ("ingest", "live"):  # both wait in place: never killed, never exited
        assert f"{name} was killed" not in text and f"{name} exited" not in text, stack.tail()


def _alerts(text: str, dependency: str) -> tuple[int, list[str]]:
    away = text.count(f"ALERT FAILURE: Marketflow dependency {dependency} is unavailable")
    back = re.findall(
        rf"ALERT RESOLVED: Marketflow dependency {dependency} is back after \d+ s", text
    )
    return away, back


def _partitions(bootstrap: str, topic: str = "crypto_prices") -> int:
    """Partitions of ``topic``, asked without naming it (naming it makes Tansu create it)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = [t for t in admin.describe_topics() if t.get("name", t.get("topic")) == topic]
    finally:
        admin.close()
    return len(described[0]["partitions"]) if described else 0


@pytest.fixture
def external_postgres():
    from marketflow_assets_tests.engines.pg_server import PasswordPostgres, find_pg_bindir
    from marketflow_assets_tests.helpers import unavailable

    bindir = find_pg_bindir()
    if bindir is None:
        unavailable("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    server = PasswordPostgres(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(2400)
def test_external_postgres_and_broker_each_away_lose_nothing(tmp_path, external_postgres):
    from marketflow_assets.runtime.services import EmbeddedKafka

    note = Timeline()
    broker = EmbeddedKafka(tmp_path / "broker")
    bootstrap = broker.start()
    pg = external_postgres
    env = {"MARKETFLOW_POSTGRES_URL": pg.url, "MARKETFLOW_KAFKA_BOOTSTRAP": bootstrap}
    stack = Stack(tmp_path, coins=COINS, interval_s=INTERVAL_S, env=env, max_restarts=2)
    stack.start()
    try:
        stack.wait_for(lambda: "ready: indicators" in stack.log(), 600, "price_indicators rows")
        ingest = stack.child(" ingest ")
        partitions = _partitions(bootstrap)

        # 1. PostgreSQL stopped (pg_ctl stop -m fast): connections refused for OUTAGE_S
        back = _outage(stack, ingest, "PostgreSQL", pg.halt, pg.resume, note)
        _flows_after(stack, back, "the PostgreSQL outage", note)
        _flows_after(stack, back, "the PostgreSQL outage", note, source="live")
        stack.wait_for(lambda: len(_alerts(stack.log(), "postgres")[1]) == 1, 60, "the alert")
        assert _alerts(stack.log(), "postgres")[0] == 1, stack.tail()

        # 2. the broker stopped for OUTAGE_S; memory only, it comes back empty on the same port
        back = _outage(stack, ingest, "the broker", broker.stop, broker.start, note)
        _flows_after(stack, back, "the broker outage", note)
        _flows_after(stack, back, "the broker outage", note, "raw")  # the Spark job resumed
        assert _partitions(bootstrap) == partitions, "the topic came back with other partitions"
        stack.wait_for(lambda: len(_alerts(stack.log(), "kafka")[1]) == 1, 60, "the alert")
        assert _alerts(stack.log(), "kafka")[0] == 1, stack.tail()
        ingest_log = (stack.data_dir / "logs" / "ingest.log").read_text(errors="replace")
        waited = re.findall(r"is back after .* away; (\d+) poll\(s\) waited", ingest_log)
        if OUTAGE_S >= 60:  # shorter ones end within the producer's 30 s delivery timeout
            assert waited and int(waited[-1]) >= OUTAGE_S / INTERVAL_S * 0.8, ingest_log[-3000:]
            note(f"ingest: {waited[-1]} poll(s) waited in the spool")
        assert stack.child(" ingest ").pid == ingest.pid, "ingest was restarted"

        _finish(stack, note, lambda: pg.url)
    finally:
        stack.stop()
        broker.stop()


@pytest.mark.timeout(1800)
def test_embedded_postgres_killed_and_live_path_stopped_lose_nothing(tmp_path):
    note = Timeline()
    stack = Stack(tmp_path, coins=COINS, interval_s=INTERVAL_S, max_restarts=2)
    stack.start()
    try:
        stack.wait_for(lambda: "ready: indicators" in stack.log(), 600, "price_indicators rows")
        _flows_after(stack, datetime.now(UTC), "the start", note, source="live")
        ingest = stack.child(" ingest ")
        url = stack.postgres_url()

        # 1. kill -9 of the embedded PostgreSQL: up starts it again, same directory and URL
        postmaster_pid = int(
            (stack.data_dir / "postgres" / "postmaster.pid").read_text().split()[0]
        )
        killed_at = datetime.now(UTC)
        note(f"kill -9 embedded PostgreSQL: {kill(psutil.Process(postmaster_pid))}")
        stack.wait_for(
            lambda: "postgres: embedded PostgreSQL restarted" in stack.log(), 90, "the restart"
        )
        assert stack.postgres_url() == url
        _flows_after(stack, killed_at, "the PostgreSQL kill", note)
        _flows_after(stack, killed_at, "the PostgreSQL kill", note, source="live")
        away, back = _alerts(stack.log(), "postgres")
        assert (away, len(back)) == (1, 1), stack.tail()
        live_log = (stack.data_dir / "logs" / "live.log").read_text(errors="replace")
        assert "live: PostgreSQL is back after" in live_log, live_log[-3000:]  # it waited in place

        # 2. the live path stopped (SIGSTOP) for two minutes: its consumer falls behind, the
        # Dagster refreshes go on; SIGCONT and it catches up from its committed offsets
        live = stack.child("cli live")
        stopped_at = datetime.now(UTC)
        live.send_signal(signal.SIGSTOP)
        note(f"SIGSTOP live (pid {live.pid}) for {LIVE_STOP_S:.0f} s")
        try:
            _hold(stack, LIVE_STOP_S, ingest)
        finally:
            live.send_signal(signal.SIGCONT)
        note("SIGCONT live")
        _flows_after(
            stack,
            stopped_at + pd.Timedelta(seconds=LIVE_STOP_S),
            "the live stop",
            note,
            source="live",
        )
        assert stack.child(" ingest ").pid == ingest.pid, "ingest was restarted"
        _finish(stack, note, stack.postgres_url)
        assert not postgres_processes(stack.data_dir), "the embedded PostgreSQL outlived up"
    finally:
        stack.stop()
        for p in postgres_processes(stack.data_dir):
            with contextlib.suppress(psutil.Error):
                p.kill()
