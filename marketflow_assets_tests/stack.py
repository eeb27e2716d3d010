"""A running `marketflow up` for the fault and outage tests: start/stop/restart on one data dir,
its log, its child processes, and what reached the stores.

What was published is read from ``--record`` (a poll is recorded once the broker acknowledged
it); what was stored from the raw table (one pinned snapshot) and from ``price_indicators``;
:func:`recompute_differences` compares ``price_indicators`` with a full recompute of the raw table
by the pure indicator functions.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import psutil

from marketflow_assets.runtime.services import free_port
from marketflow_assets_tests.helpers import raw_key_counts

MARKETFLOW = str(Path(sys.executable).with_name("marketflow"))
PG_URL_RE = re.compile(r"embedded PostgreSQL ready .*\((postgresql://[^)]+)\)")


def stack_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any Marketflow/CoinGecko/Dagster setting, plus
    ``extra`` (e.g. ``MARKETFLOW_POSTGRES_URL`` for an external server)."""
    from marketflow_assets.settings import fresh_stack_environment

    return fresh_stack_environment(data_dir, **extra)


class Stack:
    """One `marketflow up` (restartable on the same data dir), its log and its processes."""

    def __init__(
        self,
        tmp: Path,
        *,
        coins: int = 4,
        interval_s: float = 2,
        env: dict[str, str] | None = None,
        max_restarts: int = 10,
    ):
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.raw_dir = self.data_dir / "raw_prices"
        self.record = tmp / "record.jsonl"
        self.coins = coins
        self.interval_s = interval_s
        self.extra_env = env or {}
        self.max_restarts = max_restarts
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.log_path = self.tmp / f"up{self.starts}.log"
        argv = [MARKETFLOW, "up", "--source", "simulate", "--coins", str(self.coins)]
        argv += ["--interval", str(self.interval_s), "--spark-master", "local[1]"]
        argv += ["--port", str(self.port), "--dashboard-port", str(free_port())]
        argv += ["--record", str(self.record), "--max-restarts", str(self.max_restarts)]
        argv += ["--restart-window", "3600"]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                argv,
                env=stack_env(self.data_dir, **self.extra_env),
                stdout=log,
                stderr=subprocess.STDOUT,
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
        if "MARKETFLOW_POSTGRES_URL" in self.extra_env:
            return self.extra_env["MARKETFLOW_POSTGRES_URL"]
        found = PG_URL_RE.search(self.log())
        assert found, "no embedded PostgreSQL URL in the log of up"
        return found.group(1)

    def stop(self, timeout: float = 180) -> int | None:
        """SIGINT, as Ctrl-C; escalates after ``timeout``. Returns the exit code."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
        return None if self.proc is None else self.proc.poll()


def recorded(path: Path) -> list[tuple[str, pd.Timestamp]]:
    """(coin id, ts) of every record of every poll in the ``--record`` file."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        poll = json.loads(line)
        rows += [(coin["id"], pd.Timestamp(poll["ts"])) for coin in poll["coins"]]
    return rows


def poll_times(path: Path) -> list[pd.Timestamp]:
    """The ts of every recorded poll, sorted."""
    if not path.exists():
        return []
    return sorted(pd.Timestamp(json.loads(line)["ts"]) for line in path.read_text().splitlines())


def raw_rows(raw_dir: Path) -> Counter:
    return raw_key_counts(raw_dir)


def indicator_rows(url: str, source: str | None = None) -> Counter:
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


def recompute_differences(raw_dir: Path, url: str) -> tuple[int, pd.DataFrame]:
    """price_indicators against a full recompute of the raw table (the pure functions the
    Dagster assets run): (rows compared, the rows that differ)."""
    from marketflow_assets import indicators as ind
    from marketflow_assets.raw_dataset import read_files, snapshot
    from marketflow_assets_tests.helpers import read_table

    snap = snapshot(raw_dir)
    raw = read_files([f.path for f in snap.files_all], ("id", "symbol", "ts", "current_price"))
    raw["ts"] = pd.to_datetime(raw["ts"], utc=True)
    expected = ind.compute_indicators(raw)
    diffs = ind.compare_indicator_rows(read_table(url, "price_indicators"), expected, tol=1e-9)
    return diffs.attrs["compared"], diffs


def newest(rows) -> pd.Timestamp | None:
    return max((ts for _, ts in rows), default=None)


def kill(proc: psutil.Process) -> str:
    """kill -9 ``proc`` and wait for it; its command line, or a note that it had already died
    (a process found running a moment ago may be gone or a zombie by now)."""
    try:
        name = " ".join(proc.cmdline())[:100]
    except psutil.Error as exc:  # exited between the lookup and the kill
        return f"pid {proc.pid} (already gone: {type(exc).__name__})"
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.kill()
    with contextlib.suppress(psutil.Error):
        proc.wait(10)
    return name


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    running = []
    for p in processes:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                running.append(p)
    return running


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """The running (not zombie) PostgreSQL processes of ``data_dir``."""
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.info["name"] == "postgres" and str(data_dir) in " ".join(p.info["cmdline"] or []):
                if p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
    return found


def stop_embedded_postgres(data_dir: Path) -> None:
    """Stop a PostgreSQL of ``data_dir`` still running (SIGTERM to the postmaster: smart
    shutdown), e.g. one that survived a kill -9 of the `up` that started it."""
    for p in psutil.process_iter(["name", "cmdline", "ppid"]):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(p.info["cmdline"] or [])
            if p.info["name"] == "postgres" and f"-D {data_dir}" in cmdline:
                parent = p.parent()
                if parent is None or parent.name() != "postgres":  # the postmaster
                    p.terminate()
                    p.wait(30)


def stop_ingest_between_polls(stack: Stack, attempts: int = 5) -> psutil.Process:
    """SIGSTOP ingest right after the broker acknowledged the poll it recorded last (its next
    poll is an interval away), so no poll is recorded without being published. A poll is
    recorded when it is spooled, before it is sent: stopped in between, it would stay unsent
    until ingest continues. Returns the stopped process."""
    ingest = stack.child(" ingest ")
    log = stack.data_dir / "logs" / "ingest.log"
    for _ in range(attempts):
        size = stack.record.stat().st_size
        stack.wait_for(lambda s=size: stack.record.stat().st_size > s, 60, "a new recorded poll")
        ts = json.loads(stack.record.read_text().splitlines()[-1])["ts"]
        acked = re.compile(rf"poll {re.escape(ts)}: \d+ \+ \d+ acknowledged \(")
        stack.wait_for(
            lambda a=acked: a.search(log.read_text(errors="replace")), 60, f"poll {ts} acknowledged"
        )
        ingest.send_signal(signal.SIGSTOP)
        if json.loads(stack.record.read_text().splitlines()[-1])["ts"] == ts:
            return ingest  # stopped before its next poll was recorded
        ingest.send_signal(signal.SIGCONT)  # the next poll is on its way: wait for that one
    raise AssertionError(f"could not stop ingest between two polls in {attempts} attempts")


def settle(stack: Stack, url: str, limit: float = 480) -> float:
    """Wait until the raw table and price_indicators hold every recorded poll and stopped
    changing, or (something is missing) did not change for two minutes; returns the seconds
    waited. A Spark job restarted after an outage can take a minute or two on a loaded machine
    before its first batch, so a short quiet spell alone proves nothing."""
    polls = set(recorded(stack.record))
    previous, stable, started = None, 0, time.monotonic()
    while time.monotonic() - started < limit:
        with contextlib.suppress(Exception):
            current = (frozenset(raw_rows(stack.raw_dir).items()), frozenset(indicator_rows(url)))
            stable = stable + 1 if current == previous else 0
            previous = current
            raw_keys = {k for k, _ in current[0]}
            complete = polls <= raw_keys and polls <= set(current[1])
            if (complete and stable >= 2) or stable >= 60:
                break
        time.sleep(2)
    return time.monotonic() - started


def exactness(expected: list, raw: Counter, indicators: Counter) -> dict[str, object]:
    """What was lost and duplicated between the published records and the two stores."""
    published = set(expected)
    duplicated = sum(n - 1 for n in raw.values() if n > 1)
    duplicated += sum(n - 1 for n in indicators.values() if n > 1)
    return {
        "published": published,
        "duplicated": duplicated,
        "lost_raw": published - set(raw),
        "lost_indicators": published - set(indicators),
        "extra": (set(raw) | set(indicators)) - published,
    }


def cadence_gaps(times: list[pd.Timestamp], interval_s: float, slack: float = 1.5) -> list:
    """Pairs of consecutive poll times further apart than ``slack`` intervals: polls missed."""
    limit = pd.Timedelta(seconds=interval_s * slack)
    return [(a, b) for a, b in zip(times, times[1:], strict=False) if b - a > limit]
