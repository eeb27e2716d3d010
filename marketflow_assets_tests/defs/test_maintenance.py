"""Housekeeping jobs: the compaction job and run retention, on real Dagster instances."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import dagster as dg

from marketflow_assets.definitions import defs
from marketflow_assets.defs import maintenance
from marketflow_assets.raw_dataset import snapshot
from marketflow_assets.resources import RawDataResource
from marketflow_assets_tests.compaction_helpers import all_rows, make_history


def test_compaction_job_optimizes_the_closed_partitions(tmp_path):
    raw = tmp_path / "raw_prices"
    make_history(raw)  # March 2026: every hour is closed
    rows = all_rows(raw)
    result = maintenance.compact_raw_prices_job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        resources={"raw_data": RawDataResource(data_dir=str(tmp_path))},
    )
    assert result.success
    assert all_rows(raw) == rows
    files = snapshot(raw).files_all
    assert len(files) == len({f.day for f in files}) == 2  # one file per date partition
    schedule = defs.get_schedule_def("compact_raw_prices_schedule")
    assert schedule.job_name == "compact_raw_prices_job"


def _fake_refresh_job():
    """A cheap stand-in with the refresh job's name: it records real runs with partition tags."""

    @dg.op(config_schema={"fail": bool})
    def step(context):
        if context.op_config["fail"]:
            raise RuntimeError("failed on purpose")

    @dg.job(
        name="refresh_indicators_job",
        partitions_def=dg.HourlyPartitionsDefinition(start_date="2026-03-01-00:00"),
    )
    def job():
        step()

    return job


def test_purge_keeps_the_latest_success_per_partition(tmp_path):
    job = _fake_refresh_job()
    # local_temp, not instance_for_test(): the latter's exit leaves Dagster's defs-state storage
    # pointing at the disposed instance, which breaks later Definitions loads in this process
    with contextlib.nullcontext(dg.DagsterInstance.local_temp(str(tmp_path))) as instance:

        def run(key: str, fail: bool = False) -> str:
            result = job.execute_in_process(
                instance=instance,
                partition_key=key,
                run_config={"ops": {"step": {"config": {"fail": fail}}}},
                raise_on_error=False,
            )
            return result.run_id

        a1, a2 = run("2026-03-01-00:00"), run("2026-03-01-00:00")
        b1, b_failed = run("2026-03-01-01:00"), run("2026-03-01-01:00", fail=True)
        c_failed = run("2026-03-01-02:00", fail=True)
        everything = {a1, a2, b1, b_failed, c_failed}
        assert {r.dagster_run.run_id for r in instance.get_run_records()} == everything

        # nothing is older than 24 hours yet
        assert maintenance.purge_old_runs(instance, keep_hours=24).deleted == []

        later = datetime.now(UTC) + timedelta(days=2)
        report = maintenance.purge_old_runs(instance, keep_hours=24, now=later)
        assert set(report.deleted) == {a1, b_failed, c_failed}
        assert {r.dagster_run.run_id for r in instance.get_run_records()} == {a2, b1}
        assert instance.all_logs(a1) == [] and instance.all_logs(a2)
        # the latest materialization of each partition is still there
        assert maintenance.purge_old_runs(instance, keep_hours=24, now=later).deleted == []


def test_purge_job_runs_through_dagster(tmp_path):
    with contextlib.nullcontext(dg.DagsterInstance.local_temp(str(tmp_path))) as instance:
        result = maintenance.purge_old_runs_job.execute_in_process(instance=instance)
        assert result.success
        schedule = defs.get_schedule_def("purge_old_runs_schedule")
        assert schedule.job_name == "purge_old_runs_job"
