"""The sending side of ``marketflow ingest``: a thread of its own, so polling never waits on Kafka.

The poll loop spools each poll (fsynced) and hands it to :class:`Sender`; it never blocks on a
send, a retry or a resend, so a poll is taken at every interval whatever the broker does
(issue #27: heal, don't halt). The sender thread sends the polls in order, resends the spool
(at start-up, when the broker lost the topic, at every reconcile) and tracks the broker:

* **away**: a poll none of whose messages the broker acknowledged after every retry (or a resend
  that got nothing through). One alert (``ingest:broker``) says since when and why; from then
  on the polls that arrive only wait (in the spool; at most ``max_queued`` of them also in
  memory) and every ``retry_s`` a probe reconnects (a new producer, the topics ensured).
* **back**: the first probe that reconnects and gets a resend acknowledged. The polls that waited
  in the spool are resent, those still in memory follow in order, and one alert says how long the
  broker was away and how many polls waited.

:meth:`Sender.close` drains what is queued (a finite run), making one last probe when the broker
is away; what it cannot send stays in the spool and is reported as not acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from marketflow_assets.ingest.publish import PublishResult
from marketflow_assets.ingest.validate import ValidatedPoll
from marketflow_assets.kafka_client import KafkaAccessError

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """One poll on its way: validated, spooled (unless ``spooled`` is False), not yet sent."""

    validated: ValidatedPoll
    poll: Any = None  # the source's poll (line number, raw records) for the caller's callback
    spooled: bool = True
    taken: float = field(default_factory=time.monotonic)
    #: ``time.monotonic()`` at each step after ``taken``: "validated", "spooled" (on disk, or
    #: past the spool when there is none) and "sending" (the sender thread took it)
    steps: dict[str, float] = field(default_factory=dict)

    def step_times(self, end: float) -> str:
        """Seconds each step took up to ``end``, e.g. ``validate 0.10, spool 0.02, queue 0.00,
        publish 0.31`` (the steps recorded only)."""
        names = {"validated": "validate", "spooled": "spool", "sending": "queue"}
        parts, last = [], self.taken
        for step, name in names.items():
            if step in self.steps:
                parts.append(f"{name} {self.steps[step] - last:.2f}")
                last = self.steps[step]
        if "sending" in self.steps:
            parts.append(f"publish {end - last:.2f}")
        return ", ".join(parts)


def unsent(pending: Pending, why: str) -> PublishResult:
    """The result of a poll that was never sent: every message counts as not acknowledged."""
    v = pending.validated
    return PublishResult(failures=[f"key={m.key}: {why}" for m in [*v.good, *v.bad]])


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class _NoAlert:
    def start(self, text: str) -> bool:
        return False

    def end(self, text: str) -> bool:
        return False


class Sender:
    """Sends the spooled polls of ``delivery`` (a :class:`~.delivery.Delivery`) in a thread."""

    def __init__(
        self,
        delivery,
        on_sent: Callable[[Pending, PublishResult], None],
        *,
        backlog: tuple[list, str] = ([], ""),
        away: str | None = None,
        broker_alert=None,
        retry_s: float = 5.0,
        max_queued: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.delivery = delivery
        self.on_sent = on_sent
        self.broker_alert = broker_alert or _NoAlert()
        self.backlog = backlog  # (spooled polls of earlier runs to resend first, why)
        self.retry_s = retry_s
        self._refused: str | None = None  # the last refusal logged (KafkaAccessError)
        self._resending = False  # the broker is back and the spool is being resent
        self.max_queued = max(1, max_queued)
        self.clock = clock
        self.away_since: float | None = None  # clock() when the broker went away
        self.waited_polls = 0  # polls taken while the broker was away (they wait in the spool)
        self.outages: list[tuple[float, int]] = []  # (seconds away, polls that waited) per outage
        self._queue: deque[Pending] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="ingest-sender", daemon=True)
        self._away_at_start = away  # why the broker was unreachable when ingest started

    @property
    def bootstrap(self) -> str:
        return self.delivery.publisher.bootstrap

    # ----------------------------------------------------------------------------------------
    # The poll loop's side: never blocks on the broker
    # ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, pending: Pending) -> None:
        """Queue one spooled poll for sending (returns at once)."""
        shed = None
        with self._cond:
            if self.away_since is not None:
                self.waited_polls += 1
                # not while the broker is back and the spool is being resent: that resend has
                # already left out the queued polls, so a poll shed now would wait for the next
                # reconciliation (a minute) instead of being sent in a moment
                full = len(self._queue) >= self.max_queued and not self._resending
                if full and self._queue[0].spooled:
                    shed = self._queue.popleft()  # it waits in the spool alone
            self._queue.append(pending)
            self._cond.notify_all()
        if shed is not None:
            self.on_sent(shed, unsent(shed, "the broker is away; waits in the spool"))

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued (one last probe when the broker is away), then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ----------------------------------------------------------------------------------------
    # The sender thread
    # ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        if self._away_at_start is not None:
            self._went_away(f"unreachable at start-up: {self._away_at_start}", None)
        polls, why = self.backlog
        self.backlog = ([], "")
        self._guard("resending the spool at start-up", lambda: self.delivery.resend(polls, why))
        while True:
            if self.away_since is not None:
                if not self._closing:
                    self._wait(self.retry_s)
                if self._probe():
                    continue
                if self._closing:
                    self._give_up()
                    break
                continue
            item = self._take()
            if item is None:
                if self._closing:
                    self._guard("checking the topic before exiting", self.delivery.tick)
                    break
                self._guard("reconciling the spool", self.delivery.tick)
                continue
            self._send(item)

    def _wait(self, seconds: float) -> None:
        with self._cond:
            if not self._closing:
                self._cond.wait(seconds)

    def _take(self) -> Pending | None:
        """The next queued poll; None after a 1 s wait without one (or when closing)."""
        with self._cond:
            if not self._queue and not self._closing:
                self._cond.wait(1.0)
            return self._queue.popleft() if self._queue else None

    def _send(self, item: Pending) -> None:
        if not item.validated.good and not item.validated.bad:  # nothing to send (a failed poll)
            self._callback(item, PublishResult())
            return
        item.steps["sending"] = time.monotonic()
        try:
            result = self.delivery.send(item.validated)
        except Exception as exc:  # noqa: BLE001 - the sender thread must go on
            log.exception("poll %s: sending failed", item.validated.ts)
            result = unsent(item, f"{type(exc).__name__}: {exc}")
        if result.failures and not result.good_acked and not result.bad_acked:
            self._went_away(result.failures[0], item)
        self._callback(item, result)
        if self.away_since is None:
            self._guard("reconciling the spool", self.delivery.tick)

    def _callback(self, item: Pending, result: PublishResult) -> None:
        try:
            self.on_sent(item, result)
        except Exception:  # noqa: BLE001 - a bookkeeping error must not stop the sends
            log.exception("poll %s: bookkeeping after the send failed", item.validated.ts)

    def _guard(self, what: str, resend: Callable[[], tuple[int, int]]) -> None:
        """Run a resend; one that got nothing through means the broker is away."""
        try:
            acked, failed = resend()
        except Exception as exc:  # noqa: BLE001 - the sender thread must go on
            log.warning("spool: %s failed: %s", what, exc)
            return
        if failed and not acked and self.away_since is None:
            self._went_away(f"{failed} spooled record(s) not acknowledged while {what}", None)

    # ----------------------------------------------------------------------------------------
    def _went_away(self, why: str, item: Pending | None) -> None:
        with self._cond:
            self.away_since = self.clock()
            self.waited_polls = (1 if item is not None else 0) + len(self._queue)
        log.error(
            "Kafka at %s is away (%s): polling goes on, every poll waits in the spool; "
            "reconnecting every %g s",
            self.bootstrap,
            why,
            self.retry_s,
        )
        self.broker_alert.start(
            f"Marketflow ingest cannot send to Kafka at {self.bootstrap}: {why}. Polling goes "
            "on; the polls wait in the spool and are sent when the broker is back."
        )

    def _probe(self) -> bool:
        """Reconnect and resend what waits in the spool; True when the broker is back."""
        try:
            self.delivery.publisher.reconnect()
        except KafkaAccessError as exc:  # a configuration problem: said once, polls still spooled
            if str(exc) != self._refused:
                self._refused = str(exc)
                log.error("%s; polls wait in the spool until the configuration is fixed", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - ConfigError / KafkaError: still away
            log.info("Kafka at %s still away: %s", self.bootstrap, exc)
            return False
        self._refused = None
        with self._cond:
            in_memory = {p.validated.ts for p in self._queue}
            self._resending = True  # the queued polls are sent next: none is shed meanwhile
        try:
            acked, failed = self.delivery.resend_unacked(
                "waited in the spool while the broker was away", exclude=in_memory
            )
        except Exception as exc:  # noqa: BLE001
            log.warning("spool: resend after reconnecting failed: %s", exc)
            failed, acked = 1, 0
        with self._cond:
            self._resending = False  # with away_since cleared below: no gap for a shed
            if failed and not acked:
                return False
            since, waited = self.away_since, self.waited_polls
            self.away_since = None
            self.waited_polls = 0
        away = self.clock() - since
        self.outages.append((away, waited))
        text = (
            f"Kafka at {self.bootstrap} is back after {duration(away)} away; {waited} poll(s) "
            f"waited in the spool and are sent ({acked} spooled record(s) resent at once"
            + (f", {failed} not acknowledged yet" if failed else "")
            + ")"
        )
        log.warning("%s", text)
        self.broker_alert.end(f"Marketflow ingest: {text}.")
        return True

    def _give_up(self) -> None:
        """Closing with the broker away: what is queued stays in the spool, reported unsent."""
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for item in left:
            self._callback(item, unsent(item, "the broker is away; kept in the spool"))
        log.error(
            "Kafka at %s still away at exit: %d poll(s) not sent are kept in the spool "
            "(resent when ingest starts again)",
            self.bootstrap,
            len(left),
        )
