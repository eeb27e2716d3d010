"""End to end: `marketflow ingest` into the embedded Tansu broker, topics read back."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest

from marketflow_assets import contract
from marketflow_assets.ingest import command
from marketflow_assets.ingest.publish import Publisher
from marketflow_assets.ingest.sources import simulate_polls
from marketflow_assets.settings import ConfigError

MARKETS = "/coins/markets"
START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def page_with_invalid_records(recorded_page):
    """The recorded real page plus invalid records (a numeric string is not a number either)."""
    page = copy.deepcopy(recorded_page)
    invalid = [
        dict(
            recorded_page[1],
            id="numeric-string-coin",
            symbol="nsc",
            current_price=str(recorded_page[1]["current_price"]),
        ),
        dict(recorded_page[0], id="bad-price-coin", symbol="bpc", current_price=-1),
        {k: v for k, v in recorded_page[2].items() if k != "id"},
        dict(recorded_page[3], id="bad-time-coin", symbol="btc2", last_updated="not a time"),
        dict(recorded_page[4], id="text-price-coin", symbol="tpc", current_price="n/a"),
    ]
    return page, invalid


def assert_valid_exactly_once(messages, expected_records, ts=None):
    by_key = Counter(m["key"] for m in messages)
    assert by_key == Counter(r["id"] for r in expected_records), "each valid coin exactly once"
    originals = {r["id"]: r for r in expected_records}
    tss = {m["value"]["ts"] for m in messages}
    assert len(tss) == 1, "one ts per poll"
    if ts is not None:
        assert tss == {ts}
    for m in messages:
        value = m["value"]
        assert m["key"] == value["id"]
        assert value["schema_version"] == 1
        original = originals[value["id"]]
        assert value["symbol"] == original["symbol"]
        assert value["last_updated"] == original["last_updated"]
        assert value["current_price"] == pytest.approx(float(original["current_price"]))
        assert value["max_supply"] == original["max_supply"]  # nulls survive


def test_live_once_end_to_end(httpserver, recorded_page, settings, ingest_args, topic_reader):
    page, invalid = page_with_invalid_records(recorded_page)
    httpserver.expect_oneshot_request(MARKETS).respond_with_data(
        "slow down", status=429, headers={"Retry-After": "1"}
    )
    httpserver.expect_request(MARKETS).respond_with_json(page + invalid)
    settings = dataclasses.replace(settings, coingecko_api_url=httpserver.url_for(""))

    rc = command.run(ingest_args("--source", "coingecko", "--once"), settings)

    assert rc == 0
    assert len(httpserver.log) == 2  # the 429, then the page
    messages = topic_reader(settings.kafka_topic, expected=len(page))
    assert_valid_exactly_once(messages, page)
    dead = topic_reader(settings.dlq_topic, expected=len(invalid))
    assert len(dead) == len(invalid)
    assert sorted(json.dumps(d["value"]["payload"], sort_keys=True) for d in dead) == sorted(
        json.dumps(r, sort_keys=True) for r in invalid
    )
    reasons = {d["key"]: d["value"]["reason"] for d in dead}
    assert reasons == {
        "numeric-string-coin": contract.INVALID_PRICE,
        "bad-price-coin": contract.NON_POSITIVE_PRICE,
        None: contract.MISSING_ID,
        "bad-time-coin": contract.INVALID_FIELD,
        "text-price-coin": contract.INVALID_PRICE,
    }
    details = {d["key"]: d["value"]["detail"] for d in dead}
    assert "last_updated" in details["bad-time-coin"]
    assert all(d["value"]["ts"] == messages[0]["value"]["ts"] for d in dead)


def test_once_exits_1_when_the_poll_fails(httpserver, settings, ingest_args, caplog):
    httpserver.expect_request(MARKETS).respond_with_json({"status": {"error_code": 10005}})
    settings = dataclasses.replace(settings, coingecko_api_url=httpserver.url_for(""))
    assert command.run(ingest_args("--source", "coingecko", "--once"), settings) == 1
    assert "failed and was skipped" in caplog.text


@pytest.mark.slow  # over 10 s: left out of `make test-fast`
def test_failed_poll_is_skipped_and_the_loop_goes_on(
    httpserver, recorded_page, settings, ingest_args, topic_reader, caplog
):
    httpserver.expect_ordered_request(MARKETS).respond_with_json(recorded_page)
    httpserver.expect_ordered_request(MARKETS).respond_with_json({"error": "maintenance"})
    httpserver.expect_ordered_request(MARKETS).respond_with_json(recorded_page[:5])
    settings = dataclasses.replace(settings, coingecko_api_url=httpserver.url_for(""))
    args = ingest_args("--source", "coingecko", "--interval", "0.4", "--max-polls", "3")

    with caplog.at_level(logging.INFO, logger="marketflow_assets"):
        rc = command.run(args, settings)

    assert rc == 1  # a finite run with a failed poll reports it
    assert "9 good, 0 bad" in caplog.text and "5 good, 0 bad" in caplog.text
    messages = topic_reader(settings.kafka_topic, expected=14)
    assert len(messages) == 14
    by_ts: dict[str, list[str]] = {}
    for m in messages:
        by_ts.setdefault(m["value"]["ts"], []).append(m["key"])
    assert sorted(len(v) for v in by_ts.values()) == [5, 9]
    assert all(len(set(v)) == len(v) for v in by_ts.values())


def test_replay_of_k_records_publishes_exactly_k(tmp_path, settings, ingest_args, topic_reader):
    polls = list(simulate_polls(7, seed=3, start=START, interval_s=30, count=4))
    path = tmp_path / "replay.jsonl"
    path.write_text("".join(json.dumps({"ts": ts, "coins": recs}) + "\n" for ts, recs in polls))
    k = sum(len(recs) for _, recs in polls)

    args = ingest_args("--source", "replay", "--replay-file", str(path), "--speed", "0")
    assert command.run(args, settings) == 0

    messages = topic_reader(settings.kafka_topic, expected=k)
    assert len(messages) == k
    assert Counter((m["key"], m["value"]["ts"]) for m in messages) == Counter(
        (r["id"], ts) for ts, recs in polls for r in recs
    )  # every (coin, recorded ts) exactly once
    assert topic_reader(settings.dlq_topic, expected=0, timeout=0.5, settle=0.5) == []


def test_replay_once_ignores_speed_and_reports_bad_lines(
    tmp_path, settings, ingest_args, topic_reader, caplog
):
    (ts0, recs0), (ts1, recs1) = simulate_polls(3, 1, START, 3600, 2)  # an hour apart
    path = tmp_path / "replay.jsonl"
    path.write_text(
        json.dumps({"ts": ts0, "coins": recs0})
        + "\n{truncated\n"
        + json.dumps({"ts": ts1, "coins": recs1})
        + "\n"
    )
    started = time.monotonic()
    rc = command.run(
        ingest_args("--source", "replay", "--replay-file", str(path), "--once"), settings
    )
    assert time.monotonic() - started < 10  # --once does not wait an hour of recorded time
    assert rc == 1  # the unreadable line is a failure of this finite run
    assert "replay line 2" in caplog.text
    assert len(topic_reader(settings.kafka_topic, expected=6)) == 6


def test_simulate_is_reproducible_by_seed_through_kafka(
    settings, new_topic, ingest_args, topic_reader
):
    runs = []
    for _ in range(2):
        s = dataclasses.replace(settings, kafka_topic=new_topic("sim"))
        args = ingest_args("--source", "simulate", "--once", "--coins", "45", "--seed", "5")
        assert command.run(args, s) == 0
        messages = topic_reader(s.kafka_topic, expected=45)
        assert len(messages) == 45
        runs.append({m["key"]: m["value"]["current_price"] for m in messages})
    assert runs[0] == runs[1]
    assert "bitcoin" in runs[0] and "simcoin-45" in runs[0]


def test_topics_are_created_with_the_configured_partitions(settings, ingest_args, topic_reader):
    from kafka import KafkaConsumer

    settings = dataclasses.replace(settings, kafka_topic=f"fresh_{uuid.uuid4().hex[:8]}")
    args = ingest_args(
        "--source",
        "simulate",
        "--coins",
        "12",
        "--interval",
        "0.2",
        "--max-polls",
        "3",
        "--partitions",
        "3",
    )
    assert command.run(args, settings) == 0
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    try:
        assert len(consumer.partitions_for_topic(settings.kafka_topic)) == 3
        assert len(consumer.partitions_for_topic(settings.dlq_topic)) == 3
    finally:
        consumer.close()
    messages = topic_reader(settings.kafka_topic, expected=36)
    assert len(messages) == 36
    partitions_by_key: dict[str, set[int]] = {}
    for m in messages:
        partitions_by_key.setdefault(m["key"], set()).add(m["partition"])
    assert all(len(p) == 1 for p in partitions_by_key.values())  # keyed: one partition per coin
    assert len({p for ps in partitions_by_key.values() for p in ps}) > 1
    assert len({m["value"]["ts"] for m in messages}) == 3


def test_config_errors(settings, ingest_args, tmp_path):
    no_broker = dataclasses.replace(settings, kafka_bootstrap=None)
    with pytest.raises(ConfigError, match="MARKETFLOW_KAFKA_BOOTSTRAP"):
        command.run(ingest_args("--source", "simulate", "--once"), no_broker)
    with pytest.raises(ConfigError, match="--replay-file"):
        command.run(ingest_args("--source", "replay"), settings)
    with pytest.raises(ConfigError, match="no such file"):
        command.run(
            ingest_args("--source", "replay", "--replay-file", str(tmp_path / "x")), settings
        )
    with pytest.raises(ConfigError, match="--interval"):
        command.run(ingest_args("--interval", "0"), settings)


def test_unreachable_broker_is_a_config_error():
    with pytest.raises(ConfigError, match="unreachable.*MARKETFLOW_KAFKA_BOOTSTRAP"):
        Publisher("127.0.0.1:9", "t", "t_dlq", connect_timeout_s=1.0)


# --------------------------------------------------------------------------------------------
# Through the console entry point, as the outside check runs it.
# --------------------------------------------------------------------------------------------
def _ingest_command() -> list[str]:
    """``python -m marketflow_assets.cli ingest`` (the ``marketflow`` console script's module);
    while the CLI cannot be imported yet (other stages still landing), the ingest module's own
    entry point, which runs the same ``command.run``."""
    try:
        from marketflow_assets.cli import build_parser

        build_parser()
    except ImportError:
        return [sys.executable, "-m", "marketflow_assets.ingest"]
    return [sys.executable, "-m", "marketflow_assets.cli", "ingest"]


def _cli_env(tmp_path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETFLOW_", "COINGECKO_"))}
    env.update(MARKETFLOW_DATA_DIR=str(tmp_path / "data"), **extra)
    return env


def test_cli_ingest_once_against_a_rate_limiting_server(
    httpserver, recorded_page, kafka_bootstrap, new_topic, topic_reader, tmp_path
):
    page, invalid = page_with_invalid_records(recorded_page)
    httpserver.expect_oneshot_request(MARKETS).respond_with_data(
        "", status=429, headers={"Retry-After": "1"}
    )
    httpserver.expect_request(MARKETS).respond_with_json(page + invalid)
    topic = new_topic("crypto_prices")
    env = _cli_env(
        tmp_path,
        COINGECKO_API_URL=httpserver.url_for(""),
        MARKETFLOW_KAFKA_BOOTSTRAP=kafka_bootstrap,
        MARKETFLOW_KAFKA_TOPIC=topic,
    )
    proc = subprocess.run(
        [
            *_ingest_command(),
            "--source",
            "coingecko",
            "--once",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert_valid_exactly_once(topic_reader(topic, expected=len(page)), page)
    assert len(topic_reader(topic + "_dlq", expected=len(invalid))) == len(invalid)
    assert "HTTP 429" in proc.stderr  # the retry was logged


def test_cli_ingest_without_bootstrap_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [*_ingest_command(), "--source", "simulate", "--once"],
        env=_cli_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "MARKETFLOW_KAFKA_BOOTSTRAP" in lines[0]


def test_sigterm_stops_an_endless_run_cleanly(kafka_bootstrap, new_topic, topic_reader, tmp_path):
    topic = new_topic("crypto_prices")
    env = _cli_env(
        tmp_path, MARKETFLOW_KAFKA_BOOTSTRAP=kafka_bootstrap, MARKETFLOW_KAFKA_TOPIC=topic
    )
    proc = subprocess.Popen(
        [
            *_ingest_command(),
            "--source",
            "simulate",
            "--coins",
            "4",
            "--interval",
            "0.3",
        ],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        messages = topic_reader(topic, expected=8, timeout=30, settle=0)
        assert len(messages) >= 8  # at least two polls made it
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "stopping after the current poll" in stderr


@pytest.mark.slow  # over 10 s: left out of `make test-fast`
def test_a_cached_answer_is_published_again_with_the_new_ts(
    httpserver, recorded_page, settings, ingest_args, topic_reader, caplog
):
    httpserver.expect_request(MARKETS).respond_with_json(recorded_page)  # same answer twice
    settings = dataclasses.replace(settings, coingecko_api_url=httpserver.url_for(""))
    args = ingest_args("--source", "coingecko", "--interval", "0.3", "--max-polls", "2")
    with caplog.at_level(logging.INFO, logger="marketflow_assets"):
        assert command.run(args, settings) == 0
    assert "same data as the previous poll" in caplog.text
    messages = topic_reader(settings.kafka_topic, expected=18)
    assert len(messages) == 18
    assert len({m["value"]["ts"] for m in messages}) == 2


def test_an_acknowledged_poll_says_how_long_ingest_took_and_since_its_ts(
    tmp_path, settings, ingest_args, topic_reader, caplog, monkeypatch
):
    """The acknowledgement line counts validation, spool and publish ("after it was taken") and,
    for a poll taken just now, the seconds since its ``ts`` (the source's time too), then each
    step's seconds; the latency benchmark reads them from it. A replayed poll (an old ``ts``)
    gets no age."""
    from benchmarks.latency import ingest_steps, publish_times
    from marketflow_assets.ingest import collector

    validate = collector.validate_poll

    def slow_validate(*args, **kwargs):  # validation is part of what ingest takes
        time.sleep(0.4)
        return validate(*args, **kwargs)

    monkeypatch.setattr(collector, "validate_poll", slow_validate)
    caplog.set_level(logging.INFO)
    args = ingest_args("--source", "simulate", "--once", "--coins", "20", "--seed", "2")
    before = time.time()
    assert command.run(args, settings) == 0
    after = time.time()
    log = tmp_path / "ingest.log"
    log.write_text(caplog.text)
    taken, since_ts = publish_times(log), publish_times(log, since_ts=True)
    assert len(taken) == len(since_ts) == 1, caplog.text
    (ts, took), age = next(iter(taken.items())), since_ts[next(iter(taken))]
    assert 0.4 <= took <= age <= after - ts.timestamp() + 0.01
    assert ts.timestamp() >= before - 0.01
    steps = {name: seconds for name, (seconds,) in ingest_steps(log).items()}
    assert list(steps) == ["validate", "spool", "queue", "publish"], caplog.text
    assert steps["validate"] >= 0.4 > steps["spool"] + steps["queue"] + steps["publish"]
    assert abs(sum(steps.values()) - took) <= 0.03  # the steps add up (two-decimal rounding)

    caplog.clear()
    polls = list(simulate_polls(5, seed=3, start=START, interval_s=30, count=1))
    path = tmp_path / "replay.jsonl"
    path.write_text("".join(json.dumps({"ts": t, "coins": recs}) + "\n" for t, recs in polls))
    replay = ingest_args("--source", "replay", "--replay-file", str(path), "--once")
    assert (
        command.run(replay, dataclasses.replace(settings, kafka_topic=f"r{uuid.uuid4().hex}")) == 0
    )
    log.write_text(caplog.text)
    assert len(publish_times(log)) == 1 and publish_times(log, since_ts=True) == {}
