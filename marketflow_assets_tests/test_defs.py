"""The code location as Dagster loads it: everything assembled in ``definitions.py``, native
Dagster features in place, and nothing configured or running needed."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from marketflow_assets.definitions import defs
from marketflow_assets.runtime.services import EmbeddedPostgres
from marketflow_assets.schema import column_names
from marketflow_assets_tests.helpers import (
    irregular_rows,
    read_table,
    reference_indicators,
    reference_movers,
    write_raw_parquet,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MARKET_ASSETS = {"raw_prices", "price_indicators", "market_movers"}
FORECAST_ASSETS = {"forecast_evaluation", "forecast_model", "price_forecasts"}
ASSETS = MARKET_ASSETS | FORECAST_ASSETS
COMPUTED = {"price_indicators", "market_movers"}
HOURLY = {"forecast_evaluation", "forecast_model"}  # retrained hourly
POLL_WINDOWS = (timedelta(seconds=300), timedelta(seconds=120))  # (fail, warn)
HOURLY_WINDOWS = (timedelta(hours=3), timedelta(hours=2))
JOBS = {
    "refresh_indicators_job",
    "monitoring_checks_job",
    "all_checks_job",
    "forecast_training_job",
    "price_forecasts_job",
    "compact_raw_prices_job",
    "purge_old_runs_job",
}
SCHEDULES = {
    "recent_indicators_schedule",
    "compact_raw_prices_schedule",
    "purge_old_runs_schedule",
    "forecast_retrain_schedule",
}
SENSORS = {
    "raw_prices_observation_sensor",
    "indicators_follow_raw_prices",
    "monitoring_checks_sensor",
    "marketflow_alert_sensor",
    "forecasts_follow_indicators",
    "forecast_retrain_on_degradation",
    "stream_health_sensor",
    "reconciliation_sensor",
}
VALUES = ("change_1min", "change_5min", "sma_5min", "ema_3min", "volatility_5min")


def bare_env() -> dict[str, str]:
    """This environment without any MARKETFLOW_* variable or Dagster home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETFLOW_")}
    env.pop("DAGSTER_HOME", None)
    env["PYSPARK_PYTHON"] = sys.executable
    return env


def test_definitions_hold_everything():
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()} == ASSETS
    checks = {k.to_user_string() for k in repo.asset_graph.asset_check_keys}
    assert {f"{a}:freshness_check" for a in MARKET_ASSETS} <= checks and len(checks) >= 12
    assert {"forecast_evaluation:no_look_ahead", "price_forecasts:intervals_ordered"} <= checks
    assert JOBS <= {job.name for job in repo.get_all_jobs()}
    assert {s.name for s in repo.sensor_defs} == SENSORS
    assert {s.name for s in repo.schedule_defs} == SCHEDULES
    assert {"postgres", "raw_data", "pyspark", "kafka"} <= set(repo.get_top_level_resources())
    assert {"raw_prices:stream_lag", "raw_prices:dead_letter_rate", "raw_prices:reject_rate"} <= (
        checks
    )


def test_native_freshness_code_versions_metadata_and_retries():
    graph = defs.get_repository_def().asset_graph
    for name in ASSETS:
        node = graph.get(dg.AssetKey(name))
        policy = node.freshness_policy
        assert isinstance(policy, dg.FreshnessPolicy), name
        fail, warn = HOURLY_WINDOWS if name in HOURLY else POLL_WINDOWS
        assert policy.fail_window.to_timedelta() == fail, name
        assert policy.warn_window.to_timedelta() == warn, name
    for name in MARKET_ASSETS:
        node = graph.get(dg.AssetKey(name))
        assert isinstance(node.metadata["dagster/column_schema"], dg.TableSchema)
    for name in COMPUTED:
        node = graph.get(dg.AssetKey(name))
        assert node.code_version and node.code_version.isdigit(), name
        assert node.metadata["dagster/table_name"] == name
        columns = [c.name for c in node.metadata["dagster/column_schema"].columns]
        assert columns == list(column_names(name))
        assert isinstance(node.assets_def.node_def.retry_policy, dg.RetryPolicy), name


def test_instance_yamls_enable_freshness():
    import yaml

    for path in (REPO_ROOT / "dagster.yaml", REPO_ROOT / "deploy" / "dagster_postgres.yaml"):
        assert yaml.safe_load(path.read_text())["freshness"] == {"enabled": True}, path


def test_no_private_dagster_imports():
    pattern = re.compile(r"^\s*(from|import)\s+dagster\w*\._", re.M)
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for folder in ("marketflow_assets", "spark_streaming", "benchmarks")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert offenders == []


def test_only_settings_reads_the_environment():
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for folder in ("marketflow_assets", "spark_streaming", "benchmarks")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if path.name != "settings.py" and re.search(r"os\.environ|os\.getenv", path.read_text())
    ]
    assert offenders == []


def _module_imports(path: Path) -> set[str]:
    """Modules ``path`` imports (absolute names), at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_asset_and_check_modules_import_no_sensor_or_schedule():
    """Assets and checks do not depend on the sensors, schedules or the composition root
    (followed through every module they import, package ``__init__`` files aside)."""
    package = REPO_ROOT / "marketflow_assets"
    modules = {
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts): path
        for path in package.rglob("*.py")
        if path.name != "__init__.py"
    }
    roots = [
        m
        for m in modules
        if m.startswith("marketflow_assets.defs.")
        and m.rsplit(".", 1)[1] in {"assets", "movers", "checks", "movers_checks", "stream_checks"}
    ]
    assert len(roots) >= 8
    forbidden = re.compile(r"\.(sensors|stream_sensors|schedules|alerts)$|\.definitions$")
    seen, todo, offenders = set(), list(roots), []
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in _module_imports(modules[module]):
            if forbidden.search(name):
                offenders.append(f"{module} imports {name}")
            if name in modules:
                todo.append(name)
    assert offenders == []


@pytest.mark.slow  # over 10 s: left out of `make test-fast`
def test_plain_dagster_in_an_empty_folder_without_configuration(tmp_path):
    """No MARKETFLOW_* variable, an empty folder with raw data under ./data/raw_prices: the
    definitions' partitions start at the data's first hour, and a plain `dagster asset
    materialize` of that partition writes the reference rows into the embedded PostgreSQL it
    starts under ./data/postgres."""
    rows = irregular_rows(seed=5, coins=6, polls=40)
    write_raw_parquet(tmp_path / "data" / "raw_prices", rows)
    first = min(r[2] for r in rows)
    hour = first.replace(minute=0, second=0, microsecond=0)
    key = hour.strftime("%Y-%m-%d-%H:%M")
    env = bare_env()

    probe = (
        "import json, dagster as dg; from marketflow_assets.definitions import defs; "
        "g = defs.get_repository_def().asset_graph; "
        "n = g.get(dg.AssetKey('price_indicators')); "
        "print(json.dumps([n.partitions_def.get_first_partition_key(), n.code_version]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    first_key, version = json.loads(out.stdout.strip().splitlines()[-1])
    assert first_key == key and version

    result = subprocess.run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "marketflow_assets.definitions",
            "--select",
            "price_indicators,market_movers",
            "--partition",
            key,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "data" / "postgres").is_dir()

    in_hour = [r for r in rows if hour <= r[2] < hour + timedelta(hours=1)]
    ref = reference_indicators(in_hour)  # the first partition: no earlier rows, no state
    with EmbeddedPostgres(tmp_path / "data" / "postgres") as url:
        table = read_table(url, "price_indicators")
        movers = read_table(url, "market_movers")
    got = {(r.coin_id, r.ts.to_pydatetime()): r for r in table.itertuples(index=False)}
    assert set(got) == set(ref) and len(ref) > 20
    for k, exp in ref.items():
        for col in VALUES:
            value, expected = getattr(got[k], col), exp[col]
            if expected is None:
                assert value is None or math.isnan(value), (k, col)
            else:
                assert math.isclose(value, expected, rel_tol=1e-9, abs_tol=0), (k, col)
    assert sorted(
        (r.snapshot_ts.to_pydatetime(), r.direction, r.rank, r.coin_id)
        for r in movers.itertuples(index=False)
    ) == [m[:4] for m in reference_movers(ref)]


@pytest.mark.parametrize("command", ["validate"])
def test_definitions_validate_in_an_empty_folder(tmp_path, command):
    """``dagster definitions validate`` (what CI and ``dagster dev`` do first) with no data and
    no configuration: partitions start today, nothing is started or written."""
    result = subprocess.run(
        [str(BIN / "dagster"), "definitions", command, "-m", "marketflow_assets.definitions"],
        cwd=tmp_path,
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "data").exists()
