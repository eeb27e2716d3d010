"""End-to-end freshness: poll ``ts`` -> row visible in ``price_indicators``.

The whole pipeline runs as ``marketflow up`` runs it (the same helpers of
:mod:`marketflow_assets.runtime.up`): embedded Kafka (Tansu) and PostgreSQL, the Spark streaming job
(a micro-batch as soon as a poll is in: ``--trigger-seconds 0``), Dagster (code server,
webserver, daemon with its sensors) and the live follower
(``marketflow follow``: in-process runs of ``refresh_indicators_job`` as soon as a raw file appears)
as child processes; not the Spark Connect server ``up`` keeps for backfills, since runs of the
newest hour compute in process and open no Spark session. Once the streaming job, the UI and the
follower are up, the simulator (``marketflow ingest --source simulate``) publishes the polls; ``ts``
is the wall-clock time of each poll.

From the outside, this process watches

* the ``raw_prices`` Delta table (every 0.2 s): when a poll's ``ts`` first appears in a
  committed file
  -> Kafka->Parquet latency (ingest + broker + the source noticing the records + micro-batch);
* ``price_indicators`` (scanned every 0.5 s): when all coins of a poll's ``ts`` are visible,
  i.e. when the last of them committed (``pg_xact_commit_timestamp``: the benchmark turns on
  ``track_commit_timestamp`` in its embedded PostgreSQL, so the scan interval adds nothing)
  -> Parquet->Postgres latency (follower notices the file + run: refresh, checks, events);

and reports p50 / p95 / max per stage and in total, plus a breakdown from the components' own
log lines (ingest publish time, micro-batch sink time, follower detection and run time). Two
phases on the same running pipeline: 250 coins (``latency_p95_seconds``), then the whole market,
15,000 coins (``coins_15000 latency_p95_seconds``). Full mode: a warm-up poll, 20 polls of 250
coins at 30 s (10 minutes), then 10 polls of 15,000 coins at 30 s. Quick mode compresses time:
20 polls of 250 coins every 2 s (several polls then share a micro-batch and a run: a harder
test, not an easier one; no warm-up poll, so the first poll meets the streaming job's first
non-empty micro-batch), then 4 polls of 15,000 coins every 15 s (twice the 30 s cadence's load).

Targets (issue 30; issue 21's were 3 s and 10 s): p95 <= 0.3 s at 250 coins, <= 1.0 s at
15,000 coins, below both baselines. Beside each latency line,
the machine's 1-minute load average during the phase (``os.getloadavg`` sampled every second from
the first poll to the end of the drain, :mod:`benchmarks.loadavg`): mean and max.

Baselines, side by side on the same run (``--no-baseline`` to skip): two stream processors
consuming the same topic on the same broker, each with a consumer group of its own, computing the
same five indicators into a table of their own on the same PostgreSQL, watched like
``price_indicators`` (all coins of a poll's ``ts`` visible): Quix Streams
(:mod:`benchmarks.quix_baseline`, the project's indicator functions, ``quix_price_indicators``)
and Pathway (:mod:`benchmarks.pathway_baseline`, Rust engine, one stateful reducer per coin, 20 ms
commits, ``pathway_price_indicators``; run by the interpreter of its own virtualenv,
``.venv-pathway``, which ``make bench`` creates). Printed as ``quix latency_p95_seconds``,
``pathway latency_p95_seconds``, ``quix coins_15000 latency_p95_seconds``, ``pathway
coins_15000 latency_p95_seconds`` and the ratios ``marketflow / quix`` and ``marketflow /
pathway`` (target < 1). All pipelines share the machine during the phases, so each one's figure
includes the others' load.

``path`` (``python -m benchmarks --latency-path ...``): ``up`` (default, as above), ``daemon``
(no follower: observation sensor -> automation sensor -> run launcher, the path before issue 17)
or ``inprocess`` (a loop in this process calling ``dg.materialize``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from benchmarks.loadavg import LoadSampler
from benchmarks.processes import clean_up, create_topics, scratch_run, stop_children, wait_for
from benchmarks.report import print_table, ratio_line
from marketflow_assets.schema import SOURCE_DAGSTER

logger = logging.getLogger(__name__)

MODES = {
    "quick": {"polls": 20, "interval": 2.0, "warmup": True},
    "full": {"polls": 20, "interval": 30.0, "warmup": True},
}
COINS = 250
#: The full-market phase (issue 17): polls of 15,000 coins after the 250-coin ones, on the same
#: running pipeline. Quick: 4 polls 15 s apart (a 30 s cadence compressed 2x: more load per
#: second than the real cadence, not less); full: 10 polls at the real 30 s.
MARKET = {
    "quick": {"coins": 15_000, "polls": 4, "interval": 15.0},
    "full": {"coins": 15_000, "polls": 10, "interval": 30.0},
}
PATHS = {
    "up": "what `marketflow up` runs: the live path (marketflow live, straight from the topic), "
    "the follower (marketflow follow, in-process runs) and Dagster's daemon with its sensors",
    "daemon": "Dagster only (code server, webserver, daemon): observation sensor -> automation "
    "sensor -> run launcher",
    "inprocess": "in-process refresh loop (dg.materialize) instead of Dagster's daemon",
}
DRAIN_TIMEOUT_S = 240.0
#: The baseline processors (same topic, same PostgreSQL, same indicators): their tables, names.
BASELINE_TABLES = {"quix": "quix_price_indicators", "pathway": "pathway_price_indicators"}
BASELINE_NAMES = {"quix": "Quix Streams 3.28", "pathway": "Pathway 0.33 (own virtualenv)"}
#: targets of issue 30 (poll ts -> row visible in price_indicators, p95; issue 21's were 3 s and
#: 10 s), and below both baselines at both scales
TARGETS = {COINS: 0.3, MARKET["quick"]["coins"]: 1.0}
#: p95 seconds from ingest's acknowledgement of a poll to its last live row committed (issue 30)
AFTER_PUBLISH_TARGETS = {MARKET["quick"]["coins"]: 0.2}
#: p95 seconds from ingest taking a poll to its acknowledgement: validate, spool, publish (issue 30)
INGEST_TARGETS = {MARKET["quick"]["coins"]: 0.5}
#: Full mode: the scale curve's middle steps between 250 and 15,000 coins (issue 30).
SCALE_STEPS = {
    "quick": [],
    "full": [
        {"coins": 1_000, "polls": 5, "interval": 30.0},
        {"coins": 5_000, "polls": 5, "interval": 30.0},
    ],
}
SCALE_PNG = Path(__file__).resolve().parents[1] / "docs" / "images" / "perf" / "scale_curve.png"
#: poll ts -> the row Dagster recomputed from raw (``source = 'dagster'``), p95 (issue 30)
EXACT_TARGETS = {COINS: 3.0, MARKET["quick"]["coins"]: 8.0}


class Watcher:
    """Records when each poll ``ts`` first becomes visible in Parquet (when ``raw_dir`` is given)
    and in ``table`` (all ``coins`` rows of that ``ts``, whichever process wrote them)."""

    def __init__(
        self,
        raw_dir: Path | None,
        postgres_url: str,
        coins: int,
        since: datetime,
        table: str = "price_indicators",
        where: str = "TRUE",
        commit_times: bool = False,
    ):
        self.raw_dir = raw_dir
        self.where = where  # a fixed SQL condition on the rows counted (e.g. their source)
        self.postgres_url = postgres_url
        self.coins = coins
        self.since = since
        self.table = table
        #: whether the server records commit times (:func:`enable_commit_timestamps`)
        self.commit_times = commit_times
        self.parquet_seen: dict[datetime, float] = {}
        self.pg_seen: dict[datetime, float] = {}
        self._files: set[Path] = set()
        self._floor = since  # :meth:`scan` reads the rows of polls from here on
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch_pg, daemon=True)]
        if raw_dir is not None:
            self._threads.append(threading.Thread(target=self._watch_files, daemon=True))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _watch_files(self) -> None:
        import pyarrow.parquet as pq

        from marketflow_assets.raw_dataset import log_marker, snapshot

        marker, read_at = None, 0.0
        while not self._stop.wait(0.2):
            now = time.time()
            # the table is read again when its log moved (a few microseconds to tell; reading
            # it takes 6+ ms, more as the log grows), and at least once a second: two commits
            # within one tick of the directory's clock leave its time as it was
            latest = log_marker(self.raw_dir)
            if latest is not None and latest == marker and now - read_at < 1.0:
                continue
            try:  # committed files only: a data file is visible once its commit is
                committed = [f.path for f in snapshot(self.raw_dir).files_all]
            except Exception as exc:  # noqa: BLE001 - no table yet / transient
                logger.debug("raw table watch: %s", exc)
                continue
            marker, read_at = latest, now
            for path in committed:
                if path in self._files:
                    continue
                self._files.add(path)
                try:
                    ts = pq.read_table(path, columns=["ts"]).column("ts").unique().to_pylist()
                except Exception:  # noqa: BLE001 - a file being replaced; retry next scan
                    self._files.discard(path)
                    continue
                for value in ts:
                    if value >= self.since:
                        self.parquet_seen.setdefault(value, now)

    def _watch_pg(self) -> None:
        import psycopg2

        conn = None
        while not self._stop.wait(0.5):
            try:
                if conn is None:
                    conn = psycopg2.connect(self.postgres_url, connect_timeout=3)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    self.scan(cur)
            except Exception as exc:  # noqa: BLE001 - table not there yet / transient
                logger.debug("postgres watch: %s", exc)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def scan(self, cur) -> None:
        """One look at ``table``: every poll ``ts`` from the floor on whose ``coins`` rows are all
        there is recorded as seen when the last of them committed (track_commit_timestamp: the
        moment the poll became visible, not the moment this scan saw it, up to one scan interval
        later; the scan time where the server keeps none). The floor then moves to the first
        poll still incomplete, or past the last complete one: a scan reads the rows of the polls
        still in progress only, not every row since the phase began (four watchers re-reading a
        whole-market phase's 60,000 rows every 0.5 s took PostgreSQL's CPU from the processors
        they measure)."""
        now = time.time()
        committed = "max(pg_xact_commit_timestamp(xmin))" if self.commit_times else "NULL"
        cur.execute(
            f"SELECT ts, count(*), {committed} FROM {self.table} WHERE ts >= %s "
            f"AND ({self.where}) GROUP BY ts ORDER BY ts",
            (self._floor,),
        )
        rows = cur.fetchall()
        incomplete = [ts for ts, count, _ in rows if count < self.coins]
        for ts, count, commit in rows:
            if count >= self.coins and ts not in self.pg_seen:
                self.pg_seen[ts] = now if commit is None else min(now, commit.timestamp())
        if incomplete:
            self._floor = incomplete[0]
        elif rows:
            self._floor = rows[-1][0] + timedelta(microseconds=1)


def enable_commit_timestamps(pgdata: Path) -> None:
    """Have the embedded PostgreSQL of ``pgdata`` record each transaction's commit time
    (``track_commit_timestamp``, read at server start: set here before the benchmark starts it),
    so a watcher reads when a poll's rows became visible instead of when its scan saw them."""
    import psycopg2

    from marketflow_assets.runtime.services import EmbeddedPostgres

    with EmbeddedPostgres(pgdata) as url:
        conn = psycopg2.connect(url)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("ALTER SYSTEM SET track_commit_timestamp = on")
        finally:
            conn.close()


def commit_timestamps_on(url: str) -> bool:
    """Whether the server at ``url`` records commit times (see :func:`enable_commit_timestamps`)."""
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW track_commit_timestamp")
            return cur.fetchone()[0] == "on"
    finally:
        conn.close()


class RefreshLoop:
    """In-process stand-in for the automation sensor (``path="inprocess"``)."""

    def __init__(self, data_dir: Path, postgres_url: str):
        self.data_dir = data_dir
        self.postgres_url = postgres_url
        self.runs: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        from benchmarks import project
        from marketflow_assets.raw_dataset import snapshot

        seen: set[Path] = set()
        raw_dir = self.data_dir / "raw_prices"
        while not self._stop.wait(0.5):
            try:  # the files of the newest table version (ts range from the log's statistics)
                files = snapshot(raw_dir).files_all
            except Exception as exc:  # noqa: BLE001 - no table yet / transient
                logger.debug("raw table watch: %s", exc)
                continue
            new = [f for f in files if f.path not in seen]
            if not new:
                continue
            seen.update(f.path for f in new)
            hours = set()
            for f in new:
                for moment in (f.min_ts, f.max_ts):
                    if moment is not None:
                        hours.add(moment.replace(minute=0, second=0, microsecond=0))
            for hour in sorted(hours):
                try:
                    self.runs.append(
                        project.materialize_partition(
                            self.data_dir,
                            self.postgres_url,
                            project.partition_key(hour),
                            whole_hour=False,
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - reported at the end
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    logger.warning("in-process refresh failed: %s", exc)


def _stats(values: list[float]) -> tuple[float, float, float]:
    arr = np.asarray(values, dtype=float)
    if not len(arr):
        return (float("nan"),) * 3
    return (
        float(np.percentile(arr, 50)),
        float(np.percentile(arr, 95)),
        float(arr.max()),
    )


@dataclass
class Phase:
    """One measured series of polls on the running pipeline."""

    coins: int
    polls: int
    interval: float
    watcher: Watcher | None = None
    #: rows recomputed by Dagster from raw (``source = 'dagster'``): the exact path
    exact: Watcher | None = None
    #: the baselines' tables (name -> watcher), for the baselines that run
    baselines: dict[str, Watcher] = field(default_factory=dict)
    load: LoadSampler | None = None  # 1-min load average from the first poll to the drain's end
    total_rows: int = 0
    stats: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)
    #: the streaming job's micro-batches during the phase, and Spark's "falling behind"
    #: warnings among them (a micro-batch that took longer than a trigger interval above 0;
    #: under ``up``'s trigger of 0 Spark has no interval to compare with: the sink's time per
    #: micro-batch in the breakdown and the exact p95 say whether the job keeps up)
    micro_batches: int = 0
    falling_behind: int = 0
    #: CPU seconds (user + system, the process and its children) each stream processor spent
    #: from the phase's first poll to the drain's end: "marketflow" (``marketflow live``) and
    #: the baselines by name
    cpu_s: dict = field(default_factory=dict)
    #: poll ts (ISO) -> seconds from it to its acknowledgement ("acked") and to each
    #: processor's last row committed (saved as ``last-polls.json`` beside ``last-logs``)
    per_poll: dict = field(default_factory=dict)

    def p95(self, watcher: Watcher | None, samples: list[float]) -> float:
        """p95 of ``samples``, infinite when a poll never became visible."""
        if watcher is None or len(watcher.pg_seen) < self.polls:
            return float("inf")
        return _stats(samples)[1]


def _poll_phase(
    phase: Phase,
    up,
    ingest_template,
    env,
    resolved,
    children,
    baselines: dict[str, str],
    commit_times: bool = False,
    processors: dict[str, int] | None = None,
) -> None:
    """Publish ``phase.polls`` polls of ``phase.coins`` coins; wait until they are visible (in
    ``price_indicators`` and in the table of each baseline: ``baselines`` = name -> table).
    ``processors`` (name -> pid): the stream processors whose CPU time is taken."""
    import psycopg2

    since = datetime.now(UTC)
    cpu_before = {name: cpu_seconds(pid) for name, pid in (processors or {}).items()}
    phase.load = LoadSampler().start()
    url, timed = resolved.postgres_url, {"commit_times": commit_times}
    phase.watcher = Watcher(resolved.raw_dir, url, phase.coins, since, **timed)
    phase.watcher.start()
    phase.exact = Watcher(None, url, phase.coins, since, where="source = 'dagster'", **timed)
    phase.exact.start()
    watchers = [phase.watcher, phase.exact]
    for name, table in baselines.items():
        watcher = Watcher(None, url, phase.coins, since, table=table, **timed)
        watcher.start()
        phase.baselines[name] = watcher
        watchers.append(watcher)
    argv = list(ingest_template.argv)
    argv[argv.index("--coins") + 1] = str(phase.coins)
    argv[argv.index("--interval") + 1] = str(phase.interval)
    argv += ["--max-polls", str(phase.polls)]
    log_path = ingest_template.log_path.with_name(f"ingest-{phase.coins}.log")
    ingest = up.Child(f"ingest-{phase.coins}", argv, log_path)
    up.start_child(ingest, env)
    children.append(ingest)
    ingest.proc.wait(phase.polls * phase.interval + 300)
    children.remove(ingest)
    if ingest.proc.returncode != 0:
        raise RuntimeError(f"ingest exited with {ingest.proc.returncode}:\n{up.tail(log_path)}")
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline and any(len(w.pg_seen) < phase.polls for w in watchers):
        time.sleep(1)
    for watcher in watchers:
        watcher.stop()
    phase.load.stop()
    phase.cpu_s = {
        name: cpu_seconds(pid) - cpu_before[name] for name, pid in (processors or {}).items()
    }
    conn = psycopg2.connect(resolved.postgres_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM price_indicators WHERE ts >= %s", (since,))
            phase.total_rows = cur.fetchone()[0]
    finally:
        conn.close()
    k2p, p2pg, total = [], [], []
    for ts in sorted(set(phase.watcher.parquet_seen) | set(phase.watcher.pg_seen)):
        t0 = ts.timestamp()
        a, b = phase.watcher.parquet_seen.get(ts), phase.watcher.pg_seen.get(ts)
        if a is not None:
            k2p.append(a - t0)
        if a is not None and b is not None:
            p2pg.append(max(0.0, b - a))
        if b is not None:
            total.append(b - t0)
    phase.samples = {
        "Kafka->Parquet": k2p,
        "Parquet->Postgres": p2pg,
        "total": total,
        "exact total": [seen - ts.timestamp() for ts, seen in phase.exact.pg_seen.items()],
    }
    for name, watcher in phase.baselines.items():
        phase.samples[f"{name} total"] = [
            seen - ts.timestamp() for ts, seen in watcher.pg_seen.items()
        ]
    acked = publish_times(log_path, since_ts=True)  # poll ts -> s from it to its acknowledgement
    watchers = {"marketflow": phase.watcher, "exact": phase.exact, **phase.baselines}
    watchers = {name: w for name, w in watchers.items() if w is not None}
    phase.per_poll = {
        ts.isoformat(): {
            "acked": acked.get(ts),
            **{n: w.pg_seen[ts] - ts.timestamp() for n, w in watchers.items() if ts in w.pg_seen},
        }
        for ts in sorted(set().union(*(w.pg_seen for w in watchers.values())))
    }
    phase.samples["ingest publish"] = list(publish_times(log_path, phase.coins).values())
    phase.samples["after publish"] = [
        seen - ts.timestamp() - acked[ts]
        for ts, seen in phase.watcher.pg_seen.items()
        if ts in acked
    ]
    phase.stats = {name: _stats(values) for name, values in phase.samples.items()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process and its children have used so far, ended children
    included (0 when the process is gone)."""
    import psutil

    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
    return total


def publish_times(
    ingest_log: Path, min_records: int = 0, since_ts: bool = False
) -> dict[datetime, float]:
    """Each poll's seconds from when ingest took it to its acknowledgement (validate, spool,
    publish), or with ``since_ts`` from its ``ts`` to its acknowledgement (a poll taken just now
    only: the source's own time included), from ingest's log (the polls of at least
    ``min_records`` acknowledged records)."""
    out: dict[datetime, float] = {}
    for match in _acknowledgements(ingest_log, min_records):
        seconds = match.group(4) if since_ts else match.group(3)
        if seconds is None:
            continue
        with contextlib.suppress(ValueError):
            ts = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
            out[ts] = float(seconds)
    return out


def ingest_steps(ingest_log: Path, min_records: int = 0) -> dict[str, list[float]]:
    """Seconds of each of ingest's steps (validate, spool, queue, publish), poll by poll, from
    the acknowledgement lines of ``ingest_log`` (polls of at least ``min_records`` records)."""
    out: dict[str, list[float]] = {}
    for match in _acknowledgements(ingest_log, min_records):
        for name, seconds in _INGEST_STEP.findall(match.group(5) or ""):
            out.setdefault(name, []).append(float(seconds))
    return out


def _acknowledgements(ingest_log: Path, min_records: int) -> Iterator[re.Match]:
    """The acknowledgement lines of ``ingest_log`` (:data:`_INGEST_LINE`) of polls of at least
    ``min_records`` acknowledged records; none when there is no log."""
    if not ingest_log.exists():
        return
    for line in ingest_log.read_text(errors="replace").splitlines():
        match = _INGEST_LINE.search(line)
        if match and int(match.group(2)) >= min_records:
            yield match


#: ingest's line per poll (``collector.py``): "poll <ts>: <good> + <dead letters> acknowledged
#: ... (<s> s after it was taken[, <s> s after its ts][: validate <s>, spool <s>, queue <s>,
#: publish <s>])" -- validate, spool and publish until acknowledged; then the same from the
#: poll's ``ts`` (the source's fetch or simulation too); then the steps one by one
_INGEST_LINE = re.compile(
    r"poll (\S+): (\d+) \+ \d+ acknowledged.*\(([\d.]+) s after it was taken"
    r"(?:, ([\d.]+) s after its ts)?(?:: ([^)]*))?\)$"
)
_INGEST_STEP = re.compile(r"(\w+) ([\d.]+)")
_FOLLOW_LINE = re.compile(r"in ([\d.]+) s \(file seen ([\d.]+) s after its newest ts\)")


def breakdown(logs: Path, phase: Phase, spark_text: str) -> list[list[str]]:
    """Where the seconds of one phase went, from the components' own log lines: ingest's
    publish time per poll, the streaming job's micro-batch duration (``spark_text``: what its
    log gained during the phase, :func:`spark_phase_log`), the follower's detection lag and run
    time (medians over the phase's polls)."""
    rows: list[list[str]] = []

    def med(values) -> str:
        return f"{statistics.median(values):.2f}" if values else "n/a"

    publish = phase.samples.get("ingest publish", [])  # read from ingest's log by _poll_phase
    rows.append(["ingest: validate + spool + publish (acks=all)", med(publish)])
    for name, seconds in ingest_steps(logs / f"ingest-{phase.coins}.log", phase.coins).items():
        rows.append([f"  ingest: {name}", med(seconds)])
    batches = []
    for line in spark_text.splitlines():
        if "micro-batch {" in line:
            metrics = json.loads(line.split("micro-batch ", 1)[1])
            if metrics.get("rows_written", 0) >= phase.coins:
                batches.append(float(metrics.get("duration_s") or 0))
    rows.append(
        [
            "streaming: sink time per micro-batch (parse, dedup, write, rename)",
            med(batches),
        ]
    )
    follow_log = logs / "follow.log"
    if follow_log.exists():
        run_s, seen_s = [], []
        for line in follow_log.read_text(errors="replace").splitlines():
            match = _FOLLOW_LINE.search(line)
            if match:
                run_s.append(float(match.group(1)))
                seen_s.append(float(match.group(2)))
        n = len(phase.samples["total"])
        rows.append(
            ["follower: poll ts -> file noticed (incl. everything upstream)", med(seen_s[-n:])]
        )
        rows.append(
            ["follower: in-process Dagster run (refresh + checks + events)", med(run_s[-n:])]
        )
    return rows


def spark_phase_log(log: Path, offset: int) -> str:
    """The streaming job's log after ``offset`` (its size when a phase began): the phase's part."""
    if not log.exists():
        return ""
    with log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _trigger() -> str:
    """The streaming job's trigger under ``up`` (as this benchmark runs it), in words."""
    from marketflow_assets.runtime.up import STREAMING_TRIGGER_SECONDS as seconds

    return f"every {seconds:g} s" if seconds else "as records arrive"


def spark_log_counts(text: str) -> tuple[int, int]:
    """(micro-batches, "falling behind" warnings) in ``text``, a part of the streaming job's
    log."""
    return text.count("micro-batch {"), text.count("Current batch is falling behind")


def quix_child(up, resolved, work: Path):
    """The Quix Streams baseline (:mod:`benchmarks.quix_baseline`) as a child process on the same
    broker, topic and PostgreSQL, with a consumer group of its own."""
    import sys

    argv = [sys.executable, "-m", "benchmarks.quix_baseline"]
    argv += ["--bootstrap", resolved.kafka_bootstrap, "--topic", resolved.kafka_topic]
    argv += ["--postgres-url", resolved.postgres_url, "--state-dir", str(work / "quix-state")]
    return up.Child("quix", argv, work / "logs" / "quix.log")


def pathway_child(up, resolved, work: Path, python: str):
    """The Pathway baseline (:mod:`benchmarks.pathway_baseline`) as a child process on the same
    broker, topic and PostgreSQL, with a consumer group of its own, run by ``python`` (the
    interpreter of its own virtualenv)."""
    from benchmarks.pathway_baseline import REPO_ROOT

    argv = [python, "-m", "benchmarks.pathway_baseline"]
    argv += ["--bootstrap", resolved.kafka_bootstrap, "--topic", resolved.kafka_topic]
    argv += ["--postgres-url", resolved.postgres_url]
    env = {"PYTHONPATH": str(REPO_ROOT), "PYSPARK_PYTHON": None}
    return up.Child("pathway", argv, work / "logs" / "pathway.log", env=env)


def available_baselines() -> dict[str, str | None]:
    """The baselines that can run here: name -> interpreter (None: this one)."""
    found: dict[str, str | None] = {}
    try:  # the Quix baseline's one extra dependency (bench extra)
        from benchmarks.quix_baseline import import_quixstreams

        import_quixstreams()
        found["quix"] = None
    except ImportError:
        print("latency: quixstreams not installed (pip install -e '.[bench]'): no Quix baseline")
    from benchmarks.pathway_baseline import pathway_python

    python = pathway_python()
    if python is None:
        print("latency: no Pathway virtualenv (make bench-pathway): no Pathway baseline")
    else:
        found["pathway"] = python
    return found


def run(
    mode: str = "quick", path: str = "up", market: bool = True, baseline: bool = True
) -> dict[str, tuple[float, float, float]]:
    from marketflow_assets.resources.postgres import PostgresResource
    from marketflow_assets.runtime import up
    from marketflow_assets.runtime.services import free_port, running_services
    from marketflow_assets.settings import Settings

    polls, interval = MODES[mode]["polls"], MODES[mode]["interval"]
    found = available_baselines() if baseline else {}
    phases = [Phase(COINS, polls, interval)]
    if market:
        phases += [Phase(**step) for step in SCALE_STEPS[mode]]
        phases.append(Phase(**MARKET[mode]))
    scratch, work = scratch_run("latency")
    settings = Settings(data_dir=work)
    args = argparse.Namespace(
        source="simulate",
        coins=COINS,
        interval=interval,
        replay_file=None,
        speed=1.0,
        host="127.0.0.1",
        port=free_port(),
        spark_master="local[*]",
    )
    print(
        f"latency: {polls} simulated polls of {COINS} coins every {interval:g} s"
        + (" (quick mode: time compressed from 30 s)" if interval != 30 else "")
        + (
            f", then {phases[1].polls} polls of {phases[1].coins:,} coins every "
            f"{phases[1].interval:g} s"
            if market
            else ""
        )
        + f"; Parquet->Postgres via {PATHS[path]}"
        + (
            f"; baselines on the same topic: {', '.join(BASELINE_NAMES[n] for n in found)}"
            if found
            else ""
        )
    )
    children: list[up.Child] = []
    loop: RefreshLoop | None = None
    breakdowns: dict[int, list[list[str]]] = {}
    started_at = time.monotonic()
    try:
        if not settings.postgres_url:
            enable_commit_timestamps(settings.data_dir / "postgres")
        with running_services(settings, log=logger.info) as resolved:
            commit_times = commit_timestamps_on(resolved.postgres_url)
            if not commit_times:
                print(
                    "latency: the server keeps no commit times (track_commit_timestamp = off): "
                    "a poll counts as visible when a 0.5 s scan first sees it"
                )
            PostgresResource(url=resolved.postgres_url).ensure_tables()
            create_topics(resolved)
            env = up.child_env(resolved, args)
            built = {child.name: child for child in up.build_children(args, resolved, "simulate")}
            ingest, spark, dagster = built["ingest"], built["spark"], built["dagster"]
            code_server, daemon = built["dagster-code"], built["dagster-daemon"]
            follow = built.get("follow")
            warmup = up.Child("ingest-warmup", [*ingest.argv, "--max-polls", "1"], ingest.log_path)
            # Not started here: the Spark Connect server that ``up`` keeps for backfills. Runs of
            # the newest hour compute in process and never open a Spark session. ``up``: every
            # child but ingest (the follower, and any live path ``up`` starts by default).
            started = {
                "up": [c for name, c in built.items() if name != "ingest"],
                "daemon": [spark, code_server, dagster, daemon],
            }.get(path, [spark])
            extra = []
            if "quix" in found:
                extra.append(quix_child(up, resolved, work))
            if "pathway" in found:
                extra.append(pathway_child(up, resolved, work, found["pathway"]))
            for child in [*started, *extra]:
                up.start_child(child, env)
                children.append(child)
            probes = up.ReadinessProbes(resolved, args)
            spark_log = spark.log_path
            if path in ("up", "daemon"):
                wait_for(probes._ui_serves, 180, "the Dagster UI", children)
            else:
                from benchmarks import project

                project.get_bench_spark()
                loop = RefreshLoop(work, resolved.postgres_url)
                loop.start()
            wait_for(
                lambda: "micro-batch" in spark_log.read_text(errors="replace"),
                180,
                "the Spark streaming job",
                children,
            )
            if path == "up" and follow is not None:
                wait_for(
                    lambda: "following" in follow.log_path.read_text(errors="replace"),
                    180,
                    "the live follower",
                    children,
                )
            if path in ("up", "daemon"):  # the daemon has loaded the code and ticks the sensor
                wait_for(
                    lambda: (
                        "sensor: indicators_follow_raw_prices"
                        in dagster.log_path.read_text(errors="replace")
                    ),
                    180,
                    "the first tick of the automation sensor",
                    children,
                )
            if MODES[mode]["warmup"]:  # one poll through the whole pipeline, not measured
                up.start_child(warmup, env)
                children.append(warmup)
                warmup.proc.wait(120)
                children.remove(warmup)
                wait_for(
                    lambda: probes.indicator_rows() >= COINS,
                    300,
                    "the warm-up poll in price_indicators",
                    children,
                )
                if path in ("up", "daemon"):  # and through Spark and Dagster (the exact path)
                    wait_for(
                        lambda: probes.indicator_rows(SOURCE_DAGSTER) >= COINS,
                        300,
                        "the warm-up poll's rows recomputed by Dagster",
                        children,
                    )
            for child in extra:  # its consumer group has the topic's partitions
                wait_for(
                    lambda c=child: "ready: consuming" in c.log_path.read_text(errors="replace"),
                    180,
                    f"the {child.name} baseline's consumer group",
                    children,
                )
            setup_s = time.monotonic() - started_at
            spark_log = work / "logs" / "spark_streaming.log"
            for phase in phases:
                tables = {c.name: BASELINE_TABLES[c.name] for c in extra}
                log_from = spark_log.stat().st_size if spark_log.exists() else 0
                processors = {c.name: c.proc.pid for c in extra if c.proc is not None}
                live = built.get("live")
                if live is not None and live.proc is not None and live in children:
                    processors["marketflow"] = live.proc.pid
                _poll_phase(
                    phase, up, ingest, env, resolved, children, tables, commit_times, processors
                )
                spark_text = spark_phase_log(spark_log, log_from)
                phase.micro_batches, phase.falling_behind = spark_log_counts(spark_text)
                with contextlib.suppress(Exception):
                    breakdowns[phase.coins] = breakdown(work / "logs", phase, spark_text)
            if loop is not None:
                loop.stop()
            stop_children(children)
    finally:
        for phase in phases:
            if phase.watcher is not None:
                phase.watcher.stop()
        if loop is not None:
            loop.stop()
        clean_up(children, work, scratch)
        (scratch / "last-polls.json").write_text(
            json.dumps({str(p.coins): p.per_poll for p in phases}, indent=1)
        )

    totals = [f"{name} total" for name in BASELINE_TABLES]
    for phase in phases:
        label = f"{phase.polls} polls x {phase.coins:,} coins every {phase.interval:g} s"
        print_table(
            f"latency: poll ts -> visible (s); {label}, {phase.total_rows:,} rows; setup"
            f"{' incl. one warm-up poll' if MODES[mode]['warmup'] else ''} {setup_s:.0f} s "
            "excluded",
            ["stage", "polls", "p50", "p95", "max"],
            [
                [name, str(len(phase.samples[name])), *(f"{x:.1f}" for x in phase.stats[name])]
                for name in ("Kafka->Parquet", "Parquet->Postgres", "total", "exact total", *totals)
                if name in phase.samples
            ],
        )
        if phase.coins in breakdowns:
            print_table(
                f"latency breakdown, {phase.coins:,} coins (medians from the components' logs)",
                ["step", "s"],
                breakdowns[phase.coins],
            )
        for watcher in (phase.watcher, *phase.baselines.values()):
            missing = phase.polls - len(watcher.pg_seen) if watcher is not None else 0
            if missing:
                print(
                    f"latency: {missing} of {phase.polls} polls of {phase.coins:,} coins never "
                    f"became visible in {watcher.table}"
                )
    if loop is not None:
        print(
            f"latency: in-process loop ran {len(loop.runs)} refreshes "
            f"(median {np.median(loop.runs) if loop.runs else float('nan'):.1f} s), "
            f"{len(loop.errors)} failed"
        )
    base = phases[0]
    for name, (p50, p95, mx) in base.stats.items():
        print(f"latency {name}: p50 = {p50:.1f} s, p95 = {p95:.1f} s, max = {mx:.1f} s")
    for phase in phases:
        prefix = "" if phase is base else f"coins_{phase.coins} "
        value = phase.p95(phase.watcher, phase.samples["total"])
        target, exact_target = TARGETS.get(phase.coins), EXACT_TARGETS.get(phase.coins)
        load = phase.load.describe()
        ratio_line(f"{prefix}latency_p95_seconds", value, target and f"<= {target:g}", load)
        exact = phase.p95(phase.exact, phase.samples["exact total"])
        ratio_line(
            f"exact {prefix}latency_p95_seconds",
            exact,
            exact_target and f"<= {exact_target:g}",
            load,
        )
        print(
            f"{prefix}streaming falling_behind_warnings = {phase.falling_behind}   (target 0; "
            f"{phase.micro_batches} micro-batches; trigger {_trigger()})",
            flush=True,
        )
        for name, watcher in phase.baselines.items():
            other = phase.p95(watcher, phase.samples[f"{name} total"])
            ratio_line(f"{name} {prefix}latency_p95_seconds", other, None, load)
            ratio_line(f"{prefix}latency_p95 marketflow / {name}", value / other, "< 1")
        published = phase.samples.get("ingest publish", [])
        target = INGEST_TARGETS.get(phase.coins)
        p50, p95, _ = _stats(published)
        ratio_line(
            f"ingest {prefix}publish_p95_seconds",
            p95 if len(published) == phase.polls else float("inf"),
            target and f"<= {target:g}",
            f"(median {p50:.2f})   {load}",
        )
        after = phase.p95(phase.watcher, phase.samples.get("after publish", []))
        target = AFTER_PUBLISH_TARGETS.get(phase.coins)
        ratio_line(
            f"{prefix}live_after_publish_p95_seconds", after, target and f"<= {target:g}", load
        )
        records = phase.coins * phase.polls
        per_record = {n: 1e6 * cpu / records for n, cpu in phase.cpu_s.items()}
        fastest = min((v for n, v in per_record.items() if n != "marketflow"), default=None)
        limit = f"< {fastest:.1f}, the fastest baseline" if fastest else None
        if "marketflow" in per_record:
            ratio_line(f"live {prefix}cpu_us_per_record", per_record.pop("marketflow"), limit, load)
        for name, value in per_record.items():
            ratio_line(f"{name} {prefix}cpu_us_per_record", value, None, load)
    if len(phases) > 2:
        scale_curve(phases)
    return base.stats


def scale_curve(phases: list[Phase], png: Path = SCALE_PNG) -> None:
    """The p95 of every path against the number of coins: a table, and a PNG of the curve
    (plotly, drawn by headless Chromium through Playwright; skipped when either is missing)."""
    names = ["total", "exact total", *(f"{n} total" for n in BASELINE_TABLES)]
    labels = {"total": "marketflow live", "exact total": "marketflow exact (Dagster)"}
    curves: dict[str, list[float | None]] = {name: [] for name in names}
    for phase in phases:
        watchers = {"total": phase.watcher, "exact total": phase.exact}
        watchers.update({f"{n} total": w for n, w in phase.baselines.items()})
        for name in names:
            samples = phase.samples.get(name)
            curves[name].append(None if samples is None else phase.p95(watchers[name], samples))
    print_table(
        "scale curve: poll ts -> row, p95 (s), by coins per poll",
        ["coins", *(labels.get(n, n.removesuffix(" total")) for n in names)],
        [
            [f"{phase.coins:,}", *(_fmt(curves[n][i]) for n in names)]
            for i, phase in enumerate(phases)
        ],
    )
    try:
        import plotly.graph_objects as go

        fig = go.Figure()
        coins = [phase.coins for phase in phases]
        for name in names:
            if any(y is not None and np.isfinite(y) for y in curves[name]):
                label = labels.get(name, name.removesuffix(" total"))
                fig.add_trace(go.Scatter(x=coins, y=curves[name], mode="lines+markers", name=label))
        fig.update_layout(
            title="poll ts -> row visible in PostgreSQL, p95, by market size (2 cores)",
            xaxis={"title": "coins per poll", "type": "log"},
            yaxis={"title": "seconds (p95)", "type": "log"},
            width=900,
            height=520,
        )
        save_png(fig, png)
        print(f"scale curve: {png}")
    except Exception as exc:  # noqa: BLE001 - the table above is the result; the PNG a view
        print(f"scale curve: no PNG ({type(exc).__name__}: {exc})")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def save_png(fig, path: Path) -> None:
    """``fig`` as a PNG: its HTML page rendered by the system Chromium (no kaleido here)."""
    import shutil

    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise RuntimeError("chromium not found on PATH (apt-get install -y chromium)")
    html = fig.to_html(include_plotlyjs=True, full_html=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = chromium.new_page(viewport={"width": 940, "height": 560})
            page.set_content(html)
            page.wait_for_selector(".main-svg")
            page.screenshot(path=str(path), full_page=False)
        finally:
            chromium.close()


if __name__ == "__main__":  # pragma: no cover - manual runs
    logging.basicConfig(level=logging.INFO)
    run("quick")
