"""Pieces every Marketflow check shares: thresholds (:class:`CheckSettings`, read by
``settings.py``), the evaluated time window, and :class:`Outcome` — the plain result of a
check function, independent of Dagster.

Check functions (``*_outcome``) take a psycopg2 connection or a pandas DataFrame and return an
:class:`Outcome`; the ``@dg.asset_check`` wrappers only gather inputs and call
:meth:`Outcome.to_result`. Tests call both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from marketflow_assets.settings import (  # noqa: F401 - re-exported for the checks
    ENV_ALERT_MIN_SEVERITY,
    ENV_ALERT_WEBHOOK,
    ENV_CHECK_WINDOW,
    ENV_FRESHNESS_ERROR,
    ENV_FRESHNESS_WARN,
    CheckSettings,
    load_check_settings,
)

#: Relative tolerance for floating-point bound checks (SMA within [min, max]).
REL_TOLERANCE = 1e-9
#: How many offending rows a failed check lists in its metadata.
SAMPLE_ROWS = 10

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock used by freshness checks (injectable: checks take a ``clock``)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Window:
    """Half-open time range ``[start, end)`` a check evaluates."""

    start: datetime
    end: datetime
    source: str  # "partition" or "latest data"

    def metadata(self) -> dict[str, Any]:
        return {
            "window_start": self.start.isoformat(),
            "window_end": self.end.isoformat(),
            "window_source": self.source,
        }


def latest_window(newest: datetime | None, hours: float) -> Window | None:
    """The last ``hours`` of data up to and including ``newest`` (None when there is no data)."""
    if newest is None:
        return None
    end = newest + timedelta(microseconds=1)
    return Window(end - timedelta(hours=hours), end, "latest data")


def partition_window(context: dg.AssetCheckExecutionContext | None) -> Window | None:
    """The time window of the partition(s) being materialized in this run, if any.

    A check that runs in the same run as a partition materialization (or a backfill) checks
    exactly that partition; a check run on its own checks the latest data instead.
    """
    if context is None:
        return None
    try:
        if not (context.has_partition_key or context.has_partition_key_range):
            return None
        tw = context.partition_time_window
    except Exception:  # no time-window partitions in this run
        return None
    return Window(tw.start, tw.end, "partition")


@dataclass(frozen=True)
class Outcome:
    """Result of one check function: plain data, converted to Dagster by :meth:`to_result`."""

    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR

    @property
    def skipped(self) -> bool:
        """True for :func:`no_data`: the window held nothing to check."""
        return bool(self.metadata.get("skipped"))

    def to_result(
        self,
        window: Window | None = None,
        *,
        asset_key: dg.AssetKey | None = None,
        check_name: str | None = None,
    ) -> dg.AssetCheckResult:
        metadata = dict(self.metadata)
        if window is not None:
            metadata.update(window.metadata())
        return dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=check_name,
            passed=self.passed,
            severity=self.severity,
            description=self.description,
            metadata=metadata,
        )

    def to_evaluation(
        self, asset_key: dg.AssetKey, check_name: str, window: Window | None = None
    ) -> dg.AssetCheckEvaluation:
        """The same result as a run-less evaluation event (reported from a sensor)."""
        result = self.to_result(window)
        return dg.AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=check_name,
            passed=result.passed,
            severity=result.severity,
            description=result.description,
            metadata=result.metadata,
        )


def report(context, outcome: Outcome, window: Window | None = None) -> dg.AssetCheckResult | None:
    """The check result of ``outcome`` in a run, or None when it was skipped (:func:`no_data`):
    a planned check without a result in a successful run is SKIPPED in Dagster, not passed."""
    if outcome.skipped:
        context.log.info(outcome.description)
        return None
    return outcome.to_result(window)


def no_data(what: str) -> Outcome:
    """A quality check on an empty window checks nothing: it was skipped. In a run,
    :func:`report` then yields no result, so Dagster records the check as SKIPPED (the UI's
    "Skipped"; the reason is in the run's log); a sensor's evaluation passes with ``skipped``
    in its metadata (run-less evaluations have no skipped state), which the dashboard shows as
    "skipped". Freshness reports missing data instead."""
    return Outcome(
        True,
        f"Skipped: no {what} in the checked window, so nothing was checked.",
        {"rows": 0, "skipped": True},
    )


def sample_table(rows: list[dict[str, Any]]) -> dg.MetadataValue:
    """Up to :data:`SAMPLE_ROWS` offending rows as a markdown table for the UI."""
    rows = rows[:SAMPLE_ROWS]
    if not rows:
        return dg.MetadataValue.md("(none)")
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def _fmt(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)
