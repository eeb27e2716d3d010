"""Freshness checks go from pass to WARN to ERROR as time advances past their thresholds."""

from datetime import timedelta

import dagster as dg
import psycopg2
import pytest

from marketflow_assets.defs.common.outcome import CheckSettings, load_check_settings
from marketflow_assets.defs.monitoring import checks as freshness
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.settings import ConfigError
from marketflow_assets_tests.defs.checks_data import (
    STUB_ASSETS,
    load_good_tables,
    make_raw,
    write_raw,
)

WARN, ERROR = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR


def test_outcome_thresholds(now):
    settings = CheckSettings(freshness_warn_seconds=120, freshness_error_seconds=300)
    newest = now

    def at(seconds):
        return freshness.freshness_outcome(newest, now + timedelta(seconds=seconds), settings, "x")

    assert at(0).passed and at(120).passed
    late = at(121)
    assert not late.passed and late.severity == WARN and late.metadata["age_seconds"] == 121
    assert at(300).severity == WARN
    stale = at(301)
    assert not stale.passed and stale.severity == ERROR
    missing = freshness.freshness_outcome(None, now, settings, "x")
    assert not missing.passed and missing.severity == ERROR


def test_thresholds_from_environment():
    settings = load_check_settings(
        {"MARKETFLOW_FRESHNESS_WARN_SECONDS": "30", "MARKETFLOW_FRESHNESS_ERROR_SECONDS": "90"}
    )
    assert (settings.freshness_warn_seconds, settings.freshness_error_seconds) == (30, 90)
    assert load_check_settings({}).freshness_error_seconds == 300
    with pytest.raises(ConfigError, match="MARKETFLOW_FRESHNESS_ERROR_SECONDS"):
        load_check_settings({"MARKETFLOW_FRESHNESS_ERROR_SECONDS": "60"})  # < warn (120)
    with pytest.raises(ConfigError, match="MARKETFLOW_FRESHNESS_WARN_SECONDS"):
        load_check_settings({"MARKETFLOW_FRESHNESS_WARN_SECONDS": "soon"})
    with pytest.raises(ConfigError, match="MARKETFLOW_ALERT_MIN_SEVERITY"):
        load_check_settings({"MARKETFLOW_ALERT_MIN_SEVERITY": "loud"})
    with pytest.raises(ConfigError, match="MARKETFLOW_ALERT_WEBHOOK_URL"):
        load_check_settings({"MARKETFLOW_ALERT_WEBHOOK_URL": "hooks.slack.com/x"})


def test_all_three_turn_red_as_time_advances(resources, pg_clean, data_dir, now):
    """Real runs of the three checks with a controllable clock over real Parquet and tables."""
    raw = make_raw(now)
    write_raw(data_dir, raw)
    load_good_tables(pg_clean, raw)
    clock = {"now": now}
    checks = freshness.build_freshness_checks(clock=lambda: clock["now"])

    def evaluate(seconds_later):
        clock["now"] = now + timedelta(seconds=seconds_later)
        result = dg.materialize(
            [*STUB_ASSETS, *checks],
            selection=dg.AssetSelection.checks(*checks),
            resources=resources,
            instance=dg.DagsterInstance.ephemeral(),
        )
        evaluations = result.get_asset_check_evaluations()
        assert len(evaluations) == 3
        return {e.asset_key.to_user_string(): e for e in evaluations}

    fresh = evaluate(60)
    assert all(e.passed for e in fresh.values()), {k: e.description for k, e in fresh.items()}
    assert fresh["price_indicators"].metadata["age_seconds"].value == 60

    late = evaluate(150)
    assert {k: (e.passed, e.severity) for k, e in late.items()} == {
        k: (False, WARN) for k in ("raw_prices", "price_indicators", "market_movers")
    }
    stale = evaluate(301)
    assert {k: (e.passed, e.severity) for k, e in stale.items()} == {
        k: (False, ERROR) for k in ("raw_prices", "price_indicators", "market_movers")
    }


def test_stalled_stage_only_that_asset_is_stale(resources, pg_clean, data_dir, now, monkeypatch):
    """Raw keeps arriving but the indicator refresh stopped 10 minutes ago."""
    monkeypatch.setenv("MARKETFLOW_FRESHNESS_WARN_SECONDS", "60")
    monkeypatch.setenv("MARKETFLOW_FRESHNESS_ERROR_SECONDS", "180")
    write_raw(data_dir, make_raw(now))
    load_good_tables(pg_clean, make_raw(now - timedelta(minutes=10)))
    evaluations = {
        e.asset_key.to_user_string(): e
        for e in dg.materialize(
            [*STUB_ASSETS, *freshness.FRESHNESS_CHECKS],
            selection=dg.AssetSelection.checks(*freshness.FRESHNESS_CHECKS),
            resources=resources,
        ).get_asset_check_evaluations()
    }
    assert evaluations["raw_prices"].passed
    for name in ("price_indicators", "market_movers"):
        assert not evaluations[name].passed and evaluations[name].severity == ERROR
        assert evaluations[name].metadata["error_after_seconds"].value == 180


def test_no_data_is_an_error(pg_clean):
    context = dg.build_asset_check_context(resources={"postgres": PostgresResource(url=pg_clean)})
    check = freshness.build_freshness_checks()[1]  # price_indicators
    result = check(context)
    assert not result.passed and result.severity == ERROR
    assert "No data" in result.description


def test_no_data_yet_is_a_warm_up_while_the_upstream_only_just_started(pg_clean, data_dir, now):
    """Issue 28: the first minutes are a warm-up, not ERROR results that stay for 7 days."""
    settings = CheckSettings(freshness_warn_seconds=120, freshness_error_seconds=300)
    postgres = PostgresResource(url=pg_clean)
    raw = make_raw(now, polls=6)  # 2.5 minutes of prices: too few for 5-minute movers
    write_raw(data_dir, raw)
    indicators, _ = load_good_tables(pg_clean, raw)
    with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM market_movers")
    conn.close()

    def outcome(asset, at, loaded_at=None):
        return freshness.asset_freshness(
            asset, at, postgres, data_dir / "raw_prices", settings, loaded_at=loaded_at
        )

    movers = outcome(freshness.MOVERS, now)
    assert movers.passed and movers.metadata["warming_up"] is True
    assert movers.description.startswith("Warming up: the movers compare prices five minutes")
    # ten minutes later still no movers: a real problem
    later = outcome(freshness.MOVERS, now + timedelta(minutes=10))
    assert not later.passed and later.severity == ERROR and "No data yet" in later.description
    # ... unless the code location loaded only just now (the start-up grace)
    loaded = (now + timedelta(minutes=9)).timestamp()
    assert outcome(freshness.MOVERS, now + timedelta(minutes=10), loaded).passed

    with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM price_indicators")
    conn.close()
    first_raw = indicators["ts"].min()
    young = outcome(freshness.INDICATORS, first_raw + timedelta(seconds=60))
    assert young.passed and "first refresh follows the first raw rows" in young.description
    old = outcome(freshness.INDICATORS, first_raw + timedelta(seconds=301))
    assert not old.passed and old.severity == ERROR
    assert not outcome(freshness.RAW, now + timedelta(hours=1)).passed  # raw has rows: stale
