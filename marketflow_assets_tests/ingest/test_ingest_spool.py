"""The ingest write-ahead spool, send retries and acknowledged progress (issue #20), against real
Tansu brokers (private ones where a test kills its broker), real files and a raw Parquet dataset
written with the project's schema."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from marketflow_assets.ingest import command
from marketflow_assets.ingest import delivery as delivery_engine
from marketflow_assets.ingest import spool as spool_mod
from marketflow_assets.ingest.publish import Publisher
from marketflow_assets.ingest.sources import simulate_polls
from marketflow_assets.ingest.spool import (
    Spool,
    line_head,
    parse_polls,
    poll_line,
    prune_polls,
    record_key,
    stop_line,
    ts_micros,
    unwritten_count,
)
from marketflow_assets.ingest.validate import validate_poll
from marketflow_assets.runtime.services import EmbeddedKafka, free_port
from marketflow_assets.settings import load_settings
from marketflow_assets_tests.ingest.conftest import read_topic

START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _replay_lines(polls) -> str:
    return "".join(json.dumps({"ts": ts, "coins": recs}) + "\n" for ts, recs in polls)


def _keys(polls) -> Counter:
    return Counter((r["id"], ts) for ts, recs in polls for r in recs)


@pytest.fixture
def spool_settings(tmp_path, kafka_bootstrap, new_topic):
    """Settings on the session broker with a fresh topic and data dir (no PostgreSQL needed)."""
    return dataclasses.replace(
        load_settings({}),
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic=new_topic("spool"),
        data_dir=tmp_path / "data",
        send_backoff_seconds=0.1,
    )


@pytest.fixture
def private_broker(tmp_path):
    """A Tansu broker of this test alone (on a fixed port, so it can be restarted there)."""
    brokers: list[EmbeddedKafka] = []
    port = free_port()

    def start() -> EmbeddedKafka:
        broker = EmbeddedKafka(tmp_path / f"kafka{len(brokers)}", port=port)
        broker.start()
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        broker.stop()


def _write_raw(raw_dir, rows: list[tuple[str, str, float]]) -> None:
    """One commit to the ``raw_prices`` Delta table holding (id, ts, price)."""
    import pandas as pd

    from marketflow_assets.ingest.validate import parse_time
    from marketflow_assets.raw_dataset import append_frame

    frame = pd.DataFrame(
        [
            {"id": i, "symbol": i[:3], "name": i, "current_price": p, "ts": parse_time(ts)}
            for i, ts, p in rows
        ]
    )
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    append_frame(raw_dir, frame)


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------
def test_spool_lines_round_trip_skip_a_torn_tail_and_prune_by_key():
    a = {"id": "bitcoin", "current_price": 1.0}
    b = {"id": "ethereum", "current_price": 2.0}
    lines = [
        poll_line("2024-05-01T12:00:00.000Z", [a, b]),
        poll_line("2024-05-01T12:00:30.5Z", [a]),
    ]
    torn = poll_line("2024-05-01T12:01:00.000Z", [b])[:-5]  # killed while writing
    polls = parse_polls([*lines, torn])
    assert [(p.ts, [v["id"] for v in p.values]) for p in polls] == [
        ("2024-05-01T12:00:00.000Z", ["bitcoin", "ethereum"]),
        ("2024-05-01T12:00:30.5Z", ["bitcoin"]),
    ]
    # µs exactly (no float rounding), whatever the ISO spelling of the same instant
    assert ts_micros("2024-05-01T12:00:30.5Z") == 1714564830500000
    assert ts_micros("2024-05-01T14:00:30.500+02:00") == 1714564830500000
    written = {record_key("ethereum", "2024-05-01T12:00:00Z"), record_key("bitcoin", polls[1].ts)}
    kept = prune_polls(polls, written)
    assert [(p.ts, [v["id"] for v in p.values]) for p in kept] == [
        ("2024-05-01T12:00:00.000Z", ["bitcoin"])
    ]
    assert line_head(lines[1]) == ("2024-05-01T12:00:30.5Z", 1)
    assert line_head('{"ts": "2024-05-01T12:00:00Z", "coins": []}\n') == (None, None)
    assert parse_polls(['{"ts": "2024-05-01T12:00:00Z", "coins": [{"id": "x"}]}\n'])[0].values
    assert stop_line(3, "/x/spool") == (
        "3 record(s) not yet written to raw Parquet are kept in the spool /x/spool; "
        "replay them with `marketflow ingest --replay-spool`"
    )


def test_spool_setting_defaults_and_off_values(tmp_path):
    base = load_settings({"MARKETFLOW_DATA_DIR": str(tmp_path)})
    assert base.spool_dir == tmp_path / "spool"
    assert (base.spool_reconcile_seconds, base.send_attempts, base.send_backoff_seconds) == (
        60.0,
        5,
        0.5,
    )
    for off in ("off", "none", "0", "false", "OFF"):
        assert load_settings({"MARKETFLOW_SPOOL_DIR": off}).spool_dir is None
    own = load_settings(
        {"MARKETFLOW_SPOOL_DIR": str(tmp_path / "s"), "MARKETFLOW_SEND_ATTEMPTS": "2"}
    )
    assert own.spool_dir == tmp_path / "s" and own.send_attempts == 2
    from marketflow_assets.settings import ConfigError

    with pytest.raises(ConfigError, match="MARKETFLOW_SEND_ATTEMPTS"):
        load_settings({"MARKETFLOW_SEND_ATTEMPTS": "0"})


# --------------------------------------------------------------------------------------------
# Spool before send
# --------------------------------------------------------------------------------------------
def test_each_poll_is_fsynced_to_the_spool_before_it_is_sent(spool_settings, monkeypatch):
    events: list[tuple[str, object]] = []
    real_fsync = spool_mod.os.fsync

    def fsync(fd):
        real_fsync(fd)
        events.append(("fsync", fd))

    class RecordingPublisher(Publisher):
        def publish(self, poll):
            # read the spool from disk, with a file handle of its own, at the moment of sending
            on_disk = Spool(spool_settings.spool_dir, spool_settings.kafka_topic, lock=False)
            events.append(("send", [p.ts for p in on_disk.polls()]))
            return super().publish(poll)

    monkeypatch.setattr(spool_mod.os, "fsync", fsync)
    polls = list(simulate_polls(3, seed=1, start=START, interval_s=30, count=2))
    settings = spool_settings
    publisher = RecordingPublisher(
        settings.kafka_bootstrap, settings.kafka_topic, settings.dlq_topic
    )
    publisher.ensure_topics()
    spool = Spool(settings.spool_dir, settings.kafka_topic)
    delivery = delivery_engine.Delivery(publisher, spool, settings.raw_dir)
    try:
        for ts, records in polls:
            bad = dict(records[0], id="broken", current_price=-1)
            result, durable = delivery.deliver(validate_poll([*records, bad], ts))
            assert result.ok and durable and result.good_acked == 3
    finally:
        publisher.close()
        spool.close()
    sends = [i for i, e in enumerate(events) if e[0] == "send"]
    assert [events[i][1] for i in sends] == [[polls[0][0]], [polls[0][0], polls[1][0]]]
    assert all(events[i - 1][0] == "fsync" for i in sends)  # an fsync right before each send
    # the broker's acknowledgements are marked; the dead letters are kept beside
    assert {k for _, k, _ in spool.acks()} == {r["id"] for r in polls[0][1]}
    assert [d["payload"]["id"] for d in spool.dead_letters()] == ["broken", "broken"]
    assert all("reason" in d for d in spool.dead_letters())
    messages = read_topic(settings.kafka_bootstrap, settings.kafka_topic, expected=6)
    assert Counter((m["key"], m["value"]["ts"]) for m in messages) == _keys(polls)


# --------------------------------------------------------------------------------------------
# Pruning against raw Parquet, and the stop line of `up`
# --------------------------------------------------------------------------------------------
def test_pruning_drops_what_raw_parquet_holds_and_the_stop_line_counts_the_rest(
    spool_settings, capsys
):
    from marketflow_assets.runtime.up import report_spool

    settings = spool_settings
    polls = list(simulate_polls(3, seed=2, start=START, interval_s=30, count=3))
    spool = Spool(settings.spool_dir, settings.kafka_topic)
    try:
        for ts, records in polls:
            validated = validate_poll(records, ts)
            spool.append_poll(ts, validated.good, [])
            spool.ack(ts, validated.good, "topic-1")
        assert unwritten_count(settings.spool_dir, settings.kafka_topic, settings.raw_dir) == 9
        inode = spool.polls_path.stat().st_ino
        assert spool.prune(settings.raw_dir) == (0, 9)  # no raw data yet: nothing goes
        assert spool.polls_path.stat().st_ino == inode  # ... and the file is not rewritten
        # Spark wrote poll 1 and two coins of poll 2 (one of them with a µs-precise ts)
        (ts1, recs1), (ts2, recs2) = polls[0], polls[1]
        written = [(r["id"], ts1, r["current_price"]) for r in recs1]
        written += [(r["id"], ts2, r["current_price"]) for r in recs2[:2]]
        _write_raw(settings.raw_dir, written)
        # a row of the same coin at another ts prunes nothing
        _write_raw(settings.raw_dir, [(recs2[2]["id"], "2024-05-01T12:00:30.001Z", 1.0)])

        assert spool.prune(settings.raw_dir) == (5, 4)
        left = spool.polls()
        assert [(p.ts, [v["id"] for v in p.values]) for p in left] == [
            (ts2, [recs2[2]["id"]]),
            (polls[2][0], [r["id"] for r in polls[2][1]]),
        ]
        assert left[1].values == [m.value for m in validate_poll(polls[2][1], polls[2][0]).good]
        # the ack markers follow the records that are left
        assert sorted((ts, i) for ts, i, _ in spool.acks()) == sorted(
            (p.ts, v["id"]) for p in left for v in p.values
        )
        assert spool.prune(settings.raw_dir) == (0, 4)  # nothing more to drop
    finally:
        spool.close()

    assert report_spool(settings) == 4
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [
        f"4 record(s) not yet written to raw Parquet are kept in the spool {settings.spool_dir}; "
        "replay them with `marketflow ingest --replay-spool`"
    ]
    _write_raw(
        settings.raw_dir, [(v["id"], p.ts, v["current_price"]) for p in left for v in p.values]
    )
    assert report_spool(settings) == 0
    assert capsys.readouterr().out == ""  # nothing kept back: no line
    off = dataclasses.replace(settings, spool="off")
    assert report_spool(off) == 0


# --------------------------------------------------------------------------------------------
# Broker loss: nothing is lost, progress only after acknowledgement
# --------------------------------------------------------------------------------------------
def test_records_survive_a_broker_restart_and_the_resume_file_waits_for_acks(
    tmp_path, private_broker, ingest_args, caplog
):
    broker = private_broker()
    settings = dataclasses.replace(
        load_settings({}),
        kafka_bootstrap=broker.bootstrap,
        kafka_topic="crypto_prices",
        data_dir=tmp_path / "data",
        send_attempts=2,
        send_backoff_seconds=0.1,
    )
    polls = list(simulate_polls(4, seed=3, start=START, interval_s=30, count=4))
    replay = tmp_path / "replay.jsonl"
    replay.write_text(_replay_lines(polls[:3]))
    progress = tmp_path / "progress.json"
    argv = ["--source", "replay", "--replay-file", str(replay), "--resume-file", str(progress)]
    argv += ["--delivery-timeout", "1"]

    # Poll 1 is acknowledged; then the broker dies (with it, the in-memory topic): polls 2 and 3
    # are spooled but never acknowledged, and the resume file stays at line 1.
    def kill_after_line_1():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if progress.exists() and json.loads(progress.read_text())["line"] >= 1:
                broker.proc.kill()
                broker.proc.wait()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_line_1)
    killer.start()
    with caplog.at_level(logging.WARNING):
        # speed 10: 3 s between polls, time enough to kill the broker after line 1
        assert command.run(ingest_args(*argv, "--speed", "10"), settings) == 1
    killer.join()
    assert json.loads(progress.read_text())["line"] == 1
    assert "retrying" in caplog.text  # a failed send is retried before it counts as lost
    spool = Spool(settings.spool_dir, settings.kafka_topic, lock=False)
    assert [p.ts for p in spool.polls()] == [ts for ts, _ in polls[:3]]
    assert unwritten_count(settings.spool_dir, settings.kafka_topic, settings.raw_dir) == 12

    # A new (empty) broker on the same port; the file grew by one line. Ingest restarts: it
    # resends the spool (the topic it finds is a new one) and resumes after line 1.
    private_broker()
    with replay.open("a") as fh:
        fh.write(_replay_lines(polls[3:]))
    assert command.run(ingest_args(*argv, "--speed", "0"), settings) == 0
    assert json.loads(progress.read_text())["line"] == 4
    messages = read_topic(settings.kafka_bootstrap, settings.kafka_topic, expected=16)
    seen = Counter((m["key"], m["value"]["ts"]) for m in messages)
    assert set(seen) == set(_keys(polls))  # every record of every poll: nothing lost
    # poll 1 only from the spool, polls 2-3 from the spool and the resumed replay
    assert sum(seen.values()) == 4 + 2 * 8 + 4


def test_replay_spool_resends_what_raw_parquet_lacks_and_exits(
    tmp_path, private_broker, ingest_args, capsys
):
    broker = private_broker()
    settings = dataclasses.replace(
        load_settings({}),
        kafka_bootstrap=broker.bootstrap,
        kafka_topic="crypto_prices",
        data_dir=tmp_path / "data",
    )
    polls = list(simulate_polls(3, seed=4, start=START, interval_s=30, count=2))
    replay = tmp_path / "replay.jsonl"
    replay.write_text(_replay_lines(polls))
    assert (
        command.run(
            ingest_args("--source", "replay", "--replay-file", str(replay), "--once"), settings
        )
        == 0
    )
    # Spark wrote poll 1; then the broker restarts, empty
    _write_raw(settings.raw_dir, [(r["id"], polls[0][0], r["current_price"]) for r in polls[0][1]])
    broker.stop()
    private_broker()

    assert command.run(ingest_args("--replay-spool"), settings) == 0
    assert "replay-spool: 3 record(s) resent" in capsys.readouterr().out
    messages = read_topic(settings.kafka_bootstrap, settings.kafka_topic, expected=3)
    assert Counter((m["key"], m["value"]["ts"]) for m in messages) == _keys(polls[1:])
    assert unwritten_count(settings.spool_dir, settings.kafka_topic, settings.raw_dir) == 3

    # while an ingest holds the spool, --replay-spool refuses with one line
    from marketflow_assets.settings import ConfigError

    with (
        Spool(settings.spool_dir, settings.kafka_topic),
        pytest.raises(ConfigError, match="in use"),
    ):
        command.run(ingest_args("--replay-spool"), settings)
    with pytest.raises(ConfigError, match="MARKETFLOW_SPOOL_DIR is off"):
        command.run(ingest_args("--replay-spool"), dataclasses.replace(settings, spool="off"))


def test_a_restart_on_the_same_topic_resends_only_what_it_never_acknowledged(
    spool_settings, ingest_args
):
    settings = spool_settings
    polls = list(simulate_polls(3, seed=5, start=START, interval_s=30, count=2))
    spool = Spool(settings.spool_dir, settings.kafka_topic)
    publisher = Publisher(settings.kafka_bootstrap, settings.kafka_topic, settings.dlq_topic)
    publisher.ensure_topics()
    try:
        delivery = delivery_engine.Delivery(publisher, spool, settings.raw_dir)
        result, _ = delivery.deliver(validate_poll(polls[0][1], polls[0][0]))
        assert result.ok
        # poll 2 reached the spool but the process died before sending it
        spool.append_poll(polls[1][0], validate_poll(polls[1][1], polls[1][0]).good, [])
    finally:
        publisher.close()
        spool.close()
    # ingest starts again on the same topic (the broker lived): only poll 2 is sent
    empty = settings.data_dir / "empty.jsonl"
    empty.write_text("")
    assert (
        command.run(ingest_args("--source", "replay", "--replay-file", str(empty)), settings) == 0
    )
    messages = read_topic(settings.kafka_bootstrap, settings.kafka_topic, expected=6)
    assert Counter((m["key"], m["value"]["ts"]) for m in messages) == _keys(polls)  # once each
    # --replay-spool resends every record raw Parquet lacks, acknowledged or not
    assert command.run(ingest_args("--replay-spool"), settings) == 0
    messages = read_topic(settings.kafka_bootstrap, settings.kafka_topic, expected=12)
    assert Counter((m["key"], m["value"]["ts"]) for m in messages) == _keys(polls + polls)


# --------------------------------------------------------------------------------------------
# A multi-page live poll keeps the pages that came
# --------------------------------------------------------------------------------------------
def test_a_live_poll_whose_page_3_fails_publishes_pages_1_and_2(
    httpserver, recorded_page, spool_settings, ingest_args, caplog
):
    from werkzeug import Request, Response

    def handler(request: Request) -> Response:
        per_page, page = int(request.args["per_page"]), int(request.args["page"])
        if page == 3:
            return Response('{"error": "bad gateway"}', status=400)
        rows = []
        for rank in range((page - 1) * per_page + 1, page * per_page + 1):
            row = dict(recorded_page[(rank - 1) % len(recorded_page)])
            row.update(id=f"{row['id']}-{rank}", market_cap_rank=rank)
            rows.append(row)
        return Response(json.dumps(rows), content_type="application/json")

    httpserver.expect_request("/coins/markets").respond_with_handler(handler)
    settings = dataclasses.replace(
        spool_settings,
        coingecko_api_plan="pro",
        coingecko_api_key="CG-test-key",
        coingecko_api_url=httpserver.url_for(""),
    )
    with caplog.at_level(logging.ERROR):
        # incomplete: exit 1, but the 500 coins of pages 1-2 are published and spooled
        assert (
            command.run(ingest_args("--source", "coingecko", "--once", "--coins", "750"), settings)
            == 1
        )
    assert "page 3" in caplog.text and "500 record(s) that came" in caplog.text
    messages = read_topic(settings.kafka_bootstrap, settings.kafka_topic, expected=500)
    assert len(messages) == 500
    assert sorted(m["value"]["market_cap_rank"] for m in messages) == list(range(1, 501))
    spooled = Spool(settings.spool_dir, settings.kafka_topic, lock=False).polls()
    assert [len(p.values) for p in spooled] == [500]


def test_fetch_markets_partial_returns_the_pages_before_the_failure(httpserver, recorded_page):
    from werkzeug import Request, Response

    from marketflow_assets.ingest.coingecko import CoinGeckoClient, CoinGeckoError

    def handler(request: Request) -> Response:
        per_page, page = int(request.args["per_page"]), int(request.args["page"])
        if page == 2:
            return Response("no such page", status=404)
        rows = [
            dict(recorded_page[rank % len(recorded_page)], id=f"coin-{rank}")
            for rank in range((page - 1) * per_page + 1, page * per_page + 1)
        ]
        return Response(json.dumps(rows), content_type="application/json")

    httpserver.expect_request("/coins/markets").respond_with_handler(handler)
    client = CoinGeckoClient(httpserver.url_for(""), backoff_base=0.01)
    records, error = client.fetch_markets_partial(600)  # 3 pages of 200
    assert isinstance(error, CoinGeckoError) and "404" in str(error)
    assert [r["id"] for r in records] == [f"coin-{rank}" for rank in range(1, 201)]
    assert [int(req.args["page"]) for req, _ in httpserver.log] == [1, 2]  # page 3 not asked
    with pytest.raises(CoinGeckoError, match="404"):
        client.fetch_markets(600)


# --------------------------------------------------------------------------------------------
# The broker restarts under a running ingest, and under `up` after a replay has finished
# --------------------------------------------------------------------------------------------
def test_a_running_ingest_resends_its_spool_when_the_broker_lost_the_topic(
    tmp_path, private_broker
):
    broker = private_broker()
    topic = "crypto_prices"
    polls = list(simulate_polls(3, seed=6, start=START, interval_s=30, count=2))
    spool = Spool(tmp_path / "spool", topic)
    publisher = Publisher(
        broker.bootstrap,
        topic,
        topic + "_dlq",
        delivery_timeout_s=2,
        connect_timeout_s=2,
        send_attempts=5,
        send_backoff_s=0.2,
    )
    try:
        publisher.ensure_topics()
        delivery = delivery_engine.Delivery(publisher, spool, tmp_path / "raw_prices")
        first_topic_id = delivery.topic_id
        assert first_topic_id is not None  # Tansu reports topic ids
        assert delivery.deliver(validate_poll(polls[0][1], polls[0][0]))[0].ok
        assert delivery.tick() == (0, 0)  # nothing due, nothing lost

        broker.proc.kill()  # the in-memory topic and poll 1 with it
        broker.proc.wait()
        private_broker()
        result, _ = delivery.deliver(validate_poll(polls[1][1], polls[1][0]))
        assert result.ok  # retried: a new producer, the topic created again
        assert publisher.topic_id() not in (None, first_topic_id)
        assert delivery.tick() == (3, 0)  # poll 1 resent at once, poll 2 not twice
    finally:
        publisher.close()
        spool.close()
    messages = read_topic(broker.bootstrap, topic, expected=6)
    assert Counter((m["key"], m["value"]["ts"]) for m in messages) == _keys(polls)


def test_up_replays_the_spool_of_a_finished_replay_after_a_broker_restart(
    tmp_path, private_broker, ingest_args
):
    from marketflow_assets.runtime.supervisor import Child, Supervisor, stop_child
    from marketflow_assets.runtime.up import REPO_ROOT, _watch_broker
    from marketflow_assets.settings import child_environment

    broker = private_broker()
    settings = dataclasses.replace(
        load_settings({}),
        kafka_bootstrap=broker.bootstrap,
        kafka_topic="crypto_prices",
        data_dir=tmp_path / "data",
    )
    polls = list(simulate_polls(3, seed=7, start=START, interval_s=30, count=2))
    replay = tmp_path / "replay.jsonl"
    replay.write_text(_replay_lines(polls))
    assert (
        command.run(
            ingest_args("--source", "replay", "--replay-file", str(replay), "--once"), settings
        )
        == 0
    )

    env = child_environment(
        overrides={
            "MARKETFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
            "MARKETFLOW_KAFKA_TOPIC": settings.kafka_topic,
            "MARKETFLOW_DATA_DIR": str(settings.data_dir),
        }
    )
    ingest = Child("ingest", ["true"], tmp_path / "ingest.log", finished=True)  # replay done
    supervisor = Supervisor([ingest], env, cwd=REPO_ROOT)
    broker.proc.kill()
    broker.proc.wait()
    try:
        assert _watch_broker(broker, supervisor, [], settings) is None
        replayer = next(c for c in supervisor.children if c.name == "spool-replay")
        assert replayer.proc.wait(120) == 0, (tmp_path / "data/logs/ingest.log").read_text()
        messages = read_topic(broker.bootstrap, settings.kafka_topic, expected=6)
        assert Counter((m["key"], m["value"]["ts"]) for m in messages) == _keys(polls)
    finally:
        for child in supervisor.children:
            stop_child(child)  # the broker goes with the fixture


@pytest.mark.slow  # over 10 s: left out of `make test-fast`
def test_a_failed_send_is_retried_with_exponential_backoff_then_counted_lost(
    tmp_path, private_broker
):
    broker = private_broker()
    polls = list(simulate_polls(2, seed=8, start=START, interval_s=30, count=3))
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        time.sleep(seconds)

    publisher = Publisher(
        broker.bootstrap,
        "crypto_prices",
        "crypto_prices_dlq",
        delivery_timeout_s=1,
        connect_timeout_s=1,
        send_attempts=4,
        send_backoff_s=0.1,
        sleep=sleep,
    )
    try:
        publisher.ensure_topics()
        assert publisher.publish(validate_poll(polls[0][1], polls[0][0])).ok
        assert delays == []  # acknowledged at the first attempt
        broker.proc.kill()
        broker.proc.wait()
        for ts, records in polls[1:]:  # the next poll too: the producer is still usable
            result = publisher.publish(validate_poll(records, ts))
            assert (result.good_acked, len(result.failures)) == (0, 2)
            assert all("crypto_prices key=" in f for f in result.failures)
        assert delays == [0.1, 0.2, 0.4] * 2  # 4 attempts, backoff doubling from 0.1 s
        private_broker()  # the broker is back (empty): the next attempt reconnects
        delays.clear()
        result = publisher.publish(validate_poll(polls[2][1], polls[2][0]))
        assert result.ok and result.good_acked == 2 and len(delays) >= 1
    finally:
        publisher.close()


def _publisher(broker, partitions: int) -> Publisher:
    """Ingest's publisher of topic ``prices`` on ``broker``: four attempts, 0.2 s backoff."""
    return Publisher(
        broker.bootstrap, "prices", "prices_dlq", partitions=partitions, connect_timeout_s=2,
        send_attempts=4, send_backoff_s=0.2,
    )  # fmt: skip


def _topics_made_again(private_broker, broker, partitions: dict[str, int]) -> None:
    """``broker`` killed and an empty one started on its port, where someone else makes the
    topics again (name -> partitions) behind ingest's back."""
    from kafka.admin import NewTopic

    from marketflow_assets import kafka_client

    broker.proc.kill()
    broker.proc.wait()
    broker = private_broker()
    admin = kafka_client.admin(broker.bootstrap)
    admin.create_topics([NewTopic(name, n, 1) for name, n in partitions.items()])
    admin.close()


def test_a_topic_the_broker_recreated_with_other_partitions_is_said_and_resent(
    tmp_path, private_broker, caplog
):
    """librdkafka names its topics in metadata requests; a broker that ignores
    allow.auto.create.topics (Tansu) may then re-create a lost topic with its own partition
    count before ingest does. Ingest says so, sends on, and flags the topic as reset (the spool
    is resent); acks carry the topic id noted before the send."""
    broker = private_broker()
    polls = list(simulate_polls(3, seed=9, start=START, interval_s=30, count=2))
    publisher = _publisher(broker, partitions=3)
    try:
        publisher.ensure_topics()
        first = publisher.publish(validate_poll(polls[0][1], polls[0][0]))
        assert first.ok and first.topic_id == publisher.topic_id() is not None
        # as Tansu's own auto-creation would: 4 partitions
        _topics_made_again(private_broker, broker, {"prices": 4, "prices_dlq": 3})
        with caplog.at_level(logging.WARNING, logger="marketflow_assets.ingest.publish"):
            second = publisher.publish(validate_poll(polls[1][1], polls[1][0]))
        assert second.ok and second.good_acked == 3
        assert "now has 4 partition(s), not 3" in caplog.text
        assert publisher.topic_reset
        assert second.topic_id not in (None, first.topic_id)  # the new topic's acks
    finally:
        publisher.close()


def test_acknowledged_offsets_that_go_back_flag_the_topic_as_reset(
    tmp_path, private_broker, caplog
):
    """A broker that lost the topic and has it again with as many partitions (made by someone
    else) acknowledges the next poll at offsets below those of the polls before: ingest says
    so and flags the topic as reset (the spool is resent), whatever the topic id says."""
    broker = private_broker()
    polls = list(simulate_polls(40, seed=9, start=START, interval_s=30, count=4))
    publisher = _publisher(broker, partitions=2)
    try:
        publisher.ensure_topics()
        for ts, records in polls[:3]:  # 60 records a partition, give or take
            assert publisher.publish(validate_poll(records, ts)).ok
        assert not publisher.topic_reset
        # the topic made again as it was, by someone else
        _topics_made_again(private_broker, broker, {"prices": 2, "prices_dlq": 2})
        with caplog.at_level(logging.WARNING, logger="marketflow_assets.ingest.publish"):
            fourth = publisher.publish(validate_poll(polls[3][1], polls[3][0]))
        assert fourth.ok and fourth.good_acked == 40
        assert publisher.topic_reset
        assert "the broker lost the topic (restarted?)" in caplog.text
        assert "Kafka acknowledged offset 0 on prices[" in caplog.text
    finally:
        publisher.close()


def test_a_new_producer_has_its_producer_id_before_the_first_poll_is_sent(private_broker):
    """librdkafka asks for an idempotent producer's id only after its first connection and on a
    500 ms timer (0.5-1 s against Tansu); a message produced meanwhile spends that wait out of
    its delivery timeout (a first poll timed out in CI). The publisher waits for the id when it
    makes a producer, so even a 0.3 s delivery timeout holds for the very first poll."""
    broker = private_broker()
    polls = list(simulate_polls(3, seed=2, start=START, interval_s=30, count=1))
    publisher = Publisher(
        broker.bootstrap, "prices", "prices_dlq", delivery_timeout_s=0.3, connect_timeout_s=5
    )
    try:
        assert publisher.producer_ready  # the id came before any message was produced
        publisher.ensure_topics()
        result = publisher.publish(validate_poll(polls[0][1], polls[0][0]))
        assert result.ok and result.good_acked == 3
        publisher.reconnect()  # a new producer (as after a broker outage): the same
        assert publisher.producer_ready
        assert publisher.publish(validate_poll(polls[0][1], polls[0][0])).ok
    finally:
        publisher.close()
