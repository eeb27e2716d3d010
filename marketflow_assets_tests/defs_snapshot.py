"""A JSON snapshot of the loaded Definitions: every name Dagster keys state on.

Cursors, run history, ``check_results`` and the UI key on asset keys, check names, job, sensor
and schedule names, tags and code versions; moving modules around must not change any of them.
``python -m marketflow_assets_tests.defs_snapshot [PATH]`` prints (or writes) the snapshot of
``marketflow_assets.definitions.defs``; ``test_defs_snapshot.py`` compares it with the committed
``fixtures/defs_snapshot.json``. Run it with :func:`snapshot_env` (a fixed partition start and an
empty data directory), so the hourly partitions' start does not depend on the data at hand.

Descriptions are left out on purpose: they are prose (docstrings shown in the UI), not keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "defs_snapshot.json"
#: Partition start of the snapshot (``MARKETFLOW_PARTITION_START``): any fixed value will do.
PARTITION_START = "2026-01-01T00:00:00+00:00"


def snapshot_env(data_dir: str) -> dict[str, str]:
    """This environment without MARKETFLOW_* settings or Dagster home, with a fixed partition
    start and ``data_dir`` (empty) as the data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETFLOW_")}
    env.pop("DAGSTER_HOME", None)
    env["MARKETFLOW_PARTITION_START"] = PARTITION_START
    env["MARKETFLOW_DATA_DIR"] = data_dir
    return env


def _keys(keys) -> list[str]:
    return sorted(k.to_user_string() for k in keys)


def _partitions(partitions_def) -> dict | None:
    if partitions_def is None:
        return None
    return {"type": type(partitions_def).__name__, "description": str(partitions_def)}


def _status(status) -> str | None:
    return None if status is None else getattr(status, "value", str(status))


def _freshness(policy) -> str | None:
    return None if policy is None else repr(policy)


def snapshot(defs) -> dict:
    """The names and keys of ``defs`` as plain JSON-able data (sorted, deterministic)."""
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        spec = node.to_asset_spec() if hasattr(node, "to_asset_spec") else None
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "code_version": node.code_version,
            "kinds": sorted(node.kinds),
            "tags": dict(sorted((node.tags or {}).items())),
            "owners": sorted(node.owners),
            "partitions": _partitions(node.partitions_def),
            "deps": _keys(node.parent_keys),
            "is_external": node.is_external,
            "is_observable": node.is_observable,
            "automation_condition": (
                None if node.automation_condition is None else repr(node.automation_condition)
            ),
            "freshness_policy": _freshness(getattr(spec, "freshness_policy", None)),
            "metadata_keys": sorted(node.metadata or {}),
            "backfill_policy": None if node.backfill_policy is None else repr(node.backfill_policy),
        }
    checks = {}
    for ck in sorted(graph.asset_check_keys, key=lambda k: k.to_user_string()):
        spec = graph.get_check_spec(ck)
        checks[ck.to_user_string()] = {
            "asset": ck.asset_key.to_user_string(),
            "name": ck.name,
            "blocking": spec.blocking,
            "automation_condition": (
                None if spec.automation_condition is None else repr(spec.automation_condition)
            ),
        }
    jobs = {}
    for job in sorted(repo.get_all_jobs(), key=lambda j: j.name):
        if job.name.startswith("__ASSET_JOB"):
            continue  # Dagster's implicit asset job: its contents are the assets above
        selected = job.asset_layer.selected_asset_keys if job.asset_layer else set()
        selected_checks = job.asset_layer.asset_graph.asset_check_keys if job.asset_layer else set()
        jobs[job.name] = {
            "tags": dict(sorted((job.tags or {}).items())),
            "assets": _keys(selected),
            "checks": _keys(selected_checks),
            "partitioned": job.partitions_def is not None,
            "ops": sorted(node.name for node in job.graph.nodes),
        }
    sensors = {}
    for sensor in sorted(repo.sensor_defs, key=lambda s: s.name):
        targets = sorted(t.job_name for t in sensor.targets) if sensor.targets else []
        sensors[sensor.name] = {
            "type": type(sensor).__name__,
            "minimum_interval_seconds": sensor.minimum_interval_seconds,
            "default_status": _status(sensor.default_status),
            "jobs": targets,
            "tags": dict(sorted((getattr(sensor, "tags", None) or {}).items())),
        }
    schedules = {}
    for schedule in sorted(repo.schedule_defs, key=lambda s: s.name):
        schedules[schedule.name] = {
            "cron": schedule.cron_schedule,
            "timezone": schedule.execution_timezone,
            "job": schedule.job_name,
            "default_status": _status(schedule.default_status),
            "tags": dict(sorted((getattr(schedule, "tags", None) or {}).items())),
        }
    return {
        "assets": assets,
        "checks": checks,
        "jobs": jobs,
        "sensors": sensors,
        "schedules": schedules,
        "resources": sorted(repo.get_top_level_resources()),
    }


def render(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def run_snapshot(data_dir: str) -> str:
    """The snapshot as a fresh interpreter loads the definitions with :func:`snapshot_env`."""
    out = subprocess.run(
        [sys.executable, "-m", "marketflow_assets_tests.defs_snapshot"],
        env=snapshot_env(data_dir),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"defs snapshot failed ({out.returncode}):\n{out.stderr}")
    return out.stdout


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--write":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            text = run_snapshot(tmp)
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(text)
        print(f"wrote {FIXTURE}")
        return
    from marketflow_assets.definitions import defs

    sys.stdout.write(render(snapshot(defs)))


if __name__ == "__main__":
    main()
