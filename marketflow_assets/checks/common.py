"""Pieces every Marketflow check shares: thresholds from the environment, the evaluated time
window, and :class:`Outcome` — the plain result of a check function, independent of Dagster.

Check functions (``*_outcome``) take a psycopg2 connection or a pandas DataFrame and return an
:class:`Outcome`; the ``@dg.asset_check`` wrappers only gather inputs and call
:meth:`Outcome.to_result`. Tests call both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from marketflow_assets.settings import ConfigError

# Environment variables (documented in the README's configuration table).
ENV_FRESHNESS_WARN = "MARKETFLOW_FRESHNESS_WARN_SECONDS"
ENV_FRESHNESS_ERROR = "MARKETFLOW_FRESHNESS_ERROR_SECONDS"
ENV_CHECK_WINDOW = "MARKETFLOW_CHECK_WINDOW_HOURS"
ENV_ALERT_WEBHOOK = "MARKETFLOW_ALERT_WEBHOOK_URL"
ENV_ALERT_MIN_SEVERITY = "MARKETFLOW_ALERT_MIN_SEVERITY"

DEFAULT_FRESHNESS_WARN_SECONDS = 120.0  # 4 missed 30 s polls
DEFAULT_FRESHNESS_ERROR_SECONDS = 300.0  # 10 missed polls: the stage is down
DEFAULT_CHECK_WINDOW_HOURS = 1.0

#: Relative tolerance for floating-point bound checks (SMA within [min, max]).
REL_TOLERANCE = 1e-9
#: How many offending rows a failed check lists in its metadata.
SAMPLE_ROWS = 10

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock used by freshness checks (injectable: checks take a ``clock``)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class CheckSettings:
    """Check thresholds and alert target, read from the environment at evaluation time."""

    freshness_warn_seconds: float = DEFAULT_FRESHNESS_WARN_SECONDS
    freshness_error_seconds: float = DEFAULT_FRESHNESS_ERROR_SECONDS
    window_hours: float = DEFAULT_CHECK_WINDOW_HOURS
    alert_webhook_url: str | None = field(default=None, repr=False)
    #: "WARN": alert on warnings and errors; "ERROR": a check in WARN counts as healthy.
    alert_min_severity: str = "WARN"

    @property
    def window(self) -> timedelta:
        return timedelta(hours=self.window_hours)


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}={raw!r} must be a positive number")
    return value


def load_check_settings(env: Mapping[str, str] | None = None) -> CheckSettings:
    """Read the check settings from ``env`` (default ``os.environ``); raises ConfigError."""
    env = os.environ if env is None else env
    warn = _positive_float(env, ENV_FRESHNESS_WARN, DEFAULT_FRESHNESS_WARN_SECONDS)
    error = _positive_float(env, ENV_FRESHNESS_ERROR, DEFAULT_FRESHNESS_ERROR_SECONDS)
    if error < warn:
        raise ConfigError(
            f"{ENV_FRESHNESS_ERROR}={error:g} must be >= {ENV_FRESHNESS_WARN}={warn:g}"
        )
    url = (env.get(ENV_ALERT_WEBHOOK) or "").strip() or None
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{ENV_ALERT_WEBHOOK} must be an http(s):// URL")
    severity = (env.get(ENV_ALERT_MIN_SEVERITY) or "WARN").strip().upper()
    if severity not in ("WARN", "ERROR"):
        raise ConfigError(f"{ENV_ALERT_MIN_SEVERITY} must be WARN or ERROR, not {severity!r}")
    return CheckSettings(
        alert_min_severity=severity,
        freshness_warn_seconds=warn,
        freshness_error_seconds=error,
        window_hours=_positive_float(env, ENV_CHECK_WINDOW, DEFAULT_CHECK_WINDOW_HOURS),
        alert_webhook_url=url,
    )


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


def no_data(what: str) -> Outcome:
    """Quality checks pass vacuously on an empty window (freshness reports missing data)."""
    return Outcome(True, f"No {what} in the checked window; nothing to validate.", {"rows": 0})


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
