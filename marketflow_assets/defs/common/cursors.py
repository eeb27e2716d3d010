"""The cursor of the sensors that follow an asset's materializations: ``{"storage_id": N}``, the
event-log storage id of the newest materialization already acted on (the format stays as it
is: running sensors keep their stored cursors)."""

from __future__ import annotations

import json

import dagster as dg

#: Materializations read per tick at most; the next tick continues from the cursor.
MATERIALIZATIONS_PER_TICK = 1000


def materializations_since_cursor(
    context: dg.SensorEvaluationContext, asset_key: dg.AssetKey
) -> list[dg.EventLogRecord]:
    """``asset_key``'s materializations after the sensor's cursor, oldest first."""
    after = int(json.loads(context.cursor)["storage_id"]) if context.cursor else None
    return context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, after_storage_id=after),
        limit=MATERIALIZATIONS_PER_TICK,
        ascending=True,
    ).records


def storage_id_cursor(record: dg.EventLogRecord) -> str:
    """The cursor that resumes after ``record``."""
    return json.dumps({"storage_id": record.storage_id})
