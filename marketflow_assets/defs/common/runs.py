"""Queries of runs that are queued or running: the automation sensors and the follower wait for
them instead of launching a second run over the same data."""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

#: Statuses of a run that has been requested and has not finished.
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def in_flight_runs(
    instance: dg.DagsterInstance,
    job_name: str,
    *,
    tags: Mapping[str, str] | None = None,
    limit: int | None = None,
) -> list[dg.RunRecord]:
    """Records of the queued or running runs of ``job_name`` (with ``tags``), newest first."""
    filters = dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT, tags=dict(tags or {}))
    return list(instance.get_run_records(filters=filters, limit=limit))
