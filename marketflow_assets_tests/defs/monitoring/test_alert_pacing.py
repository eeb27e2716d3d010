"""Alert pacing on a real Dagster instance: start-up grace for "no data yet", cooldown against
flapping, at most MAX_ALERTS_PER_TICK messages per tick."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import dagster as dg

from marketflow_assets.defs.monitoring import alerts
from marketflow_assets.settings import load_monitoring_settings

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PACING = dataclasses.replace(
    load_monitoring_settings({}), alert_cooldown_seconds=60.0, startup_grace_seconds=300.0
)


class Harness:
    def __init__(self, keys: list[dg.AssetCheckKey], started_at: float):
        self.instance = dg.DagsterInstance.ephemeral()
        self.keys = keys
        self.started_at = started_at
        self.cursor = None

    def record(self, key: dg.AssetCheckKey, passed: bool, **metadata) -> None:
        self.instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=key.asset_key,
                check_name=key.name,
                passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata=metadata,
            )
        )

    def tick(self, at: datetime) -> list[str]:
        sent, self.cursor = alerts.evaluate_alerts(
            self.instance,
            self.keys,
            self.cursor,
            None,
            now=at,
            pacing=PACING,
            started_at=self.started_at,
        )
        return [a.text for a in sent]


KEY = dg.AssetCheckKey(dg.AssetKey("raw_prices"), "freshness_check")


def test_no_data_failures_are_held_during_the_start_up_grace():
    harness = Harness([KEY], started_at=T0.timestamp())
    harness.record(KEY, False, no_data=True)
    assert harness.tick(T0 + timedelta(seconds=30)) == []
    assert harness.tick(T0 + timedelta(seconds=290)) == []
    posts = harness.tick(T0 + timedelta(seconds=301))  # still no data after the grace: say so
    assert len(posts) == 1 and posts[0].startswith("ERROR:")


def test_real_failures_are_not_held_by_the_grace():
    harness = Harness([KEY], started_at=T0.timestamp())
    harness.record(KEY, False, age_seconds=500.0)
    assert len(harness.tick(T0 + timedelta(seconds=10))) == 1


def test_cooldown_holds_a_flap_then_reports_the_settled_state():
    harness = Harness([KEY], started_at=0.0)
    harness.record(KEY, False)
    assert len(harness.tick(T0)) == 1
    harness.record(KEY, True)
    assert harness.tick(T0 + timedelta(seconds=10)) == []  # within the cooldown: held
    harness.record(KEY, False)
    assert harness.tick(T0 + timedelta(seconds=20)) == []  # flapped back: nothing to say
    assert harness.tick(T0 + timedelta(seconds=70)) == []  # still failing: alerted already
    harness.record(KEY, True)
    posts = harness.tick(T0 + timedelta(seconds=80))
    assert len(posts) == 1 and posts[0].startswith("RESOLVED:")


def test_a_storm_is_capped_with_one_summary():
    keys = [dg.AssetCheckKey(dg.AssetKey("raw_prices"), f"check_{i:02d}") for i in range(25)]
    harness = Harness(keys, started_at=0.0)
    for key in keys:
        harness.record(key, False)
    posts = harness.tick(T0)
    assert len(posts) == alerts.MAX_ALERTS_PER_TICK
    assert "16 more state changes" in posts[-1]
    assert harness.tick(T0 + timedelta(seconds=120)) == []  # all counted as told
