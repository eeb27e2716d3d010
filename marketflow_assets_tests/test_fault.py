"""Fault test of the whole `marketflow up` pipeline: while simulated polls flow, kill -9 in turn
the broker (Tansu), the Spark streaming job, the live follower, a Dagster run worker (when one
runs at that moment), the live consumer (`marketflow live`) and `up` itself (then its leftover
children, as an operator would), restart `up` on the same data dir, stop publishing and let the
data settle. Every poll recorded by `--record` (written once the poll is in the spool) must be in
the raw table and in `price_indicators` exactly once: the three sets of (coin id, ts) are equal,
nothing lost, nothing duplicated; and every `price_indicators` row equals a full recompute of
the raw table.

Prints ``fault test: published=N raw=N indicators=N lost=0 duplicated=0`` (the README quotes it)
and, when something is lost, which kill lost it (a lost poll is charged to the first kill after
its ts)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections import Counter
from datetime import UTC, datetime

import pandas as pd
import psutil
import pytest

from marketflow_assets_tests.stack import Stack, settle
from marketflow_assets_tests.stack import alive as _alive
from marketflow_assets_tests.stack import indicator_rows as _indicator_rows
from marketflow_assets_tests.stack import kill as _kill
from marketflow_assets_tests.stack import newest as _newest
from marketflow_assets_tests.stack import raw_rows as _raw_rows
from marketflow_assets_tests.stack import recompute_differences as _recompute_differences
from marketflow_assets_tests.stack import recorded as _recorded
from marketflow_assets_tests.stack import stop_embedded_postgres as _stop_embedded_postgres
from marketflow_assets_tests.stack import stop_ingest_between_polls as _stop_ingest_between_polls

COINS, INTERVAL_S = 4, 2
RUN_WORKER_MARKERS = ("execute_run", "execute_step", "run worker", "api execute")

pytestmark = pytest.mark.fault


def _run_worker(up: psutil.Process) -> psutil.Process | None:
    for p in up.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(m in " ".join(p.cmdline()) for m in RUN_WORKER_MARKERS):
                return p
    return None


def _read_indicators(stack: Stack) -> Counter:
    """(coin_id, ts) of price_indicators: through the running `up`'s PostgreSQL, else through
    the embedded server in the data dir (started for the read when `up` is gone)."""
    from marketflow_assets.runtime.services import EmbeddedPostgres

    with contextlib.suppress(Exception):
        return _indicator_rows(stack.postgres_url())
    with EmbeddedPostgres(stack.data_dir / "postgres") as url:
        return _indicator_rows(url)


@pytest.mark.timeout(1800)  # ~5 min on an idle 2-core machine; far more under load
def test_kill_9_of_every_component_loses_and_duplicates_nothing(tmp_path):
    stack = Stack(tmp_path, coins=COINS, interval_s=INTERVAL_S)
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
                and str(stack.data_dir) in " ".join(p.info["cmdline"] or [])
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
            note(f"settled after {settle(stack, url):.0f} s")
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
