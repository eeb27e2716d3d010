"""marketflow_alert_sensor: exactly one webhook POST per check / job state change, to a real
local HTTP server (pytest-httpserver)."""

import json
import logging

import dagster as dg
import pytest
from werkzeug import Response

from marketflow_assets.definitions import ASSET_CHECKS
from marketflow_assets.defs.indicators import checks as price_indicator_checks
from marketflow_assets.defs.monitoring import alerts
from marketflow_assets.defs.monitoring.checks import FRESHNESS_CHECKS
from marketflow_assets.defs.monitoring.sensors import evaluate_monitoring_checks
from marketflow_assets.monitoring import alerts as sending
from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.resources.raw_data import RawDataResource

# Ticks in quick succession: no alert cooldown or start-up grace (see defs/conftest.py).
pytestmark = pytest.mark.usefixtures("no_pacing")

FRESHNESS_KEYS = [
    f"{a}:freshness_check" for a in ("market_movers", "price_indicators", "raw_prices")
]


class AlertHarness:
    """A real instance, the sensor ticking with its cursor, and the POSTs the server got."""

    def __init__(self, httpserver, defs):
        self.server = httpserver
        self.defs = defs
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor = None
        self.seen = 0

    def tick(self) -> list[str]:
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, definitions=self.defs
        )
        result = alerts.marketflow_alert_sensor(context)
        self.cursor = result.cursor
        return self.new_posts()

    def new_posts(self) -> list[str]:
        posts = [json.loads(request.get_data())["text"] for request, _ in self.server.log]
        new, self.seen = posts[self.seen :], len(posts)
        return new


@pytest.fixture
def webhook(httpserver, monkeypatch):
    httpserver.expect_request("/hooks/T000/secret-token", method="POST").respond_with_data("ok")
    monkeypatch.setenv(
        "MARKETFLOW_ALERT_WEBHOOK_URL", httpserver.url_for("/hooks/T000/secret-token")
    )
    return httpserver


def test_one_post_per_check_state_change(
    webhook, sensor_defs, resources, checks_data, pg_clean, data_dir, now, monkeypatch, caplog
):
    raw = checks_data.make_raw(now)
    checks_data.write_raw(data_dir, raw)
    checks_data.load_good_tables(pg_clean, raw)
    harness = AlertHarness(webhook, sensor_defs)

    def monitor():  # one monitoring_checks_sensor tick, recorded as the daemon does
        for event in evaluate_monitoring_checks(resources["postgres"], resources["raw_data"]):
            harness.instance.report_runless_asset_event(event)

    monitor()
    assert harness.tick() == []  # all green from the start: nothing to say

    monkeypatch.setenv("MARKETFLOW_FRESHNESS_WARN_SECONDS", "0.001")
    monkeypatch.setenv("MARKETFLOW_FRESHNESS_ERROR_SECONDS", "0.002")
    monitor()
    with caplog.at_level(logging.WARNING, logger="marketflow_assets.monitoring.alerts"):
        posts = harness.tick()
    assert len(posts) == 3
    assert all(p.startswith("ERROR: Marketflow check ") for p in posts)
    assert sorted(k for k in FRESHNESS_KEYS if any(k in p for p in posts)) == FRESHNESS_KEYS
    assert "Stale" in posts[0]
    assert "secret-token" not in caplog.text and "ERROR: Marketflow check" in caplog.text

    assert harness.tick() == []  # no new evaluation
    monitor()
    monitor()
    assert harness.tick() == []  # still red: no storm

    monkeypatch.delenv("MARKETFLOW_FRESHNESS_WARN_SECONDS")
    monkeypatch.delenv("MARKETFLOW_FRESHNESS_ERROR_SECONDS")
    monitor()
    posts = harness.tick()
    assert len(posts) == 3 and all(p.startswith("RESOLVED:") for p in posts)
    monitor()
    assert harness.tick() == []


def test_failed_run_alerts_once_and_resolves(webhook, checks_data, pg_clean, data_dir, now):
    """A run that crashes (Postgres unreachable) alerts for the job and the check, once."""
    good = {
        "postgres": PostgresResource(url=pg_clean),
        "raw_data": RawDataResource(data_dir=str(data_dir)),
    }
    broken = {**good, "postgres": PostgresResource(url="postgresql://x:pw@127.0.0.1:9/none")}
    defs = checks_data.checks_defs(good)
    harness = AlertHarness(webhook, defs)
    check_key = dg.AssetCheckKey(dg.AssetKey("market_movers"), "freshness_check")
    selection = dg.AssetSelection.checks(check_key)

    def run(res):
        return dg.materialize(
            [*checks_data.STUB_ASSETS, *ASSET_CHECKS],
            selection=selection,
            resources=res,
            instance=harness.instance,
            raise_on_error=False,
        )

    assert not run(broken).success
    posts = harness.tick()
    assert len(posts) == 2
    assert any(
        p.startswith("EXECUTION_FAILED: Marketflow check market_movers:freshness") for p in posts
    )
    check_post = next(p for p in posts if p.startswith("EXECUTION_FAILED: Marketflow check "))
    assert "Connection refused" in check_post
    job_post = next(p for p in posts if p.startswith("FAILURE: Marketflow job:"))
    assert "market_movers_freshness_check" in job_post and "Connection refused" in job_post
    assert "pw@" not in job_post

    assert not run(broken).success
    assert harness.tick() == []  # same failure again: no second alert

    checks_data.load_good_tables(pg_clean, checks_data.make_raw(now))
    assert run(good).success
    posts = harness.tick()
    assert len(posts) == 2 and all(p.startswith("RESOLVED:") for p in posts)


def test_blocking_check_failure_alerts_for_the_check_only(
    webhook, sensor_defs, resources, checks_data, pg_clean, now
):
    raw = checks_data.make_raw(now)
    raw.loc[raw.index[-1], "current_price"] = -1.0
    checks_data.load_good_tables(pg_clean, raw)
    harness = AlertHarness(webhook, sensor_defs)
    key = dg.AssetCheckKey(dg.AssetKey("price_indicators"), "prices_positive")
    result = dg.materialize(
        [*checks_data.STUB_ASSETS, *ASSET_CHECKS],
        selection=dg.AssetSelection.checks(key),
        resources=resources,
        instance=harness.instance,
        raise_on_error=False,
    )
    assert not result.success  # a failed blocking ERROR check fails its step
    posts = harness.tick()
    assert posts == [next(p for p in posts if "price_indicators:prices_positive" in p)]
    assert posts[0].startswith("ERROR:")


def test_webhook_retries_then_succeeds(httpserver):
    httpserver.expect_ordered_request("/hook", method="POST").respond_with_response(
        Response("busy", status=503)
    )
    httpserver.expect_ordered_request("/hook", method="POST").respond_with_data("ok")
    assert sending.post_webhook(httpserver.url_for("/hook"), "hello", backoff=0.01)
    assert [json.loads(r.get_data()) for r, _ in httpserver.log] == [{"text": "hello"}] * 2


def test_webhook_gives_up_after_three_attempts(httpserver):
    httpserver.expect_request("/hook", method="POST").respond_with_response(
        Response("down", status=500)
    )
    assert not sending.post_webhook(httpserver.url_for("/hook"), "hello", backoff=0.01)
    assert len(httpserver.log) == sending.WEBHOOK_ATTEMPTS


def test_no_webhook_configured_only_logs(sensor_defs, caplog, monkeypatch):
    monkeypatch.delenv("MARKETFLOW_ALERT_WEBHOOK_URL", raising=False)
    instance = dg.DagsterInstance.ephemeral()
    key = dg.AssetCheckKey(dg.AssetKey("raw_prices"), "unique_id_ts")
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(asset_key=key.asset_key, check_name=key.name, passed=False)
    )
    context = dg.build_sensor_context(instance=instance, definitions=sensor_defs)
    with caplog.at_level(logging.WARNING, logger="marketflow_assets.monitoring.alerts"):
        result = alerts.marketflow_alert_sensor(context)
    assert "ERROR: Marketflow check raw_prices:unique_id_ts failed" in caplog.text
    assert json.loads(result.cursor)["checks"] == {"raw_prices:unique_id_ts": "ERROR"}


def test_min_severity_error_ignores_warnings(webhook, sensor_defs, monkeypatch):
    """A check flapping between passed and WARN pages nobody with MIN_SEVERITY=ERROR; its
    escalation to ERROR still posts once."""
    monkeypatch.setenv("MARKETFLOW_ALERT_MIN_SEVERITY", "ERROR")
    harness = AlertHarness(webhook, sensor_defs)
    key = dg.AssetCheckKey(dg.AssetKey("price_indicators"), "freshness_check")

    def record(passed, severity=dg.AssetCheckSeverity.WARN):
        harness.instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=key.asset_key, check_name=key.name, passed=passed, severity=severity
            )
        )

    for passed in (False, True, False, True, False):
        record(passed)
        assert harness.tick() == []
    record(False, dg.AssetCheckSeverity.ERROR)
    posts = harness.tick()
    assert len(posts) == 1 and posts[0].startswith("ERROR:")
    record(False)  # back to WARN: counts as healthy
    assert [p.split(":")[0] for p in harness.tick()] == ["RESOLVED"]


def test_checks_skipped_by_a_failed_upstream_do_not_alert(webhook, checks_data, pg_clean, data_dir):
    """An indicator run that fails before its checks run alerts once (the run), not once per
    planned check."""
    broken = PostgresResource(url="postgresql://x:pw@127.0.0.1:9/none")

    @dg.asset(name="price_indicators", deps=["raw_prices"])
    def failing_price_indicators(postgres: PostgresResource) -> None:
        with postgres.get_connection():  # connection refused
            pass

    assets = [checks_data.STUB_ASSETS[0], failing_price_indicators]
    resources = {"postgres": broken, "raw_data": RawDataResource(data_dir=str(data_dir))}
    defs = checks_data.checks_defs(resources, assets)
    harness = AlertHarness(webhook, defs)
    result = dg.materialize(
        [*assets, *price_indicator_checks.CHECKS, *FRESHNESS_CHECKS[1:2]],
        resources=resources,
        instance=harness.instance,
        raise_on_error=False,
    )
    assert not result.success
    assert result.get_asset_check_evaluations() == []  # the checks never ran
    posts = harness.tick()
    assert len(posts) == 1 and posts[0].startswith("FAILURE: Marketflow job:")
    assert "price_indicators" in posts[0] and "Connection refused" in posts[0]
