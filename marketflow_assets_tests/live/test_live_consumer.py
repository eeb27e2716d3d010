"""The live consumer against a real Tansu topic and PostgreSQL: its rows equal a full
recompute (the independent reference of helpers.py and the pure functions Dagster runs), movers
too; duplicates are no-ops, late rows are left to Dagster; kill -9 loses or duplicates nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pandas as pd
import pytest

from marketflow_assets import indicators as ind
from marketflow_assets_tests.helpers import (
    assert_indicators_match_reference,
    assert_movers_match_reference,
    irregular_rows,
    read_table,
)
from marketflow_assets_tests.live.live_helpers import (
    consumed_all,
    in_poll_order,
    publish,
    query,
    running_consumer,
    stored_offsets,
    wait_for,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def full_recompute(rows: list[tuple]) -> tuple[pd.DataFrame, pd.DataFrame]:
    raw = pd.DataFrame(rows, columns=["id", "symbol", "ts", "current_price"])
    raw["ts"] = pd.to_datetime(raw["ts"], utc=True)
    indicators = ind.compute_indicators(raw)
    return indicators, ind.compute_movers(indicators)


def assert_equal_to_full_recompute(url: str, rows: list[tuple]) -> None:
    table = read_table(url, "price_indicators")
    assert_indicators_match_reference(table, rows)  # independent plain-Python reference
    expected, expected_movers = full_recompute(rows)  # what the Dagster assets compute
    diffs = ind.compare_indicator_rows(table, expected, tol=1e-9)
    assert diffs.attrs["compared"] == len(expected) == len(table)
    assert diffs.empty, diffs.head()
    movers = read_table(url, "market_movers")
    assert_movers_match_reference(movers, rows)
    got = movers.sort_values(["snapshot_ts", "direction", "rank"]).reset_index(drop=True)
    assert list(got["coin_id"]) == list(expected_movers["coin_id"])
    assert query(url, "SELECT DISTINCT source FROM price_indicators") == [("live",)]
    assert query(url, "SELECT DISTINCT source FROM market_movers") == [("live",)]


def test_stream_of_polls_equals_full_recompute(kafka_bootstrap, new_topic, pg_clean):
    topic = new_topic("live", partitions=3)
    rows = in_poll_order(irregular_rows(seed=3, coins=12, polls=90))
    polls = sorted({r[2] for r in rows})
    with running_consumer(kafka_bootstrap, topic, pg_clean):
        sent = 0
        # bursts of several polls, then single polls: batches of every size
        for chunk in (polls[:30], polls[30:31], polls[31:60], *[[p] for p in polls[60:]]):
            batch = [r for r in rows if chunk[0] <= r[2] <= chunk[-1]]
            sent += publish(kafka_bootstrap, topic, batch)
        assert sent == len(rows)
        wait_for(lambda: consumed_all(pg_clean, topic, sent), what="every record consumed")
    assert_equal_to_full_recompute(pg_clean, rows)
    assert_coin_market_is_each_coins_newest(pg_clean, rows)


def test_an_idle_consumer_polls_once_a_second_and_a_record_ends_the_wait(
    kafka_bootstrap, new_topic, pg_clean
):
    """Idle, the consumer's poll waits up to IDLE_POLL_SECONDS (its fetches keep going every
    ``poll_timeout_s`` inside it: fewer round trips through the loop, less idle CPU), yet a
    record published while a poll waits ends that poll at once, not at its timeout."""
    from marketflow_assets.live.consumer import IDLE_POLL_SECONDS

    topic = new_topic("live_idle", partitions=3)
    rows = in_poll_order(irregular_rows(seed=5, coins=4, polls=2))
    first = [r for r in rows if r[2] == rows[0][2]]
    with running_consumer(kafka_bootstrap, topic, pg_clean) as consumer:
        calls: list[tuple[float, float, int]] = []  # (started, seconds, records)
        started_one = threading.Event()
        poll = consumer.fetcher.poll

        def timed_poll(*args, **kwargs):
            started = time.monotonic()
            started_one.set()
            got = poll(*args, **kwargs)
            calls.append((started, time.monotonic() - started, len(got)))
            return got

        wait_for(lambda: consumer.assigned, what="the partitions assigned")
        consumer.fetcher.poll = timed_poll
        time.sleep(3.5)
        idle = [c for c in calls if c[0] > calls[0][0] + 0.5] if calls else []
        assert idle and all(records == 0 for _, _, records in idle)
        assert len(idle) <= 4, f"{len(idle)} polls in 3 s idle"
        assert all(seconds >= IDLE_POLL_SECONDS * 0.9 for _, seconds, _ in idle)

        started_one.clear()
        started_one.wait(5)  # a poll has just begun to wait
        publish(kafka_bootstrap, topic, first)
        wait_for(lambda: consumed_all(pg_clean, topic, len(first)), what="the poll consumed")
        with_records = [c for c in calls if c[2]]
        assert with_records, calls
        assert with_records[0][1] < IDLE_POLL_SECONDS * 0.75, with_records


def test_the_topic_check_before_each_batch_does_not_wait_out_a_refresh_backoff(
    kafka_bootstrap, new_topic, pg_clean
):
    """While it computes each fetched batch the consumer asks the broker for the topic's id
    (``check_recreated(fresh=True)``: a recreated topic is read again from the beginning).
    kafka-python's cluster view holds back a refresh until 100 ms after the last one, so at the
    whole market (a batch every 0.1-0.2 s) each check waited 50-100 ms for a 2 ms round trip;
    the consumer's view may refresh again METADATA_BACKOFF_MS after the last one. Eight checks
    in a row took at least 0.8 s before."""
    from marketflow_assets.live.consumer import METADATA_BACKOFF_MS, LiveConsumer

    assert METADATA_BACKOFF_MS <= 10
    topic = new_topic("live_topic_check", partitions=2)
    consumer = LiveConsumer(kafka_bootstrap, topic, pg_clean)
    try:
        assert consumer.assign()
        consumer.check_recreated(fresh=True)
        started = time.monotonic()
        for _ in range(8):
            assert consumer.check_recreated(fresh=True) is False
        elapsed = time.monotonic() - started
    finally:
        consumer.close()
    assert elapsed < 0.6, f"8 topic checks took {elapsed:.2f} s"


def test_a_batch_computed_while_the_topic_turns_out_recreated_is_dropped_and_read_again(
    kafka_bootstrap, new_topic, pg_clean
):
    """The broker's view of the topic is asked for while each fetched batch is computed; when it
    says the topic was recreated (a new topic id), the computed batch is not written and the
    state does not move: every partition is read again from the beginning (rows already stored
    are skipped) and the result equals a full recompute. The new id is the one thing faked:
    deleting a topic under a running librdkafka fetcher crashes it (a known limit)."""
    topic = new_topic("live", partitions=2)
    rows = in_poll_order(irregular_rows(seed=8, coins=6, polls=30))
    polls = sorted({r[2] for r in rows})
    head = [r for r in rows if r[2] <= polls[14]]
    computed, submitted = [], []
    with running_consumer(kafka_bootstrap, topic, pg_clean) as consumer:
        n = publish(kafka_bootstrap, topic, head)
        wait_for(lambda: consumed_all(pg_clean, topic, n), what="the first half")
        compute, submit, topic_id = consumer.compute, consumer.submit, consumer._topic_id
        fetched = threading.Event()  # the new id shows once a batch of the rest is computed

        def counted_compute(records):
            computed.append(len(records))
            fetched.set()
            return compute(records)

        consumer.compute = counted_compute
        consumer.submit = lambda batch: submitted.append(len(batch.records)) or submit(batch)
        consumer._topic_id = lambda: f"{topic_id()}-recreated" if fetched.is_set() else topic_id()
        n += publish(kafka_bootstrap, topic, [r for r in rows if r[2] > polls[14]])
        wait_for(lambda: consumed_all(pg_clean, topic, n), what="the second half")
    assert submitted and len(computed) == len(submitted) + 1, (computed, submitted)
    assert sum(submitted) == len(rows)  # the partitions were read again from the beginning
    assert sum(stored_offsets(pg_clean, topic).values()) == len(rows)
    assert_equal_to_full_recompute(pg_clean, rows)


def test_a_poll_in_several_batches_ranks_its_movers_once_the_last_one_is_written(
    kafka_bootstrap, new_topic, pg_clean
):
    """When the next batch is already waiting with rows of every snapshot of the one being
    written (a whole-market poll comes in several batches), that write leaves the snapshot's
    movers to it: the movers are ranked once, over all of the snapshot's rows, and equal a full
    recompute. A batch with no such successor ranks its own."""
    topic = new_topic("live", partitions=1)
    rows = in_poll_order(irregular_rows(seed=6, coins=12, polls=30))
    polls = sorted({r[2] for r in rows})
    head = [r for r in rows if r[2] < polls[-1]]
    last = [r for r in rows if r[2] == polls[-1]]
    calls: list[tuple[int, bool]] = []
    gate, queued = threading.Event(), threading.Event()
    with running_consumer(kafka_bootstrap, topic, pg_clean) as consumer:
        n = publish(kafka_bootstrap, topic, head)
        wait_for(lambda: consumed_all(pg_clean, topic, n), what="the polls before the last")
        write, write_indicators = consumer.writer._write, consumer.store.write_indicators
        submit = consumer.writer.submit

        def held_write(*args):  # the last poll's first part waits until its rest is queued
            gate.wait(60)
            return write(*args)

        def counted(rows, movers=True):
            calls.append((len(rows), movers))
            return write_indicators(rows, movers=movers)

        def noted_submit(*args):
            submit(*args)
            if len(args[0]) < len(last):  # a part of the last poll was handed over
                queued.set()

        consumer.writer._write = held_write
        consumer.store.write_indicators = counted
        consumer.writer.submit = noted_submit
        half = len(last) // 2
        n += publish(kafka_bootstrap, topic, last[:half])
        wait_for(queued.is_set, what="the first part handed to the writer")
        queued.clear()
        n += publish(kafka_bootstrap, topic, last[half:])
        wait_for(lambda: consumer.writer.waiting() is not None, what="the rest waiting")
        gate.set()
        wait_for(lambda: consumed_all(pg_clean, topic, n), what="the last poll")
    assert sum(n for n, _ in calls) == len(last), calls  # the last poll's parts, in order
    assert calls[0][1] is False, calls  # held until the rest waited behind it: left to it
    assert calls[-1][1] is True, calls  # nothing behind the last part: ranked there
    assert_equal_to_full_recompute(pg_clean, rows)


def test_a_failed_write_drops_the_batches_computed_after_it(kafka_bootstrap, new_topic, pg_clean):
    """Batches are computed while the one before is written (a writer thread): when that write
    fails (its PostgreSQL connection is terminated), nothing computed after it is written, the
    consumer ends with the error, and what is stored is exactly the records before the stored
    offsets; a new consumer then completes the stream, equal to a full recompute."""
    import psycopg2

    topic = new_topic("live", partitions=2)
    rows = in_poll_order(irregular_rows(seed=5, coins=10, polls=60))
    polls = sorted({r[2] for r in rows})
    head = [r for r in rows if r[2] <= polls[29]]
    written: list[int] = []
    with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)):
        with running_consumer(kafka_bootstrap, topic, pg_clean) as consumer:
            publish(kafka_bootstrap, topic, head)
            wait_for(lambda: consumed_all(pg_clean, topic, len(head)), what="the first half")
            write = consumer.store.write_indicators

            submit = consumer.writer.submit
            submitted: list[int] = []

            gate = threading.Event()

            def slow_write(*args, **kwargs):  # held until the next batch was computed
                written.append(len(args[0]))
                gate.wait(60)
                return write(*args, **kwargs)

            def counted_submit(*args):
                submitted.append(len(args[0]))
                submit(*args)

            consumer.store.write_indicators = slow_write
            consumer.writer.submit = counted_submit
            query(
                pg_clean,
                "SELECT pg_terminate_backend(%s)",
                (consumer.store.conn.get_backend_pid(),),
            )
            # one batch (its write will fail), then the next computed during that write
            publish(kafka_bootstrap, topic, [r for r in rows if r[2] == polls[30]])
            wait_for(lambda: len(submitted) == 1, what="the first batch after the failure")
            publish(kafka_bootstrap, topic, [r for r in rows if r[2] == polls[31]])
            wait_for(lambda: len(submitted) == 2, what="a batch computed during the write")
            gate.set()
            publish(kafka_bootstrap, topic, [r for r in rows if r[2] > polls[31]])
            wait_for(lambda: consumer.writer.error is not None, what="the failed write")
    assert len(written) == 1  # the failed write; the batches after it were never written
    stored = stored_offsets(pg_clean, topic)
    assert sum(stored.values()) == len(head)
    assert query(pg_clean, "SELECT count(*) FROM price_indicators")[0][0] == len(head)
    with running_consumer(kafka_bootstrap, topic, pg_clean):
        wait_for(lambda: consumed_all(pg_clean, topic, len(rows)), what="the rest")
    assert_equal_to_full_recompute(pg_clean, rows)


def test_a_stop_between_a_batchs_two_transactions_loses_and_doubles_nothing(
    kafka_bootstrap, new_topic, pg_clean
):
    """A batch's indicator rows are committed before its market data and offsets: when the
    second transaction never happens (its write fails here), the stored offsets stay before
    records whose rows are already in price_indicators. A new consumer reads them again, skips
    their indicators and writes their market data: every table ends as if nothing happened."""
    topic = new_topic("live", partitions=2)
    rows = in_poll_order(irregular_rows(seed=11, coins=8, polls=50))
    polls = sorted({r[2] for r in rows})
    head = [r for r in rows if r[2] <= polls[24]]
    second = [r for r in rows if polls[24] < r[2] <= polls[34]]

    class Refused(RuntimeError):
        pass

    with pytest.raises(Refused):
        with running_consumer(kafka_bootstrap, topic, pg_clean) as consumer:
            publish(kafka_bootstrap, topic, head)
            wait_for(lambda: consumed_all(pg_clean, topic, len(head)), what="the first part")

            def refuse(*args, **kwargs):
                raise Refused("market data and offsets not written")

            consumer.store.write_market = refuse
            publish(kafka_bootstrap, topic, second)
            wait_for(lambda: consumer.writer.error is not None, what="the refused write")
    assert sum(stored_offsets(pg_clean, topic).values()) == len(head)
    committed = query(pg_clean, "SELECT count(*) FROM price_indicators")[0][0]
    assert committed > len(head)  # rows of records the stored offsets have not passed
    with running_consumer(kafka_bootstrap, topic, pg_clean):
        publish(kafka_bootstrap, topic, [r for r in rows if r[2] > polls[34]])
        wait_for(lambda: consumed_all(pg_clean, topic, len(rows)), what="the rest")
    assert_equal_to_full_recompute(pg_clean, rows)
    assert_coin_market_is_each_coins_newest(pg_clean, rows)
    history = query(
        pg_clean, "SELECT count(*), count(DISTINCT (coin_id, ts)) FROM coin_market_history"
    )
    assert history[0][0] == history[0][1] == len({(r[0], r[2]) for r in rows})


def assert_coin_market_is_each_coins_newest(url: str, rows: list[tuple]) -> None:
    """``coin_market`` (the dashboard's market table) holds each coin's newest record."""
    raw = pd.DataFrame(rows, columns=["id", "symbol", "ts", "current_price"])
    raw["ts"] = pd.to_datetime(raw["ts"], utc=True)
    newest = raw.sort_values("ts").groupby("id").last()
    market = read_table(url, "coin_market").set_index("coin_id").sort_index()
    assert list(market.index) == sorted(newest.index)
    assert (pd.to_datetime(market["ts"], utc=True) == newest["ts"]).all()
    assert (market["price"] == newest["current_price"]).all()
    history = read_table(url, "coin_market_history")  # every (coin, poll) of the records
    stored = set(zip(history["coin_id"], pd.to_datetime(history["ts"], utc=True), strict=True))
    assert set(zip(raw["id"], raw["ts"], strict=True)) <= stored


def test_duplicates_are_no_ops_and_late_rows_are_left_to_dagster(
    kafka_bootstrap, new_topic, pg_clean
):
    topic = new_topic("live", partitions=1)
    rows = in_poll_order(irregular_rows(seed=5, coins=5, polls=40))
    head, tail = rows[: len(rows) // 2], rows[len(rows) // 2 :]
    with running_consumer(kafka_bootstrap, topic, pg_clean):
        n = publish(kafka_bootstrap, topic, head)
        wait_for(lambda: consumed_all(pg_clean, topic, n), what="first half")
        before = read_table(pg_clean, "price_indicators")
        coin, symbol, ts, price = head[-1]
        late_ts = head[0][2] + timedelta(microseconds=3)  # older than the coin's newest row
        n += publish(
            kafka_bootstrap,
            topic,
            [(coin, symbol, ts, price * 2), (coin, symbol, late_ts, price * 3)],  # dup, late
        )
        wait_for(lambda: consumed_all(pg_clean, topic, n), what="duplicate and late rows")
        after = read_table(pg_clean, "price_indicators")
        pd.testing.assert_frame_equal(
            before.sort_values(["coin_id", "ts"]).reset_index(drop=True),
            after.sort_values(["coin_id", "ts"]).reset_index(drop=True),
        )
        assert_coin_market_is_each_coins_newest(pg_clean, head)  # not moved by dup nor late
        n += publish(kafka_bootstrap, topic, tail)
        wait_for(lambda: consumed_all(pg_clean, topic, n), what="second half")
    assert_equal_to_full_recompute(pg_clean, rows)
    assert_coin_market_is_each_coins_newest(pg_clean, rows)


def test_restart_rebuilds_state_from_the_table(kafka_bootstrap, new_topic, pg_clean):
    """A new consumer (fresh process state) continues exactly where the table is."""
    topic = new_topic("live", partitions=2)
    rows = in_poll_order(irregular_rows(seed=9, coins=6, polls=60))
    cut = len(rows) // 3
    for part in (rows[:cut], rows[cut : 2 * cut], rows[2 * cut :]):
        with running_consumer(kafka_bootstrap, topic, pg_clean):
            publish(kafka_bootstrap, topic, part)
            total = rows.index(part[-1]) + 1
            wait_for(lambda total=total: consumed_all(pg_clean, topic, total), what="part")
    assert_equal_to_full_recompute(pg_clean, rows)


def live_process(kafka_bootstrap: str, topic: str, url: str, data_dir) -> subprocess.Popen:
    env = {
        **os.environ,
        "MARKETFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "MARKETFLOW_KAFKA_TOPIC": topic,
        "MARKETFLOW_POSTGRES_URL": url,
        "MARKETFLOW_DATA_DIR": str(data_dir),
        "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    log = open(data_dir / "live.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "marketflow_assets.cli", "live"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


def test_kill_9_mid_stream_then_restart_loses_and_duplicates_nothing(
    kafka_bootstrap, new_topic, pg_clean, data_dir
):
    topic = new_topic("live", partitions=3)
    rows = in_poll_order(irregular_rows(seed=11, coins=40, polls=200))
    proc = live_process(kafka_bootstrap, topic, pg_clean, data_dir)
    try:
        from marketflow_assets_tests.live.live_helpers import producer

        prod = producer(kafka_bootstrap)
        polls = sorted({r[2] for r in rows})
        by_poll: dict = {}
        for r in rows:
            by_poll.setdefault(r[2], []).append(r)
        sent = 0
        killed_at = None
        for i, poll in enumerate(polls):
            sent += publish(kafka_bootstrap, topic, by_poll[poll], prod)
            if i == len(polls) // 3:
                # let it write some batches of every partition (the first one may bring one
                # partition's records only: each partition's start is looked up on its own),
                # then kill it while records keep coming
                wait_for(lambda: len(stored_offsets(pg_clean, topic)) == 3, timeout=90)
            if i == len(polls) // 2:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                killed_at = stored_offsets(pg_clean, topic)
        prod.close()
        assert killed_at and 0 < sum(killed_at.values()) < len(rows)
        # every record before the stored offsets has its row; rows of records past them (a
        # batch whose market data and offsets were not written yet) are skipped when read again
        stored_rows = query(pg_clean, "SELECT count(*) FROM price_indicators")[0][0]
        assert len(rows) > stored_rows >= records_before(kafka_bootstrap, topic, killed_at) > 0
        proc = live_process(kafka_bootstrap, topic, pg_clean, data_dir)
        wait_for(lambda: consumed_all(pg_clean, topic, len(rows)), timeout=120, what="the rest")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    log = (data_dir / "live.log").read_text()
    assert "from offsets" in log
    # the restart resumed from the stored offsets (not from the beginning)
    resumed = [line for line in log.splitlines() if "from offsets" in line][-1]
    assert "beginning" not in resumed, resumed
    # both processes ran with their start-up objects out of the collector's view (runtime/heap)
    assert log.count("start-up objects left out of garbage collection") == 2
    assert log.count("live: Arrow allocates with system") == 2
    assert proc.returncode == 0
    assert_equal_to_full_recompute(pg_clean, rows)
    assert sum(stored_offsets(pg_clean, topic).values()) == len(rows)


def records_before(bootstrap: str, topic: str, offsets: dict[int, int]) -> int:
    """How many records of ``topic`` lie before ``offsets`` (read back from the broker)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in offsets]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        seen = dict.fromkeys(offsets, 0)
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < offsets[tp.partition] for tp in tps):
            assert time.monotonic() < deadline
            for tp, records in consumer.poll(timeout_ms=200).items():
                seen[tp.partition] += sum(r.offset < offsets[tp.partition] for r in records)
        return sum(seen.values())
    finally:
        consumer.close()


def test_the_writer_stores_market_data_once_the_batches_pause():
    """A poll's batches are written back to back; the idle step (market data and offsets) runs
    once they pause for ``quiet`` seconds, not between them; flush runs it at once, close only
    when something was written since."""
    from marketflow_assets.live.consumer import _Writer

    events: list[tuple] = []
    writer = _Writer(
        lambda i: events.append(("write", i, time.monotonic())),
        lambda: events.append(("idle", None, time.monotonic())),
        quiet=0.4,
    )
    try:
        for i in range(4):
            writer.submit(i)
            time.sleep(0.1)
        wait_for(lambda: any(e[0] == "idle" for e in events), timeout=5, what="the idle step")
        kinds = [(kind, i) for kind, i, _ in events]
        assert kinds == [("write", 0), ("write", 1), ("write", 2), ("write", 3), ("idle", None)]
        assert events[-1][2] - events[-2][2] >= 0.4 * 0.9
        writer.submit(4)
        writer.flush()  # the idle step ran before flush returned, without waiting for quiet
        assert [(kind, i) for kind, i, _ in events[-2:]] == [("write", 4), ("idle", None)]
        assert events[-1][2] - events[-2][2] < 0.4
    finally:
        writer.close()
    assert len(events) == 7  # nothing written since the last idle step: close adds none
    writer.check()
