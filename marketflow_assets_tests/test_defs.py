"""The code location loads: every asset, check, job, sensor, schedule and resource of
``marketflow_assets.definitions``, with no service running and nothing configured."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg

from marketflow_assets.definitions import defs

ASSETS = {"raw_prices", "price_indicators", "market_movers"}
JOBS = {"refresh_indicators_job", "monitoring_checks_job", "all_checks_job"}
SENSORS = {
    "raw_prices_observation_sensor",
    "indicators_follow_raw_prices",
    "monitoring_checks_sensor",
    "marketflow_alert_sensor",
}


def test_definitions_hold_everything():
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()} == ASSETS
    checks = {k.to_user_string() for k in repo.asset_graph.asset_check_keys}
    assert {f"{a}:freshness_check" for a in ASSETS} <= checks and len(checks) >= 12
    assert JOBS <= {job.name for job in repo.get_all_jobs()}
    assert {s.name for s in repo.sensor_defs} == SENSORS
    assert {s.name for s in repo.schedule_defs} == {"recent_indicators_schedule"}
    assert {"postgres", "raw_data", "pyspark"} <= set(repo.get_top_level_resources())


def test_definitions_load_in_an_empty_folder_without_configuration(tmp_path):
    """``dagster definitions validate`` (what CI and ``dagster dev`` do first) in an empty
    folder with no MARKETFLOW_* variable: nothing is started or read from a service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETFLOW_")}
    env.pop("DAGSTER_HOME", None)
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    result = subprocess.run(
        [dagster, "definitions", "validate", "-m", "marketflow_assets.definitions"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "data").exists()  # loading starts nothing and writes nothing
