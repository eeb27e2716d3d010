"""Fault test of the whole `marketflow up` pipeline: while simulated polls flow, kill -9 in turn
the broker (Tansu), the Spark streaming job, the live follower, a Dagster run worker (when one
runs at that moment), the live consumer (`marketflow live`) and `up` itself (then its leftover
children, as an operator would), restart `up` on the same data dir, stop publishing and let the
data settle. Every poll recorded by `--record` (acknowledged by the broker) must be in the raw
Parquet and in `price_indicators` exactly once: the three sets of (coin id, ts) are equal,
nothing lost, nothing duplicated; and every `price_indicators` row equals a full recompute of
the raw Parquet.

Prints ``fault test: published=N raw=N indicators=N lost=0 duplicated=0`` (the README quotes it)
and, when something is lost, which kill lost it (a lost poll is charged to the first kill after
its ts)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import psutil
import pytest

from marketflow_assets.runtime.services import free_port
from marketflow_assets_tests.helpers import raw_key_counts

MARKETFLOW = str(Path(sys.executable).with_name("marketflow"))
PG_URL_RE = re.compile(r"embedded PostgreSQL ready .*\((postgresql://[^)]+)\)")
COINS, INTERVAL_S = 4, 2
RUN_WORKER_MARKERS = ("execute_run", "execute_step", "run worker", "api execute")

pytestmark = pytest.mark.fault


def _env(data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MARKETFLOW_", "COINGECKO_", "DAGSTER_"))
    }
    env.update(
        MARKETFLOW_DATA_DIR=str(data_dir),
        DAGSTER_HOME=str(data_dir / "dagster_home"),
        PYTHONUNBUFFERED="1",
    )
    return env


class Stack:
    """One `marketflow up` (restartable on the same data dir), its log and its processes."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.record = tmp / "record.jsonl"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.log_path = self.tmp / f"up{self.starts}.log"
        argv = [MARKETFLOW, "up", "--source", "simulate", "--coins", str(COINS)]
        argv += ["--interval", str(INTERVAL_S), "--spark-master", "local[1]"]
        argv += ["--port", str(self.port), "--dashboard-port", str(free_port())]
        argv += ["--record", str(self.record), "--max-restarts", "10", "--restart-window", "3600"]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                argv, env=_env(self.data_dir), stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def up(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self) -> str:
        return self.log()[-4000:]

    def wait_for(self, predicate, timeout: float, what: str) -> float:
        """Seconds until ``predicate()``; fails when `up` exits or after ``timeout``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            assert self.proc.poll() is None, f"up exited waiting for {what}\n{self.tail()}"
            with contextlib.suppress(Exception):
                if predicate():
                    return time.monotonic() - started
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.tail()}")

    def child(self, marker: str, not_pid: int | None = None, timeout: float = 90):
        """The direct child of `up` whose command line contains ``marker``."""

        def find():
            for child in self.up.children():
                with contextlib.suppress(psutil.Error):
                    if marker in " ".join(child.cmdline()) and child.pid != not_pid:
                        return child
            return None

        found = []
        self.wait_for(lambda: found.append(find()) or found[-1], timeout, f"child {marker!r}")
        return found[-1]

    def postgres_url(self) -> str:
        found = PG_URL_RE.search(self.log())
        assert found, "no embedded PostgreSQL URL in the log of up"
        return found.group(1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(180)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()


def _recorded(path: Path) -> list[tuple[str, pd.Timestamp]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        poll = json.loads(line)
        rows += [(coin["id"], pd.Timestamp(poll["ts"])) for coin in poll["coins"]]
    return rows


def _raw_rows(raw_dir: Path) -> Counter:
    return raw_key_counts(raw_dir)


def _indicator_rows(url: str, source: str | None = None) -> Counter:
    """(coin_id, ts) of price_indicators (only the rows written by ``source`` when given)."""
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            if source is None:
                cur.execute("SELECT coin_id, ts FROM price_indicators")
            else:
                cur.execute("SELECT coin_id, ts FROM price_indicators WHERE source = %s", (source,))
            rows = cur.fetchall()
    finally:
        conn.close()
    return Counter((coin, pd.Timestamp(ts).tz_convert("UTC")) for coin, ts in rows)


def _recompute_differences(raw_dir: Path, url: str) -> tuple[int, pd.DataFrame]:
    """price_indicators against a full recompute of the raw Parquet (the pure functions the
    Dagster assets run): (rows compared, the rows that differ)."""
    import pyarrow.dataset as ds

    from marketflow_assets import indicators as ind
    from marketflow_assets_tests.helpers import read_table

    dataset = ds.dataset(raw_dir, format="parquet", partitioning="hive")
    raw = dataset.to_table(columns=["id", "symbol", "ts", "current_price"]).to_pandas()
    raw["ts"] = pd.to_datetime(raw["ts"], utc=True)
    expected = ind.compute_indicators(raw)
    diffs = ind.compare_indicator_rows(read_table(url, "price_indicators"), expected, tol=1e-9)
    return diffs.attrs["compared"], diffs


def _newest(rows) -> pd.Timestamp | None:
    return max((ts for _, ts in rows), default=None)


def _kill(proc: psutil.Process) -> str:
    name = " ".join(proc.cmdline())[:100]
    proc.kill()
    with contextlib.suppress(psutil.Error):
        proc.wait(10)
    return name


def _run_worker(up: psutil.Process) -> psutil.Process | None:
    for p in up.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(m in " ".join(p.cmdline()) for m in RUN_WORKER_MARKERS):
                return p
    return None


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in processes:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


def _read_indicators(stack: Stack) -> Counter:
    """(coin_id, ts) of price_indicators: through the running `up`'s PostgreSQL, else through
    the embedded server in the data dir (started for the read when `up` is gone)."""
    from marketflow_assets.runtime.services import EmbeddedPostgres

    with contextlib.suppress(Exception):
        return _indicator_rows(stack.postgres_url())
    with EmbeddedPostgres(stack.data_dir / "postgres") as url:
        return _indicator_rows(url)


def _stop_embedded_postgres(data_dir: Path) -> None:
    """Stop a PostgreSQL of ``data_dir`` still running (SIGTERM to the postmaster: smart
    shutdown). The first `up` owned it; after its kill -9 the second `up` only reused it."""
    for p in psutil.process_iter(["name", "cmdline", "ppid"]):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(p.info["cmdline"] or [])
            if p.info["name"] == "postgres" and f"-D {data_dir}" in cmdline:
                if p.parent() is None or p.parent().name() != "postgres":  # the postmaster
                    p.terminate()
                    p.wait(30)


def _stop_ingest_between_polls(stack: Stack) -> psutil.Process:
    """SIGSTOP ingest right after it recorded a poll (its next poll is an interval away), so no
    poll is ever published without being recorded. Returns the stopped process."""
    ingest = stack.child(" ingest ")
    size = stack.record.stat().st_size
    stack.wait_for(lambda: stack.record.stat().st_size > size, 60, "a new recorded poll")
    ingest.send_signal(signal.SIGSTOP)
    return ingest


@pytest.mark.timeout(1800)  # ~5 min on an idle 2-core machine; far more under load
def test_kill_9_of_every_component_loses_and_duplicates_nothing(tmp_path):
    stack = Stack(tmp_path)
    raw_dir = stack.data_dir / "raw_prices"
    kills: list[tuple[str, datetime]] = []  # (what, when): losses are charged to the next kill
    notes: list[str] = []
    t0 = time.monotonic()

    def note(message: str) -> None:
        line = f"[{time.monotonic() - t0:5.0f} s] {message}"
        notes.append(line)
        print(line, flush=True)

    def flows_after(
        moment: datetime, what: str, indicators: bool = False, written_by: str | None = None
    ) -> None:
        cut = pd.Timestamp(moment)
        source = (lambda: _indicator_rows(stack.postgres_url(), written_by)) if indicators else None

        def newer() -> bool:
            rows = source() if source else _raw_rows(raw_dir)
            newest = _newest(rows)
            return newest is not None and newest > cut

        took = stack.wait_for(newer, 400, f"data written after {what}")
        note(
            f"{'price_indicators' if indicators else 'raw Parquet'}"
            f"{f' ({written_by} rows)' if written_by else ''} has polls after {what}"
            f" ({took:.0f} s)"
        )

    stack.start()
    stopped_ingest = None
    failure: AssertionError | None = None
    try:
        try:
            stack.wait_for(lambda: "ready: indicators" in stack.log(), 600, "price_indicators rows")
            note("data flows: price_indicators has rows")

            # 1. the broker (in memory: what the Spark job had not read yet goes with it)
            kills.append(("broker", datetime.now(UTC)))
            note(f"kill -9 broker: {_kill(stack.child('tansu'))}")
            stack.wait_for(lambda: "kafka: embedded broker restarted" in stack.log(), 90, "broker")
            flows_after(kills[-1][1], "the broker kill")

            # 2. the Spark streaming job
            spark = stack.child("kafka_streaming.py")
            kills.append(("spark", datetime.now(UTC)))
            note(f"kill -9 spark: {_kill(spark)}")
            stack.child("kafka_streaming.py", not_pid=spark.pid)
            flows_after(kills[-1][1], "the Spark job kill")

            # 3. the live follower (the automation sensor launches runs while it is down)
            follower = stack.child("cli follow")
            kills.append(("follower", datetime.now(UTC)))
            note(f"kill -9 follower: {_kill(follower)}")

            # 4. a Dagster run worker, if one runs within 20 s
            worker = None
            deadline = time.monotonic() + 20
            while worker is None and time.monotonic() < deadline:
                worker = _run_worker(stack.up)
                time.sleep(0.3)
            if worker is not None:
                kills.append(("run worker", datetime.now(UTC)))
                note(f"kill -9 run worker: {_kill(worker)}")
            else:
                note("no Dagster run worker running in the 20 s after the follower kill")
            stack.child("cli follow", not_pid=follower.pid)
            flows_after(kills[-1][1], "the follower kill", indicators=True)

            # 5. the live consumer: restarted by up, it resumes at the offsets in live_offsets
            live = stack.child("cli live")
            kills.append(("live", datetime.now(UTC)))
            note(f"kill -9 live: {_kill(live)}")
            stack.child("cli live", not_pid=live.pid)
            flows_after(kills[-1][1], "the live kill", indicators=True, written_by="live")

            # 6. `up` itself: its children get SIGTERM (PR_SET_PDEATHSIG); what is left after 15 s
            # is killed, as an operator would; the embedded PostgreSQL (a pg_ctl daemon) survives
            # and the next `up` reuses it.
            descendants = stack.up.children(recursive=True)
            kills.append(("up", datetime.now(UTC)))
            note(f"kill -9 up (pid {stack.proc.pid}, {len(descendants)} descendants)")
            stack.up.kill()
            stack.proc.wait(10)
            gone_by = time.monotonic() + 15
            while _alive(descendants) and time.monotonic() < gone_by:
                time.sleep(0.5)
            left = _alive(descendants)
            names = [_kill(p) for p in left]
            note(f"after <= 15 s, {len(left)} leftover(s) of up killed: {names}")
            postgres = [
                p
                for p in psutil.process_iter(["name", "cmdline"])
                if p.info["name"] == "postgres"
                and str(stack.data_dir) in " ".join(p.info["cmdline"])
            ]
            note(f"embedded PostgreSQL still running after kill -9 of up: {bool(postgres)}")

            stack.start()
            note("up restarted on the same data dir")
            stack.wait_for(lambda: "ready: spark" in stack.log(), 600, "the restarted up")
            flows_after(kills[-1][1], "the restart of up")
            flows_after(kills[-1][1], "the restart of up", indicators=True)

            # stop publishing between two polls, then let the Spark job and the refreshes settle
            stopped_ingest = _stop_ingest_between_polls(stack)
            note("ingest stopped (SIGSTOP) right after a recorded poll")
            url = stack.postgres_url()
            polls = _recorded(stack.record)
            previous, stable, settle_started = None, 0, time.monotonic()
            while time.monotonic() - settle_started < 180:
                current = (frozenset(_raw_rows(raw_dir).items()), frozenset(_indicator_rows(url)))
                stable = stable + 1 if current == previous else 0
                previous = current
                raw_keys = {k for k, _ in current[0]}
                if stable >= 5 or (stable >= 2 and raw_keys == current[1] == set(polls)):
                    break
                time.sleep(2)
            note(f"settled after {time.monotonic() - settle_started:.0f} s")
            compared, differences = _recompute_differences(raw_dir, url)
            note(f"price_indicators vs a full recompute: {compared} rows compared")
            assert differences.empty, (
                f"{len(differences)} price_indicators row(s) differ from a full recompute:\n"
                f"{differences.head(10)}"
            )

        except AssertionError as exc:  # measure what the failed phase left, then fail
            failure = exc
            note(f"FAILED: {str(exc).splitlines()[0]}")
        # what was published (ingest is stopped, or `up` failed) and what reached the stores
        expected = _recorded(stack.record)
        raw = _raw_rows(raw_dir)
        indicators = _read_indicators(stack)
    finally:
        if stopped_ingest is not None:
            with contextlib.suppress(psutil.Error):
                stopped_ingest.send_signal(signal.SIGCONT)
        stack.stop()
        _stop_embedded_postgres(stack.data_dir)  # survived kill -9 of the first `up`

    published = set(expected)
    recorded_twice = len(expected) - len(published)
    duplicated = sum(n - 1 for n in raw.values() if n > 1) + recorded_twice
    lost_raw = published - set(raw)
    lost_indicators = published - set(indicators)
    lost = lost_raw | lost_indicators
    extra = (set(raw) | set(indicators)) - published
    by_kill = Counter()
    for _, ts in lost:
        after = [what for what, when in kills if pd.Timestamp(when) >= ts]
        by_kill[after[0] if after else "no kill (after the last one)"] += 1
    summary = (
        f"fault test: published={len(published)} raw={len(raw)} indicators={len(indicators)} "
        f"lost={len(lost)} duplicated={duplicated}"
    )
    print(summary)
    print(
        f"fault test details: lost from raw={len(lost_raw)}, lost from indicators="
        f"{len(lost_indicators)}, not published but stored={len(extra)}, lost records by the "
        f"kill that followed their poll: {dict(by_kill) or 'none'}; lost polls (distinct ts): "
        f"{len({ts for _, ts in lost})}"
    )
    print("\n".join(notes))
    assert failure is None, f"{summary}; {failure}"
    assert duplicated == 0, summary
    assert not lost, f"{summary}; lost by kill: {dict(by_kill)}"
    assert set(raw) == set(indicators) == published, f"{summary}; {len(extra)} extra"
