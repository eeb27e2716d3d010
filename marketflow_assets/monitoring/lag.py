"""Stream lag, dead-letter rate and reject rate, measured from OUTSIDE the streaming job.

A stalled job (SIGSTOP, a hung JVM) cannot report its own stall — its metrics endpoint stops
answering too. So everything here reads what the job leaves on disk plus the broker:

* **committed offsets** — the newest micro-batch the sink committed
  (``<checkpoint>/marketflow_sink/batches/<batch>.json``, written only after the batch
  is committed to the raw_prices Delta table) and that batch's end offsets from Spark's offset log
  (``<checkpoint>/offsets/<batch>``, line 3: ``{topic: {partition: next offset}}``);
* **end offsets** — the topic's *true* ends from
  :class:`spark_streaming.kafka_source.KafkaOffsetProbe` (Tansu reports a partition's end without
  its last record batch; the probe fetches past the reported end);
* **age of the oldest unwritten record** — the broker timestamp (producer create time) of the
  record at each partition's committed offset.

Formulas (per partition p, committed offset c_p, true end e_p, record timestamp τ):

    lag_records(p) = max(0, e_p − c_p)
    lag_seconds    = now − min_p { τ(record at c_p) : lag_records(p) > 0 }   (0 when no lag)
    dead_letter_rate = Δdlq / (Δdlq + Δpublished)   over a window (Δ of end − beginning offsets)
    reject_rate      = Σ rejects / Σ rows_in        over the sink commits in a window

The Spark job publishes the same numbers as Prometheus gauges; the Dagster
``stream_health_sensor`` turns them into asset check results and alerts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SINK_COMMITS = Path("marketflow_sink") / "batches"


def stream_checkpoint(checkpoint_root: Path, topic: str) -> Path:
    """The streaming job's checkpoint for ``topic`` (``$MARKETFLOW_DATA_DIR/checkpoints/...``)."""
    return Path(checkpoint_root) / "raw_prices" / topic


# ------------------------------------------------------------------------------------------------
# Checkpoint (files only)
# ------------------------------------------------------------------------------------------------
def batch_end_offsets(checkpoint: Path, batch_id: int) -> dict | None:
    """End offsets of ``batch_id`` from Spark's offset log (``{topic: {partition: offset}}``)."""
    path = Path(checkpoint) / "offsets" / str(batch_id)
    try:
        lines = path.read_text().splitlines()
        return json.loads(lines[2])
    except (OSError, IndexError, ValueError):
        return None


def sink_commits(checkpoint: Path) -> list[tuple[int, float, dict]]:
    """``(batch id, commit unix time, commit record)`` of the sink's kept commits, oldest first."""
    out = []
    folder = Path(checkpoint) / SINK_COMMITS
    if not folder.is_dir():
        return out
    for path in folder.glob("*.json"):
        if not path.stem.isdigit():
            continue
        try:
            out.append((int(path.stem), path.stat().st_mtime, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue  # pruned or being replaced right now
    return sorted(out, key=lambda c: c[0])


@dataclass(frozen=True)
class Committed:
    batch_id: int | None  # None: the job has not committed any batch yet
    offsets: dict[int, int]  # partition -> next offset to write
    committed_at: float | None  # unix time of that commit


def committed_offsets(checkpoint: Path, topic: str) -> Committed:
    """Offsets of the newest batch the sink committed (its end offsets in Spark's log)."""
    for batch_id, at, _record in reversed(sink_commits(checkpoint)):
        ends = batch_end_offsets(checkpoint, batch_id)
        if ends is None:
            continue
        offsets = {int(p): int(o) for p, o in (ends.get(topic) or {}).items()}
        return Committed(batch_id, offsets, at)
    return Committed(None, {}, None)


# ------------------------------------------------------------------------------------------------
# Pure math
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LagReport:
    records: dict[int, int]  # partition -> records beyond the committed offset
    seconds: float  # age of the oldest unwritten record; 0 without lag
    committed: Committed
    ends: dict[int, int] = field(default_factory=dict)
    oldest_unwritten: float | None = None  # unix time of that record

    @property
    def total(self) -> int:
        return sum(self.records.values())


def lag_records(committed: dict[int, int], ends: dict[int, int]) -> dict[int, int]:
    """``max(0, end − committed)`` per partition; a partition never committed counts from
    ``committed.get(p, 0)`` (callers pass beginning offsets for those)."""
    return {p: max(0, int(e) - int(committed.get(p, 0))) for p, e in sorted(ends.items())}


def lag_seconds(oldest_timestamps: Iterable[float], now: float) -> tuple[float, float | None]:
    """(age of the oldest of ``oldest_timestamps``, that timestamp); (0, None) when empty."""
    stamps = list(oldest_timestamps)
    if not stamps:
        return 0.0, None
    oldest = min(stamps)
    return max(0.0, now - oldest), oldest


def rate(part: float, other: float) -> float | None:
    """``part / (part + other)``; None when both are 0 (nothing happened)."""
    total = part + other
    return None if total <= 0 else part / total


def reject_rate(
    commits: Iterable[tuple[int, float, dict]], since: float
) -> tuple[float | None, int, int]:
    """(rejects / rows_in, rejects, rows_in) over the sink commits made at or after ``since``."""
    rejects = rows_in = 0
    for _batch, at, record in commits:
        if at >= since:
            rejects += int(record.get("rejects") or 0)
            rows_in += int(record.get("rows_in") or 0)
    return rate(rejects, rows_in - rejects), rejects, rows_in


# ------------------------------------------------------------------------------------------------
# Broker
# ------------------------------------------------------------------------------------------------
def first_record_timestamps(
    probe, starts: dict[int, int], timeout_s: float = 3.0
) -> dict[int, float]:
    """Unix time (broker record timestamp) of the first record at or after each start offset."""
    from marketflow_assets.kafka_client import read_each

    found: dict[int, float] = {}

    def take(partition: int, records: list) -> bool:
        if records:
            found[partition] = records[0].timestamp / 1000.0
        return bool(records)

    read_each(probe.consumer, probe.topic, starts, take, timeout_s, max_records=500)
    return found


def topic_totals(probe) -> int:
    """Records currently held by the probe's topic: Σ (true end − beginning); 0 if missing."""
    parts = probe.partitions()
    if not parts:
        return 0
    ends = probe.end_offsets(parts)
    begins = probe.beginning_offsets(parts)
    return sum(max(0, ends[p] - begins.get(p, 0)) for p in ends)


def measure_lag(checkpoint: Path, probe, now: float | None = None) -> LagReport:
    """Lag of the job owning ``checkpoint`` against the topic of ``probe`` (a
    :class:`~spark_streaming.kafka_source.KafkaOffsetProbe`). Raises on broker errors."""
    now = time.time() if now is None else now
    committed = committed_offsets(checkpoint, probe.topic)
    parts = probe.partitions()
    ends = probe.end_offsets(parts) if parts else {}
    starts = dict(committed.offsets)
    missing = [p for p in ends if p not in starts]
    if missing:  # partitions the job has not written yet: everything from the beginning
        starts.update(probe.beginning_offsets(missing))
    records = lag_records(starts, ends)
    behind = {p: starts[p] for p, n in records.items() if n > 0}
    stamps = first_record_timestamps(probe, behind) if behind else {}
    seconds, oldest = lag_seconds(stamps.values(), now)
    return LagReport(records, seconds, committed, ends, oldest)


def make_probe(bootstrap: str, topic: str, client_id: str = "marketflow-monitoring", security=None):
    """A :class:`KafkaOffsetProbe` with short timeouts (a monitor must not hang on a dead
    broker); ``security``: a :class:`~marketflow_assets.settings.KafkaSecurity`."""
    from marketflow_assets.kafka_client import KafkaOffsetProbe

    return KafkaOffsetProbe(
        bootstrap,
        topic,
        client_id=client_id,
        security=security,
        bootstrap_timeout_ms=5000,
    )
