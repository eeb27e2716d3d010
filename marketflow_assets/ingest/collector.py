"""The poll loop's bookkeeping: what ``marketflow ingest`` does with each poll and each answer.

:class:`Collector` takes each poll of a source in turn (validate, log rejects, spool, hand to the
sender thread, alert on a failed source) and, on the sender thread, books each broker answer
(progress of a resumable replay, ``--record``, metrics, log lines). It keeps the run's
:class:`Totals`, from which a finite run's exit code follows. The command
(:mod:`marketflow_assets.ingest.command`) wires the source, the spool, the sender and this.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import time

from marketflow_assets import contract
from marketflow_assets.ingest.delivery import Delivery
from marketflow_assets.ingest.publish import PublishResult
from marketflow_assets.ingest.sender import Pending, Sender, unsent
from marketflow_assets.ingest.sources import Poll, ReplayRecorder
from marketflow_assets.ingest.validate import ValidatedPoll, validate_poll

log = logging.getLogger(__name__)

_KEY = operator.attrgetter("key")
_VALUE = operator.attrgetter("value")
_LAST_UPDATED = operator.methodcaller("get", "last_updated")  # optional in the contract

#: A poll whose ``ts`` is at most this old when acknowledged was taken now (a live or simulated
#: poll, not a replayed one): its acknowledgement line says how long after its ``ts`` it came.
LIVE_POLL_AGE_S = 3600.0


def poll_age(ts: str | None, now: float | None = None) -> float | None:
    """Seconds from a poll's ``ts`` to ``now`` (default: the wall clock) when the poll was taken
    just now (0 to :data:`LIVE_POLL_AGE_S`), else None (a replayed poll, an unreadable ``ts``)."""
    try:
        age = (time.time() if now is None else now) - contract.time_us(ts) / 1e6
    except (ValueError, TypeError):
        return None
    return age if 0.0 <= age <= LIVE_POLL_AGE_S else None


@dataclasses.dataclass
class Totals:
    """Counts of one ingest run (the closing log line and a finite run's exit code)."""

    polls: int = 0
    failed_polls: int = 0
    partial: int = 0
    good: int = 0
    bad: int = 0
    unacked: int = 0

    def complete(self) -> bool:
        """Every poll completed and every message was acknowledged."""
        return not (self.failed_polls or self.partial or self.unacked)


class Collector:
    """Takes polls on the poll loop (:meth:`take`), books broker answers on the sender thread
    (:meth:`on_sent`). ``spool`` is None when the spool is off; ``recorder`` when there is no
    ``--record``; ``metrics`` and ``poll_alerts`` come from the command's monitoring."""

    def __init__(
        self,
        delivery: Delivery,
        spool,
        recorder: ReplayRecorder | None,
        metrics,
        poll_alerts,
    ):
        self.delivery = delivery
        self.spool = spool
        self.recorder = recorder
        self.metrics = metrics
        self.poll_alerts = poll_alerts
        self.totals = Totals()
        self._last_updates: dict[str | None, str] = {}  # coin id -> last_updated, previous poll

    # -- the poll loop ----------------------------------------------------------------------

    def take(self, poll: Poll, sender: Sender) -> None:
        """Validate, spool (fsynced) and queue one poll for the sender: polling never waits
        on Kafka."""
        taken = time.monotonic()  # validation, spool and publish count from here
        self.totals.polls += 1
        if poll.records is None:
            self._take_failed(poll, sender)
            return
        if poll.error:  # a live poll whose later page failed: the pages that came
            self.totals.partial += 1
            log.error(
                "poll %s: publishing the %d record(s) that came; %s",
                poll.ts,
                len(poll.records),
                poll.error,
            )
        validated = validate_poll(poll.records, poll.ts)
        steps = {"validated": time.monotonic()}
        for message in validated.bad:
            log.warning(
                "poll %s: rejected %s: %s (%s)",
                poll.ts,
                message.key or "record without id",
                message.value["reason"],
                message.value["detail"],
            )
        for ready in self.delivery.spool_poll(Pending(validated, poll, taken=taken, steps=steps)):
            ready.steps.setdefault("spooled", time.monotonic())
            self._record_spooled(ready)
            sender.submit(ready)
        if poll.error:
            self.poll_alerts.poll(False, f"the source failed part of the poll: {poll.error}")
        else:
            self.poll_alerts.poll(True)
        self._log_taken(poll, validated, sender)

    def _take_failed(self, poll: Poll, sender: Sender) -> None:
        self.totals.failed_polls += 1
        log.error("poll %s failed and was skipped: %s", poll.ts or poll.label, poll.error)
        self.metrics.poll_failed()
        self.poll_alerts.poll(False, f"the source failed: {poll.error}")
        # a broken line stays broken: its progress is saved in turn, after the polls before it
        for ready in self.delivery.spool_poll(Pending(ValidatedPoll(poll.ts), poll)):
            sender.submit(ready)

    def _log_taken(self, poll: Poll, validated: ValidatedPoll, sender: Sender) -> None:
        # C-level maps: this runs while the sender publishes the poll (15,000 coins: ~5 ms)
        good = validated.good
        updates = dict(zip(map(_KEY, good), map(_LAST_UPDATED, map(_VALUE, good)), strict=True))
        unchanged = sum(map(operator.eq, map(self._last_updates.get, updates), updates.values()))
        self._last_updates = updates
        log.info(
            "poll %s: %d good, %d bad%s; %d poll(s) queued for Kafka",
            poll.ts,
            len(validated.good),
            len(validated.bad),
            f"; {unchanged} coin(s) unchanged since the previous poll" if unchanged else "",
            sender.queued(),
        )
        if updates and unchanged == len(updates):
            log.info(
                "poll %s: same data as the previous poll (a cached CoinGecko answer); "
                "published again with the new ts",
                poll.ts,
            )

    def _record_spooled(self, pending: Pending) -> None:
        """A poll is on disk in the spool: from here on it reaches raw Parquet, so ``--record``
        writes it now, whatever the broker does."""
        v, poll, recorder = pending.validated, pending.poll, self.recorder
        if recorder is None or self.spool is None or not pending.spooled or poll is None:
            return
        if poll.records is not None and v.good and poll.ts != recorder.last_ts:
            recorder.append(poll.ts, [m.raw for m in v.good])  # not the dead letters

    # -- the sender thread ------------------------------------------------------------------

    def on_sent(self, pending: Pending, result: PublishResult) -> None:
        """Bookkeeping of one poll once the broker answered."""
        poll = pending.poll
        if poll.records is None:  # a failed poll, in its turn: only its progress
            self.delivery.save_progress(poll.line, True)
            return
        # Without a spool, recorded only once acknowledged (with one, when spooled), and never
        # twice (a restarted replay may publish the last poll of the previous run again).
        recorder = self.recorder
        if self.spool is None and recorder is not None and result.acked:
            if poll.ts != recorder.last_ts:
                recorder.append(poll.ts, [m.raw for m in result.acked])
        self.delivery.save_progress(
            poll.line, result.ok and (pending.spooled or self.spool is None)
        )
        self.totals.good += result.good_acked
        self.totals.bad += result.bad_acked
        self.totals.unacked += len(result.failures)
        waits = bool(result.failures) and "waits in the spool" in result.failures[0]
        if result.failures:
            (log.info if waits else log.error)(
                "poll %s: %d message(s) not acknowledged%s: %s",
                poll.ts,
                len(result.failures),
                " (kept in the spool)" if pending.spooled and self.spool is not None else "",
                result.failures[0],
            )
        now = time.monotonic()
        took = now - pending.taken
        self.metrics.poll_published(
            result.good_acked,
            result.bad_acked,
            len(result.failures),
            took,
            time.time(),
            spooled=bool(result.failures) and waits and pending.spooled,
        )
        age = poll_age(poll.ts)
        steps = pending.step_times(now)
        log.info(
            "poll %s: %d + %d acknowledged%s (%.2f s after it was taken%s%s)",
            poll.ts,
            result.good_acked,
            result.bad_acked,
            f", {len(result.failures)} NOT acknowledged" if result.failures else "",
            took,
            f", {age:.2f} s after its ts" if age is not None else "",
            f": {steps}" if steps else "",
        )

    # -- the end ----------------------------------------------------------------------------

    def finish(self) -> Totals:
        """Count what the disk never took (a full disk) as lost; log the run's totals."""
        for pending in self.delivery.held:
            result = unsent(pending, "never spooled (disk full): lost")
            self.totals.unacked += len(result.failures)
            log.error("poll %s: never spooled nor sent (disk full); lost", pending.validated.ts)
        t = self.totals
        log.info(
            "ingest finished: %d poll(s), %d failed, %d incomplete; %d messages and %d dead "
            "letters acknowledged, %d not acknowledged",
            t.polls,
            t.failed_polls,
            t.partial,
            t.good,
            t.bad,
            t.unacked,
        )
        return t
