"""Quality checks on price_indicators: pass on the pipeline's own output, fail on crafted rows."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg2
import pytest

from marketflow_assets.defs.common.outcome import Window
from marketflow_assets.defs.indicators import checks as pi
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets_tests.defs.checks_data import (
    create_tables,
    execute,
    good_tables,
    insert,
    load_good_tables,
    make_raw,
    run_checks,
    write_raw,
)

CHECKS = dg.AssetSelection.checks(*pi.CHECKS)
NAMES = [f"price_indicators:{c.check_key.name}" for c in pi.CHECKS]


def test_all_pass_on_good_data(resources, pg_clean, now):
    load_good_tables(pg_clean, make_raw(now))
    evaluations = run_checks(resources, CHECKS)
    assert sorted(evaluations) == sorted(NAMES)
    failed = {k: e.description for k, e in evaluations.items() if not e.passed}
    assert failed == {}
    assert evaluations["price_indicators:sma_within_window_range"].metadata["rows"].value == 8 * 24


@pytest.mark.parametrize("bad_price", [0.0, -3.5, float("nan")])
def test_non_positive_price_fails_and_blocks(resources, pg_clean, now, bad_price):
    load_good_tables(pg_clean, make_raw(now))
    execute(
        pg_clean,
        "UPDATE price_indicators SET price = %s WHERE coin_id = 'coin-03' AND ts = %s",
        (bad_price, now - timedelta(minutes=2)),
    )
    evaluation = run_checks(resources, CHECKS)["price_indicators:prices_positive"]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["bad_rows"].value == 1
    assert "coin-03" in evaluation.metadata["sample"].value
    assert next(iter(pi.prices_positive.check_specs)).blocking


def test_null_price_and_duplicate_key_fail_on_unconstrained_table(resources, pg_clean, now):
    indicators, _ = load_good_tables(pg_clean, make_raw(now), relaxed=True)
    row = indicators[indicators["coin_id"] == "coin-05"].tail(1).copy()
    insert(pg_clean, "price_indicators", row)  # duplicate (coin_id, ts)
    execute(
        pg_clean,
        "UPDATE price_indicators SET price = NULL WHERE coin_id = 'coin-01' AND ts = %s",
        (now,),
    )
    evaluations = run_checks(resources, CHECKS)
    assert not evaluations["price_indicators:prices_positive"].passed
    dup = evaluations["price_indicators:unique_coin_ts"]
    assert not dup.passed
    assert dup.metadata["duplicate_keys"].value == 1
    assert "coin-05" in dup.metadata["sample"].value


def test_sma_outside_window_range_fails(resources, pg_clean, now):
    indicators, _ = load_good_tables(pg_clean, make_raw(now))
    target = indicators[(indicators["coin_id"] == "coin-02")].iloc[10]
    execute(
        pg_clean,
        "UPDATE price_indicators SET sma_5min = price * 1.5 WHERE coin_id = %s AND ts = %s",
        ("coin-02", target["ts"].to_pydatetime()),
    )
    evaluations = run_checks(resources, CHECKS)
    evaluation = evaluations["price_indicators:sma_within_window_range"]
    assert not evaluation.passed
    assert evaluation.metadata["bad_rows"].value == 1
    assert evaluations["price_indicators:volatility_non_negative"].passed


def test_negative_volatility_fails(resources, pg_clean, now):
    load_good_tables(pg_clean, make_raw(now))
    execute(
        pg_clean,
        "UPDATE price_indicators SET volatility_5min = -0.01 WHERE ts = %s",
        (now - timedelta(minutes=1),),
    )
    evaluation = run_checks(resources, CHECKS)["price_indicators:volatility_non_negative"]
    assert not evaluation.passed
    assert evaluation.metadata["bad_rows"].value == 8  # every coin of that snapshot


def test_direct_invocation_and_window(pg_clean, now, monkeypatch):
    """The wrapper checks only the latest MARKETFLOW_CHECK_WINDOW_HOURS of data; the plain
    function checks whatever window it is given."""
    load_good_tables(pg_clean, make_raw(now, polls=40))  # 20 minutes of polls
    old = now - timedelta(minutes=15)
    execute(pg_clean, "UPDATE price_indicators SET price = -1 WHERE ts = %s", (old,))
    context = dg.build_asset_check_context(resources={"postgres": PostgresResource(url=pg_clean)})

    monkeypatch.setenv("MARKETFLOW_CHECK_WINDOW_HOURS", "0.1")  # last 6 minutes
    assert pi.prices_positive(context).passed
    monkeypatch.setenv("MARKETFLOW_CHECK_WINDOW_HOURS", "1")
    result = pi.prices_positive(context)
    assert not result.passed and result.metadata["bad_rows"].value == 8

    with psycopg2.connect(pg_clean) as conn:
        around = Window(old - timedelta(seconds=1), old + timedelta(seconds=1), "partition")
        assert not pi.prices_positive_outcome(conn, around).passed
        later = Window(old + timedelta(seconds=1), now, "partition")
        assert pi.prices_positive_outcome(conn, later).passed
    conn.close()


def test_missing_table_is_no_data_not_an_error(resources):
    context = dg.build_asset_check_context(resources=resources)
    # an empty window yields no result: Dagster records the check as skipped, not passed
    assert pi.sma_within_window_range(context) is None
    with psycopg2.connect(resources["postgres"].url) as conn:
        now = datetime.now(UTC)
        outcome = pi.sma_within_range_outcome(conn, Window(now, now, "partition"))
    conn.close()
    assert outcome.skipped and outcome.passed and outcome.metadata["rows"] == 0
    assert outcome.description.startswith("Skipped: no indicator rows in the checked window")


def test_sma_of_a_table_holding_part_of_the_history_is_judged_with_raw_prices(
    resources, pg_clean, data_dir, now
):
    """Only the latest snapshot is stored (e.g. history pruned); its SMA averages raw prices the
    table no longer holds. The check reads those from the raw dataset instead of flagging."""
    raw = make_raw(now)
    write_raw(data_dir, raw)
    indicators, _ = good_tables(raw)
    latest = indicators[indicators["ts"] == indicators["ts"].max()]
    assert (latest["sma_5min"] != latest["price"]).all()
    create_tables(pg_clean)
    insert(pg_clean, "price_indicators", latest)

    with psycopg2.connect(pg_clean) as conn:
        window = Window(now - timedelta(hours=1), now + timedelta(seconds=1), "partition")
        assert not pi.sma_within_range_outcome(conn, window).passed  # stored prices only
    conn.close()
    assert run_checks(resources, CHECKS)["price_indicators:sma_within_window_range"].passed

    execute(
        pg_clean, "UPDATE price_indicators SET sma_5min = sma_5min * 3 WHERE coin_id = 'coin-04'"
    )
    evaluation = run_checks(resources, CHECKS)["price_indicators:sma_within_window_range"]
    assert not evaluation.passed and evaluation.metadata["bad_rows"].value == 1
