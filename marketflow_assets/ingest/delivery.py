"""The delivery engine of ``marketflow ingest``: spool, send, acknowledge, reconcile.

:class:`Delivery` owns the write-ahead spool (:mod:`marketflow_assets.ingest.spool`) and the
:class:`~marketflow_assets.ingest.publish.Publisher`: the poll loop spools each poll
(:meth:`Delivery.spool_poll`), the sender thread (:mod:`marketflow_assets.ingest.sender`) sends
it (:meth:`Delivery.send`) and resends what the topic as it is now lacks. ``command.py`` only
parses arguments and wires the source, this engine and the sender together.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

from marketflow_assets.ingest.progress import ReplayProgress
from marketflow_assets.ingest.publish import Publisher, PublishResult
from marketflow_assets.ingest.sender import Pending, unsent
from marketflow_assets.ingest.spool import MB, Spool, SpoolBusy, SpooledPoll, count_records
from marketflow_assets.ingest.validate import ValidatedPoll
from marketflow_assets.settings import ConfigError, Settings

log = logging.getLogger(__name__)


class Delivery:
    """Spool, send, acknowledge and progress of each poll; reconcile and resends of the spool.

    * :meth:`spool_poll` (the poll loop): the poll is appended to the spool and fsynced. A poll
      that cannot be spooled (disk full, ``MARKETFLOW_SPOOL_MIN_FREE_MB``) is never sent: it is
      held in memory (the newest ``hold_max`` polls; an older one is dropped, logged) and alerted
      once, and spooled, then sent, in order as soon as there is room.
    * :meth:`send` (the sender thread): the spooled poll is sent (with retries); the records the
      broker acknowledged get an ack marker.
    * :meth:`save_progress`: a replay line is saved only when its whole poll was acknowledged;
      after a line that was not, the saved position stays put for the rest of the run (a restart
      resumes at the first line not delivered; what follows it is deduplicated by Spark).
    * :meth:`start` and :meth:`tick` (the sender thread) resend the spooled records that raw
      Parquet lacks and the topic *as it is now* never acknowledged: at start-up, at once when
      the broker lost the topic (its Kafka topic id changed, an acknowledged offset went back, or
      the topic had to be created again), else every ``reconcile_s`` after pruning the records
      found in raw Parquet. After an in-memory broker's restart that is every spooled record.
    """

    def __init__(
        self,
        publisher: Publisher,
        spool: Spool | None,
        raw_dir: Path,
        *,
        reconcile_s: float = 60.0,
        progress: ReplayProgress | None = None,
        clock=time.monotonic,
        disk_alert=None,
        hold_max: int = 20,
    ):
        self.publisher = publisher
        self.spool = spool
        self.raw_dir = raw_dir
        self.reconcile_s = reconcile_s
        self.progress = progress
        self.progress_blocked = False
        self.clock = clock
        self.next_reconcile = clock() + reconcile_s
        self.disk_alert = disk_alert
        self.hold_max = max(1, hold_max)
        self.held: deque[Pending] = deque()  # polls not spooled yet (disk full): never sent
        self._set_topic_id(publisher.topic_id())

    def _set_topic_id(self, topic_id: str | None) -> None:
        self.topic_id = topic_id
        if self.spool is not None:
            self.spool.topic_id = topic_id  # whose acks count when the cap drops polls

    # ----------------------------------------------------------------------------------------
    def spool_poll(self, pending: Pending) -> list[Pending]:
        """Spool ``pending`` after the polls held before it; returns the polls now on disk (in
        order), which may be sent. Never raises for a spool failure."""
        if self.spool is None:
            pending.spooled = False
            return [pending]
        self.held.append(pending)
        ready: list[Pending] = []
        while self.held:
            head = self.held[0]
            v = head.validated
            if not v.good and not v.bad:  # nothing to spool (a failed poll): in its turn
                ready.append(self.held.popleft())
                continue
            try:
                self.spool.append_poll(v.ts, v.good, v.bad)
            except ValueError as exc:  # a value JSON cannot hold: it never will
                self.held.popleft()
                log.error("poll %s: cannot be spooled (%s); dropped, not sent", v.ts, exc)
                continue
            except OSError as exc:
                self._hold_failed(exc)
                return ready
            ready.append(self.held.popleft())
        if self.disk_alert is not None and self.disk_alert.end(
            f"Marketflow ingest writes its spool {self.spool.dir} again; held polls spooled"
        ):
            log.warning("spool: writable again; the held polls are spooled and sent")
        return ready

    def _hold_failed(self, exc: OSError) -> None:
        dropped = []
        while len(self.held) > self.hold_max:
            dropped.append(self.held.popleft().validated.ts)
        if dropped:
            log.error(
                "spool: %d held poll(s) dropped (never spooled nor sent, lost): %s",
                len(dropped),
                ", ".join(dropped),
            )
        log.error(
            "poll %s: could not write the spool %s (%s); NOT sent: %d poll(s) held in memory "
            "until the spool takes them",
            self.held[-1].validated.ts,
            self.spool.dir,
            exc,
            len(self.held),
        )
        if self.disk_alert is not None:
            self.disk_alert.start(
                f"Marketflow ingest cannot write its spool {self.spool.dir}: {exc}. Polls are "
                f"held in memory (the newest {self.hold_max}) and not sent until they can be "
                "spooled; free disk space."
            )

    def send(self, validated: ValidatedPoll) -> PublishResult:
        """Send one spooled poll and mark what the broker acknowledged."""
        result = self.publisher.publish(validated)
        self._ack(validated.ts, result)
        return result

    def deliver(self, validated: ValidatedPoll) -> tuple[PublishResult, bool]:
        """Spool then send one poll in the caller's thread; returns the send result and whether
        it is on disk (a poll that could not be spooled is held, not sent)."""
        ready = self.spool_poll(Pending(validated))
        if not ready:
            return unsent(Pending(validated), "not spooled: held, not sent"), False
        results = [self.send(p.validated) for p in ready]
        return results[-1], ready[-1].spooled or self.spool is None

    def _ack(self, ts: str, result: PublishResult) -> None:
        if self.spool is None or not result.acked:
            return
        try:  # the topic id noted before the send: a topic re-created since does not get them
            self.spool.ack(ts, result.acked, result.topic_id)
        except OSError as exc:  # the marker only spares a resend
            log.warning("poll %s: could not write the ack marker (%s)", ts, exc)

    def save_progress(self, line: int | None, delivered: bool) -> None:
        if self.progress is None or line is None or self.progress_blocked:
            return
        if not delivered:
            self.progress_blocked = True
            log.warning(
                "replay: line %d was not fully acknowledged; the saved position stays before "
                "it for the rest of this run (a restart resumes there)",
                line,
            )
            return
        self.progress.save(line)

    # ----------------------------------------------------------------------------------------
    def resend(self, polls: list[SpooledPoll], why: str) -> tuple[int, int]:
        """Send ``polls`` again; returns (records acknowledged, records not acknowledged)."""
        acked = failed = 0
        if not polls:
            return 0, 0
        log.info(
            "spool: resending %d record(s) of %d poll(s) (%s)",
            count_records(polls),
            len(polls),
            why,
        )
        for k, poll in enumerate(polls):
            result = self.publisher.publish(ValidatedPoll(poll.ts, good=poll.messages()))
            self._ack(poll.ts, result)
            acked += result.good_acked
            failed += len(result.failures)
            if result.failures and not result.good_acked:
                # the broker takes nothing (after every retry): do not stall on the other polls
                failed += count_records(polls[k + 1 :])
                break
        log.info(
            "spool: %d record(s) resent and acknowledged%s",
            acked,
            f", {failed} NOT acknowledged (kept in the spool)" if failed else "",
        )
        return acked, failed

    def _prune(self) -> None:
        """Drop the spooled records found in raw Parquet (a failure is logged, not raised)."""
        try:
            removed, kept = self.spool.prune(self.raw_dir)
        except Exception as exc:  # noqa: BLE001 - a reconcile must not stop ingest
            log.warning("spool: could not check %s against raw Parquet: %s", self.raw_dir, exc)
            return
        if removed:
            log.info(
                "spool: %d record(s) are in raw Parquet and left the spool; %d kept", removed, kept
            )

    def start(self, *, everything: bool = False) -> tuple[int, int]:
        """Resend what an earlier run spooled, raw Parquet lacks and this topic never took
        (``everything``: whether the topic took it or not)."""
        return self.resend(*self.backlog(everything=everything))

    def backlog(self, *, everything: bool = False) -> tuple[list[SpooledPoll], str]:
        """What :meth:`start` resends, and why: read before the first poll of this run is
        spooled, so that poll is not taken for one of an earlier run."""
        if self.spool is None:
            return [], ""
        self.publisher.topic_reset = False
        self._set_topic_id(self.publisher.topic_id())
        self._prune()
        if everything:
            return self.spool.polls(), "--replay-spool: not yet in raw Parquet"
        return (
            self.spool.unacked(self.topic_id),
            "spooled earlier, not in raw Parquet nor in the topic as it is now",
        )

    def tick(self) -> tuple[int, int]:
        """Resend at once when the broker lost the topic, else reconcile when due."""
        if self.spool is None:
            return 0, 0
        topic_id = self.publisher.topic_id()
        lost = self.publisher.topic_reset or topic_id != self.topic_id
        if not lost and self.clock() < self.next_reconcile:
            return 0, 0
        if lost:
            log.warning(
                "Kafka topic %s was re-created (topic id %s -> %s): resending the spool",
                self.publisher.topic,
                self.topic_id,
                topic_id,
            )
        forget_acks = self.publisher.topic_reset and topic_id is None  # no ids: trust no ack
        self.publisher.topic_reset = False
        self._set_topic_id(topic_id)
        self.next_reconcile = self.clock() + self.reconcile_s
        self._prune()
        polls = self.spool.polls() if forget_acks else self.spool.unacked(topic_id)
        why = "the broker lost the topic" if lost else "not acknowledged by the topic"
        return self.resend(polls, why)

    def resend_unacked(self, why: str, exclude: set[str] = frozenset()) -> tuple[int, int]:
        """Resend the spooled records the topic as it is now never acknowledged, except the
        polls whose ``ts`` is in ``exclude`` (still queued in memory: sent next)."""
        if self.spool is None:
            return 0, 0
        topic_id = self.publisher.topic_id()
        forget_acks = self.publisher.topic_reset and topic_id is None
        self.publisher.topic_reset = False
        self._set_topic_id(topic_id)
        self.next_reconcile = self.clock() + self.reconcile_s
        polls = self.spool.polls() if forget_acks else self.spool.unacked(topic_id)
        return self.resend([p for p in polls if p.ts not in exclude], why)


def open_spool(settings: Settings, edges: dict | None = None) -> Spool | None:
    if settings.spool_dir is None:
        return None
    edges = edges or {}
    try:
        return Spool(
            settings.spool_dir,
            settings.kafka_topic,
            max_bytes=int(settings.spool_max_mb * MB),
            min_free_bytes=int(settings.spool_min_free_mb * MB),
            usage_alert=edges.get("spool"),
            cap_alert=edges.get("spool_cap"),
        )
    except SpoolBusy as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(
            f"MARKETFLOW_SPOOL_DIR {settings.spool_dir}: cannot use it ({exc}); fix it or set "
            "MARKETFLOW_SPOOL_DIR=off"
        ) from None
