"""Alerts raised by the ingest process itself: polls failing, and their recovery.

A dead broker or an unreachable CoinGecko is seen first (and, when Dagster is down, only) by the
ingest loop, so it alerts through the same
:func:`~marketflow_assets.monitoring.alerts.emit_alert`
as the Dagster alert sensor. State machine, one message per state change:

* ``broker=True`` -> ``FAILURE`` at once (ingest itself reports the broker through the
  ``ingest:broker`` :class:`EdgeAlert` instead: its polls go on into the spool);
* ``source_failures_to_alert`` (2) failed fetches in a row -> ``FAILURE`` (one 429 is no news);
* the first ok poll after an alerted failure -> ``RESOLVED``;
* a change within ``cooldown`` seconds of the previous alert is held until a later poll.

:class:`EdgeAlert` is the two-edge alert of one condition (issue #27): the broker away from
ingest's point of view (``ingest:broker``), the spool past 80 % of its cap (``ingest:spool``),
the spool at its cap (``ingest:spool_cap``), the spool's disk full (``ingest:spool_disk``). One
message when the condition starts, one when it ends, nothing in between.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

KEY = "ingest:polls"
OK = "SUCCESS"
FAILED = "FAILURE"


class PollAlerts:
    def __init__(
        self,
        emit: Callable[[str, str, str], object],
        *,
        cooldown: float = 60.0,
        source_failures_to_alert: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.emit = emit  # emit(previous, state, text)
        self.cooldown = cooldown
        self.source_failures_to_alert = source_failures_to_alert
        self.clock = clock
        self.alerted = OK
        self.last_alert = float("-inf")
        self.failed_in_row = 0

    def poll(self, ok: bool, detail: str = "", *, broker: bool = False) -> str | None:
        """Record one poll's outcome; returns the alert text when one was sent."""
        if ok:
            self.failed_in_row = 0
            state = OK
        else:
            self.failed_in_row += 1
            urgent = broker or self.failed_in_row >= self.source_failures_to_alert
            state = FAILED if urgent else self.alerted
        if state == self.alerted or self.clock() - self.last_alert < self.cooldown:
            return None
        if state == FAILED:
            text = (
                f"FAILURE: Marketflow ingest polls failing ({self.failed_in_row} in a row): "
                f"{detail}"
            )
        else:
            text = "RESOLVED: Marketflow ingest polls succeed again."
        previous, self.alerted, self.last_alert = self.alerted, state, self.clock()
        self.emit(previous, state, text)
        return text


class EdgeAlert:
    """One alert when a condition starts (``FAILURE: ...``), one when it ends
    (``RESOLVED: ...``); thread-safe, so the poll loop and the sender can share one."""

    def __init__(self, emit: Callable[[str, str, str], object]):
        self.emit = emit  # emit(previous, state, text)
        self.active = False
        self._lock = threading.Lock()

    def _change(self, active: bool, text: str) -> bool:
        with self._lock:
            if self.active == active:
                return False
            self.active = active
        previous, state = (OK, FAILED) if active else (FAILED, OK)
        self.emit(previous, state, f"{state_word(state)}: {text}")
        return True

    def start(self, text: str) -> bool:
        """The condition began: alert (once); returns whether an alert was sent."""
        return self._change(True, text)

    def end(self, text: str) -> bool:
        """The condition is over: alert (once, and only after a start)."""
        return self._change(False, text)


def state_word(state: str) -> str:
    return "FAILURE" if state == FAILED else "RESOLVED"


def emit_to_alert_path(
    webhook_url: str | None, key: str = KEY
) -> Callable[[str, str, str], object]:
    """``emit`` for :class:`PollAlerts` and :class:`EdgeAlert` through the one alert function
    of the project, under the alert ``key``."""
    from marketflow_assets.monitoring.alerts import Alert, emit_alert

    def emit(previous: str, state: str, text: str) -> bool:
        return emit_alert(Alert(key, previous, state, text), webhook_url)

    return emit
