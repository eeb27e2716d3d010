"""What launched a run: the ``marketflow/launched_by`` tag on every run of the code location.

Values: ``follow`` (``marketflow follow``, the fast path), ``schedule``, ``reconciliation`` (the
late-row sensor), ``automation`` (the sensors that follow new data: raw files, new indicators,
degraded forecasts), ``backfill``, ``cli`` (``marketflow refresh`` / ``forecast``) and ``ui``:
a run launched by hand from the Dagster UI (or ``dagster asset materialize``).

Launchers that can tag their runs do (follow, the CLI commands); for the others the first asset
or op of the run adds the tag from Dagster's own tags (``dagster/schedule_name``,
``dagster/sensor_name``, ``dagster/backfill``), so the runs list can be filtered by
``marketflow/launched_by`` whoever launched the run. A hand-launched indicator run recomputes
its partitions (:mod:`marketflow_assets.defs.indicators.assets`): materializing from the UI does
what it says.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

LAUNCHED_BY_TAG = "marketflow/launched_by"
FOLLOW, SCHEDULE, RECONCILIATION, AUTOMATION, BACKFILL, CLI, UI = (
    "follow",
    "schedule",
    "reconciliation",
    "automation",
    "backfill",
    "cli",
    "ui",
)
#: The follower's own tag (``marketflow/trigger=live``), older than this module.
LIVE_TRIGGER_TAG = "marketflow/trigger"
_BACKFILL_TAG = "dagster/backfill"
_SCHEDULE_TAG = "dagster/schedule_name"
_SENSOR_TAG = "dagster/sensor_name"
_AUTOMATION_TAGS = ("dagster/auto_materialize", "dagster/from_automation_condition")
_SENSORS = {"reconciliation_sensor": RECONCILIATION}


def launcher(tags: Mapping[str, str]) -> str:
    """Who launched a run with ``tags`` (see the module docstring)."""
    if tags.get(LAUNCHED_BY_TAG):
        return tags[LAUNCHED_BY_TAG]
    if tags.get(LIVE_TRIGGER_TAG) == "live":
        return FOLLOW
    if _BACKFILL_TAG in tags:
        return BACKFILL
    if _SCHEDULE_TAG in tags:
        return SCHEDULE
    if _SENSOR_TAG in tags:
        return _SENSORS.get(tags[_SENSOR_TAG], AUTOMATION)
    if any(tag in tags for tag in _AUTOMATION_TAGS):
        return AUTOMATION
    return UI


def tag_launcher(context: dg.OpExecutionContext | dg.AssetExecutionContext) -> str:
    """Add ``marketflow/launched_by`` to the running run when it lacks it; returns its value."""
    tags = context.run.tags
    who = launcher(tags)
    if tags.get(LAUNCHED_BY_TAG) != who:
        context.instance.add_run_tags(context.run.run_id, {LAUNCHED_BY_TAG: who})
    return who
