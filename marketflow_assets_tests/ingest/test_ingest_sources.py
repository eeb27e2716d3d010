"""Sources: fixed-cadence ticker, replay files, the recorder and the seeded simulator."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from marketflow_assets.ingest.coingecko import CoinGeckoClient
from marketflow_assets.ingest.sources import (
    COINS,
    LiveSource,
    MarketSimulator,
    ReplayRecorder,
    ReplaySource,
    SimulateSource,
    read_replay,
    simulate_polls,
    ticker,
)
from marketflow_assets.ingest.validate import parse_time, validate_poll

START = datetime(2024, 1, 1, tzinfo=UTC)


def test_ticker_keeps_a_fixed_cadence_despite_work_time():
    stop = threading.Event()
    starts = []
    for k in ticker(0.2, stop, max_polls=4):
        starts.append(time.monotonic())
        time.sleep(0.08 if k % 2 == 0 else 0.02)  # work of varying length
    offsets = [s - starts[0] for s in starts]
    for k, offset in enumerate(offsets):
        assert offset == pytest.approx(0.2 * k, abs=0.05)  # start + k*interval, no drift


def test_ticker_skips_ticks_that_an_overrunning_poll_missed(caplog):
    stop = threading.Event()
    seen = []
    clock = [0.0]  # the ticker's monotonic clock, moved by the "work" below (not by load)
    for k in ticker(0.1, stop, max_polls=3, monotonic=lambda: clock[0]):
        seen.append(k)
        if k == 0:
            clock[0] = 0.25  # the poll overran ticks 1 and 2
    assert seen == [0, 3, 4]
    assert "skipping 2 tick(s)" in caplog.text


def test_ticker_stops_promptly_on_stop():
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    assert list(ticker(5.0, stop)) == [0]
    assert time.monotonic() - started < 1.0


def test_simulator_is_reproducible_by_seed():
    a = list(simulate_polls(60, seed=7, start=START, interval_s=30, count=20))
    b = list(simulate_polls(60, seed=7, start=START, interval_s=30, count=20))
    c = list(simulate_polls(60, seed=8, start=START, interval_s=30, count=20))
    assert a == b
    assert [r["current_price"] for r in a[-1][1]] != [r["current_price"] for r in c[-1][1]]


def test_simulated_polls_have_the_coingecko_shape_and_validate():
    polls = list(simulate_polls(55, seed=1, start=START, interval_s=30, count=10))
    assert [ts for ts, _ in polls][:2] == ["2024-01-01T00:00:00.000Z", "2024-01-01T00:00:30.000Z"]
    for ts, records in polls:
        validated = validate_poll(records, ts)
        assert len(validated.good) == 55 and validated.bad == []
        assert [r["market_cap_rank"] for r in records] == list(range(1, 56))
        caps = [r["market_cap"] for r in records]
        assert caps == sorted(caps, reverse=True)  # ordered by market cap like CoinGecko
        for r in records:
            assert r["low_24h"] <= r["current_price"] <= r["high_24h"]
            assert parse_time(r["last_updated"]) <= parse_time(ts)
    ids = {r["id"] for r in polls[0][1]}
    assert {"bitcoin", "ethereum", "tether", "simcoin-55"} <= ids
    btc = next(r for r in polls[0][1] if r["id"] == "bitcoin")
    assert btc["symbol"] == "btc" and 50_000 < btc["current_price"] < 200_000


def test_simulated_prices_follow_the_declared_dynamics():
    # 2 days of 30 s steps: risky coins move with roughly their annual volatility,
    # stablecoins stay pinned to 1 USD.
    sim = MarketSimulator(len(COINS), seed=3, interval_s=30)
    ids = sim.ids
    prices = []
    for _ in range(5760):
        sim._advance()
        prices.append(sim.price.copy())
    prices = np.array(prices)
    log_ret = np.diff(np.log(prices), axis=0)
    btc = ids.index("bitcoin")
    annual = log_ret[:, btc].std() * np.sqrt(365.25 * 86400 / 30)
    assert 0.4 < annual < 0.9  # declared 0.55, plus jumps
    usdt = ids.index("tether")
    assert np.all(np.abs(prices[:, usdt] - 1.0) < 0.01)
    assert np.all(prices > 0)


def test_replay_roundtrip_with_recorder(tmp_path, recorded_page):
    path = tmp_path / "replay.jsonl"
    recorder = ReplayRecorder(path)
    recorder.append("2023-03-15T09:50:00.000Z", recorded_page)
    recorder.append("2023-03-15T09:50:30.000Z", recorded_page[:3])
    recorder.close()
    polls = list(read_replay(path))
    assert [(p.ts, len(p.records)) for p in polls] == [
        ("2023-03-15T09:50:00.000Z", 9),
        ("2023-03-15T09:50:30.000Z", 3),
    ]
    assert polls[0].records == recorded_page
    # append mode: a second recorder adds lines
    ReplayRecorder(path).append("2023-03-15T09:51:00Z", [])
    assert len(path.read_text().splitlines()) == 3


def test_replay_bad_lines_become_failed_polls(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"ts": "2024-01-01T00:00:00Z", "coins": []}\n'
        "not json\n"
        '{"ts": "later", "coins": []}\n'
        "\n"
        '{"ts": "2024-01-01T00:00:30Z"}\n'
    )
    polls = list(read_replay(path))
    assert [p.records is None for p in polls] == [False, True, True, True]
    assert "line 2" in polls[1].error and "invalid JSON" in polls[1].error
    assert "line 3" in polls[2].error
    assert "line 5" in polls[3].error


def _write_replay(path, n_polls, gap_s, coins=2):
    with path.open("w") as fh:
        for ts, records in simulate_polls(coins, 1, START, gap_s, n_polls):
            fh.write(json.dumps({"ts": ts, "coins": records}) + "\n")


def test_replay_speed_scales_real_time(tmp_path):
    path = tmp_path / "r.jsonl"
    _write_replay(path, n_polls=3, gap_s=10)  # 20 s of recorded time
    stop = threading.Event()
    started = time.monotonic()
    polls = list(ReplaySource(path, speed=40).polls(stop))  # 20 s / 40 = 0.5 s
    elapsed = time.monotonic() - started
    assert len(polls) == 3
    assert 0.45 <= elapsed < 1.5
    started = time.monotonic()
    assert len(list(ReplaySource(path, speed=0).polls(stop))) == 3
    assert time.monotonic() - started < 0.3


def test_live_source_failed_poll_is_reported_not_raised(httpserver, recorded_page, tmp_path):
    httpserver.expect_ordered_request("/coins/markets").respond_with_data("", status=500)
    httpserver.expect_ordered_request("/coins/markets").respond_with_json(recorded_page)
    client = CoinGeckoClient(httpserver.url_for(""), max_attempts=1)
    recorder = ReplayRecorder(tmp_path / "rec.jsonl")
    source = LiveSource(client, n_coins=9, interval_s=0.2, recorder=recorder)
    polls = list(source.polls(threading.Event(), max_polls=2))
    recorder.close()
    assert polls[0].records is None and "HTTP 500" in polls[0].error
    assert polls[1].records == recorded_page
    (line,) = (tmp_path / "rec.jsonl").read_text().splitlines()  # only the good poll recorded
    assert json.loads(line) == {"ts": polls[1].ts, "coins": recorded_page}
    gap = parse_time(polls[1].ts) - parse_time(polls[0].ts)
    assert timedelta(seconds=0.15) < gap < timedelta(seconds=0.35)


def test_simulate_source_uses_wall_clock_ts_and_seeded_prices():
    clock_times = iter([START, START + timedelta(seconds=30)])
    source = SimulateSource(n_coins=5, seed=11, interval_s=0.05, clock=lambda: next(clock_times))
    polls = list(source.polls(threading.Event(), max_polls=2))
    assert [p.ts for p in polls] == ["2024-01-01T00:00:00.000Z", "2024-01-01T00:00:30.000Z"]
    # the price path depends on seed and step count only, not on timing
    expected = list(simulate_polls(5, 11, START, 0.05, 2))
    for poll, (_, records) in zip(polls, expected, strict=True):
        assert [r["current_price"] for r in poll.records] == [r["current_price"] for r in records]
