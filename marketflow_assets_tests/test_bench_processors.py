"""``benchmarks/latency.py``: what the stream processors' lines are made of - each poll's
acknowledgement time from ingest's log (the start of "after the publish") and the CPU seconds
of a process and its children."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from benchmarks.latency import cpu_seconds, ingest_steps, publish_times


def test_publish_times_are_read_per_poll_from_ingests_log(tmp_path):
    log = tmp_path / "ingest-250.log"
    assert publish_times(log) == {}  # no log: nothing
    log.write_text(
        "04:53:58 INFO marketflow.ingest: simulate: 250 coins every 2 s\n"
        "04:53:59 INFO marketflow_assets.ingest.collector: poll 2026-12-06T04:53:59.532Z: "
        "250 + 0 acknowledged (0.01 s after it was taken)\n"
        "04:54:01 INFO marketflow_assets.ingest.collector: poll 2026-12-06T04:54:01.532Z: "
        "249 + 1 acknowledged, 1 NOT acknowledged (0.42 s after it was taken, 0.61 s after its "
        "ts: validate 0.10, spool 0.02, queue 0.00, publish 0.30)\n"
    )
    first = datetime(2026, 12, 6, 4, 53, 59, 532000, tzinfo=UTC)
    second = datetime(2026, 12, 6, 4, 54, 1, 532000, tzinfo=UTC)
    assert publish_times(log) == {first: 0.01, second: 0.42}
    assert publish_times(log, min_records=250) == {first: 0.01}  # whole polls (the breakdown)
    assert publish_times(log, since_ts=True) == {second: 0.61}  # a poll of the line's age only
    steps = {"validate": [0.10], "spool": [0.02], "queue": [0.0], "publish": [0.30]}
    assert ingest_steps(log) == steps  # the lines that name them
    assert ingest_steps(log, min_records=250) == {}


def test_cpu_seconds_count_a_process_and_its_children():
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time; subprocess.run([sys.executable, '-c', {busy!r}]); "
            "time.sleep(30)",
        ]
    )
    try:
        deadline = datetime.now(UTC).timestamp() + 20
        while cpu_seconds(parent.pid) < 0.5:  # the child's busy loop, counted while it runs
            assert datetime.now(UTC).timestamp() < deadline, cpu_seconds(parent.pid)
        time.sleep(1.0)  # the child has ended (its parent waited for it): still counted
        assert 0.5 <= cpu_seconds(parent.pid) < 5
    finally:
        parent.kill()
        parent.wait()
    assert cpu_seconds(parent.pid) == 0.0  # gone: nothing to count


def test_the_watcher_records_each_complete_poll_and_reads_only_polls_in_progress(pg_clean):
    """A watcher's scan of a table on the real PostgreSQL: a poll counts as seen once all of its
    coins' rows are there (the same rows, another ``where``: not), and each scan starts at the
    first poll still in progress, so it never re-reads the rows of a poll it has seen."""
    import psycopg2

    from benchmarks.latency import Watcher

    since = datetime(2026, 12, 8, 1, tzinfo=UTC)
    polls = [since + timedelta(seconds=30 * k) for k in range(3)]
    conn = psycopg2.connect(pg_clean)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TABLE watched (coin_id text, ts timestamptz, source text)")

    def add(ts, coins, source="live"):
        cur.executemany(
            "INSERT INTO watched VALUES (%s, %s, %s)", [(f"c{i}", ts, source) for i in coins]
        )

    watcher = Watcher(None, pg_clean, 3, since, table="watched")
    dagster = Watcher(None, pg_clean, 3, since, table="watched", where="source = 'dagster'")
    add(since - timedelta(seconds=30), range(3))  # a poll of the phase before: not counted
    add(polls[0], range(3))
    add(polls[1], range(2))  # two of three coins so far
    watcher.scan(cur)
    dagster.scan(cur)
    assert set(watcher.pg_seen) == {polls[0]} and dagster.pg_seen == {}
    assert watcher._floor == polls[1]  # the poll in progress: polls[0]'s rows are not read again
    add(polls[1], [2])
    watcher.scan(cur)
    assert set(watcher.pg_seen) == {polls[0], polls[1]}
    assert watcher._floor > polls[1]
    first_seen = dict(watcher.pg_seen)
    cur.execute("DELETE FROM watched WHERE ts = %s", (polls[0],))  # would be incomplete now
    add(polls[2], range(3), source="dagster")
    watcher.scan(cur)
    dagster.scan(cur)
    assert set(watcher.pg_seen) == set(polls)
    assert {ts: watcher.pg_seen[ts] for ts in first_seen} == first_seen  # seen once, kept
    assert set(dagster.pg_seen) == {polls[2]}
    conn.close()
