"""Kafka publishing of validated polls, with delivery checked per message.

* Producer: confluent-kafka (librdkafka; :func:`~marketflow_assets.kafka_client.fast_producer`):
  key = coin id, ``acks=all``, retries inside a delivery timeout, and idempotence (the embedded
  Tansu broker supports ``InitProducerId``; a broker that refuses it gets a plain producer and
  one log line saying so). A 15,000-coin poll leaves in a few hundredths of a second (kafka-python
  took 1-2 s of Python per poll: ``docs/PERFORMANCE.md``).
* Topics and metadata: a kafka-python admin client, off the hot path. The price topic and its
  dead-letter twin are created when missing, with the configured partition count; an existing
  topic is used as it is. Before every poll the topics are looked up in metadata of *all*
  topics (which never creates one): a producer naming a missing topic would make a broker that
  ignores ``allow.auto.create.topics=false`` (Tansu) create it with its default partition count.
* Delivery: every message's delivery report is awaited (``flush``); a failed send is retried
  (``send_attempts`` attempts in all, ``send_backoff_s`` doubling between them, a new producer
  and the topics ensured again before each retry), then counted and reported, never ignored.
* Topic reset: an acknowledged offset below one acknowledged earlier on the same partition (or
  a topic that had to be created again) means the broker lost the topic (an in-memory broker
  restarted): :attr:`Publisher.topic_reset` is set so that ingest resends its spool.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from dataclasses import dataclass, field

from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from marketflow_assets import kafka_client
from marketflow_assets.ingest.validate import Message, ValidatedPoll
from marketflow_assets.settings import ConfigError, KafkaSecurity

log = logging.getLogger(__name__)


class IdempotenceRefused(KafkaError):
    """The broker refused idempotent produce (librdkafka's fatal error): a plain producer
    takes over."""


#: librdkafka's fatal errors that mean "this broker cannot do idempotent produce"; any other
#: fatal error ends that producer only (a new idempotent one takes over).
_IDEMPOTENCE_REFUSALS = {
    "_UNSUPPORTED_FEATURE",
    "UNSUPPORTED_VERSION",
    "CLUSTER_AUTHORIZATION_FAILED",
}


_IDEMPOTENCE_ERRORS = (IdempotenceRefused,)
#: How many messages are handed to librdkafka between two serves of its delivery reports.
_POLL_EVERY = 2000


@dataclass
class PublishResult:
    """Acknowledged counts of one poll and the reasons of failed sends."""

    good_acked: int = 0
    bad_acked: int = 0
    failures: list[str] = field(default_factory=list)
    acked: list[Message] = field(default_factory=list)  # good messages the broker acknowledged
    #: the topic id the messages were sent to (noted before sending: a topic re-created during
    #: the send does not take these acks over); None when the broker reports no ids
    topic_id: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures


class Publisher:
    """Sends validated polls to ``topic`` and dead letters to ``dlq_topic``."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        dlq_topic: str,
        *,
        partitions: int = 3,
        client_id: str = "marketflow-ingest",
        delivery_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        send_attempts: int = 1,
        send_backoff_s: float = 0.5,
        sleep=time.sleep,
        connect: bool = True,
        security: KafkaSecurity | None = None,
    ):
        if partitions < 1:
            raise ConfigError("--partitions must be at least 1")
        self.bootstrap = bootstrap
        self.security = security
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.partitions = partitions
        self.client_id = client_id
        self.delivery_timeout_s = delivery_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.send_attempts = max(1, send_attempts)
        self.send_backoff_s = send_backoff_s
        self._sleep = sleep
        self.idempotent = True
        self.topic_reset = False  # set when the broker lost the topic; ingest clears it
        self._high_offsets: dict[tuple[str, int], int] = {}
        self._topics_seen = False
        self._topic_id: str | None = None
        self._fatal: tuple[str, str] | None = None  # librdkafka's fatal error (name, text)
        self._partitions_seen: int | None = None  # the price topic's count when first seen
        # connect=False: no clients until :meth:`reconnect` (ingest started with the broker away)
        self._admin = self._make_admin() if connect else None
        self._producer = self._make_producer(idempotent=True) if connect else None

    # ----------------------------------------------------------------------------------------
    def _unreachable(self) -> ConfigError:
        return ConfigError(
            f"Kafka broker at {self.bootstrap} unreachable: start it or fix "
            "MARKETFLOW_KAFKA_BOOTSTRAP"
        )

    def _make_admin(self):
        """The kafka-python admin client for topics and metadata; a broker that does not
        answer within the connect timeout is a :class:`ConfigError`."""
        try:
            return kafka_client.admin(
                self.bootstrap,
                self.security,
                client_id=self.client_id + "-admin",
                request_timeout_ms=int(self.connect_timeout_s * 1000),
                bootstrap_timeout_ms=int(self.connect_timeout_s * 1000),
            )
        except KafkaTimeoutError:
            raise self._unreachable() from None

    def _make_producer(self, *, idempotent: bool):
        delivery_ms = int(self.delivery_timeout_s * 1000)
        ready = threading.Event()  # the idempotent producer has its producer id

        def watch(line: str) -> None:
            if "-> Assigned" in line:
                ready.set()

        producer = kafka_client.fast_producer(
            self.bootstrap,
            self.security,
            log_name=__name__ + ".librdkafka",
            on_log=watch,
            **{
                # its state changes (a few lines) tell when the producer id is there
                **({"debug": "eos"} if idempotent else {}),
                "client.id": self.client_id,
                "acks": "all",
                "enable.idempotence": idempotent,
                "linger.ms": 5,
                "retry.backoff.ms": 200,
                "message.timeout.ms": delivery_ms,
                "request.timeout.ms": max(1, min(10_000, delivery_ms - 10)),
                "socket.connection.setup.timeout.ms": max(1000, int(self.connect_timeout_s * 1000)),
                # honoured by brokers that honour it; Tansu does not (see _check_topics): its
                # periodic refresh then asks for all topics, naming none
                "allow.auto.create.topics": False,
                "topic.metadata.refresh.sparse": False,
                "error_cb": self._on_error,
            },
        )
        #: whether the producer had its producer id before its first message (idempotence off:
        #: nothing to wait for)
        self.producer_ready = not idempotent or kafka_client.wait_idempotent_ready(
            producer, ready, self.connect_timeout_s
        )
        if not self.producer_ready:
            log.info("Kafka producer: no producer id yet after %g s", self.connect_timeout_s)
        log.info(
            "Kafka producer for %s (librdkafka; acks=all, idempotence %s)",
            self.bootstrap,
            "on" if idempotent else "off",
        )
        return producer

    def _on_error(self, error) -> None:
        """librdkafka's client-level errors: a fatal one (idempotence refused) ends the
        producer; the others (a broker away) surface as failed deliveries."""
        if error.fatal():
            self._fatal = (error.name(), error.str())
        else:
            log.debug("librdkafka: %s", error.str())

    def _describe(self) -> dict[str, dict]:
        """Fresh metadata of every topic, by name (asks for *all* topics: never creates one)."""
        return {t["name"]: t for t in self._admin.describe_topics(None)}

    def _note_topics(self, topics: dict[str, dict]) -> None:
        found = topics.get(self.topic, {}).get("topic_id")
        self._topic_id = str(found) if found and set(str(found)) - set("0-") else None
        count = len(topics.get(self.topic, {}).get("partitions") or ())
        if not count:
            return
        if self._partitions_seen is None:
            self._partitions_seen = count
        elif count != self._partitions_seen:
            log.warning(
                "Kafka topic %s now has %d partition(s), not %d: the broker re-created it by "
                "itself (a client named it after the broker lost it); its spool is resent, but "
                "delete the topic and restart ingest to get %d partition(s) back",
                self.topic,
                count,
                self._partitions_seen,
                self._partitions_seen,
            )
            self._partitions_seen = count
            self.topic_reset = True

    def ensure_topics(self) -> None:
        """Create the topic and the DLQ topic when missing (``partitions`` each)."""
        try:
            existing = self._describe()
            for name in (self.topic, self.dlq_topic):
                if name in existing:
                    log.info("Kafka topic %s exists", name)
                    continue
                try:
                    self._admin.create_topics([NewTopic(name, self.partitions, 1)])
                    log.info("created Kafka topic %s with %d partition(s)", name, self.partitions)
                    if self._topics_seen and name == self.topic:
                        log.warning("Kafka topic %s had to be created again", name)
                        self.topic_reset = True
                        self._high_offsets = {}  # offsets start again at 0: no second reset
                except TopicAlreadyExistsError:
                    log.info("Kafka topic %s exists", name)
            # wait until the metadata has both topics with their partitions
            deadline = time.monotonic() + self.connect_timeout_s
            while True:
                existing = self._describe()
                if all(existing.get(n, {}).get("partitions") for n in (self.topic, self.dlq_topic)):
                    break
                if time.monotonic() > deadline:
                    raise KafkaError(f"topic {self.topic} has no partitions after creation")
                time.sleep(0.1)
        except KafkaTimeoutError:
            raise self._unreachable() from None
        self._note_topics(existing)
        self._topics_seen = True

    def _check_topics(self) -> None:
        """Before a poll: both topics exist (created again when the broker lost them, before
        the producer could name a missing one) and the topic id is fresh."""
        topics = self._describe()
        if self.topic in topics and self.dlq_topic in topics:
            self._note_topics(topics)
        else:
            self.ensure_topics()

    # ----------------------------------------------------------------------------------------
    def _send_all(self, messages: list[tuple[str, Message]]) -> list[str | None]:
        """Send and wait; returns per message None (acknowledged) or an error text."""
        pending = object()
        outcomes: list = [pending] * len(messages)
        producer = self._producer
        topic_name, high = self.topic, self._high_offsets

        def delivered(i: int, error, message) -> None:
            # one call per message (15,000 a whole-market poll, on the acknowledgement's path):
            # the usual case - an offset past the partition's highest - without a method call
            # (_note_offset: ~20 ms a whole-market poll); the rest through it
            nonlocal high
            if error is not None:
                outcomes[i] = f"KafkaError: {error.str()}"
                return
            outcomes[i] = None
            if message.topic() != topic_name:
                return
            key, offset = (topic_name, message.partition()), message.offset()
            if type(offset) is int and offset > high.get(key, -1):
                high[key] = offset
            else:  # not past one acknowledged before (or no offset): _note_offset decides
                self._note_offset(topic_name, key[1], offset)
                high = self._high_offsets  # a new dict after a reset

        for i, (topic, message) in enumerate(messages):
            while True:
                try:
                    producer.produce(
                        topic,
                        value=message.value_bytes(),
                        key=message.key_bytes(),
                        on_delivery=functools.partial(delivered, i),
                    )
                    break
                except BufferError:  # librdkafka's queue is full: serve reports, then again
                    producer.poll(0.05)
                except Exception as exc:  # noqa: BLE001 - any failure of a send is reported
                    outcomes[i] = f"{type(exc).__name__}: {exc}"
                    break
            if i % _POLL_EVERY == _POLL_EVERY - 1:
                producer.poll(0)
        # one shared deadline: a dead broker costs one delivery timeout, not one per message
        left = producer.flush(self.delivery_timeout_s + 1.0)
        if left:  # not answered in time: taken back (their reports say so)
            producer.purge()
            producer.flush(0)
        if self._fatal is not None:
            (name, text), self._fatal = self._fatal, None
            if self.idempotent and name in _IDEMPOTENCE_REFUSALS:
                raise IdempotenceRefused(text)
            # any other fatal error ends this producer: what it did not deliver is retried on a
            # new one (what it did deliver stays acknowledged)
            log.warning("Kafka producer failed (%s); starting a new one", text)
            self._drop_producer()
            self._producer = self._make_producer(idempotent=self.idempotent)
        return [
            "KafkaTimeoutError: no delivery report within the delivery timeout"
            if outcome is pending
            else outcome
            for outcome in outcomes
        ]

    def _note_offset(self, topic: str, partition: int, offset: int) -> None:
        """Track the highest acknowledged offset per partition; a lower one = a reset topic."""
        if topic != self.topic or not isinstance(offset, int) or offset < 0:
            return
        key = (topic, partition)
        high = self._high_offsets.get(key)
        if high is not None and offset < high:
            log.warning(
                "Kafka acknowledged offset %d on %s[%d] after offset %d: the broker lost the "
                "topic (restarted?)",
                offset,
                topic,
                partition,
                high,
            )
            self.topic_reset = True
            self._high_offsets = {}
        self._high_offsets[key] = max(offset, self._high_offsets.get(key, -1))

    def topic_id(self) -> str | None:
        """Kafka's id of the topic (a re-created topic has a new one), from fresh metadata when
        the broker answers, else as last seen; None when the broker does not report ids."""
        if self._admin is not None:
            with contextlib.suppress(Exception):  # away: the last one seen
                self._note_topics(self._describe())
        return self._topic_id

    def reconnect(self) -> None:
        """New clients and the topics ensured again (the broker may have restarted) *before* a
        new producer exists; raises :class:`ConfigError` or :class:`KafkaError` when the broker
        is still unreachable (the old clients stay), and
        :class:`~marketflow_assets.kafka_client.KafkaAccessError` when it refuses this client's
        certificate or password (e.g. rotated while ingest ran)."""
        kafka_client.preflight(self.bootstrap, self.security, timeout_s=self.connect_timeout_s)
        admin = self._make_admin()  # raises: the old clients stay
        old_admin, self._admin = self._admin, admin
        try:
            self.ensure_topics()
        except BaseException:
            self._admin = old_admin
            with contextlib.suppress(Exception):
                admin.close()
            raise
        if old_admin is not None:
            with contextlib.suppress(Exception):
                old_admin.close()
        self._drop_producer()
        self._producer = self._make_producer(idempotent=self.idempotent)

    def _drop_producer(self) -> None:
        old, self._producer = self._producer, None
        if old is not None:
            with contextlib.suppress(Exception):
                old.purge()
                old.flush(0)

    def publish(self, poll: ValidatedPoll) -> PublishResult:
        """Send every good message to the topic and every dead letter to the DLQ; the sends
        that fail are retried up to ``send_attempts`` attempts in all (backoff doubling from
        ``send_backoff_s``). The result lists what was acknowledged and what was not."""
        messages = [(self.topic, m) for m in poll.good] + [(self.dlq_topic, m) for m in poll.bad]
        result = PublishResult()
        try:
            if self._producer is None:  # never connected yet: the first attempt connects
                self.reconnect()
            else:
                self._check_topics()
        except (ConfigError, KafkaError) as exc:
            if self._producer is None:
                result.failures = [f"{t} key={m.key}: not connected: {exc}" for t, m in messages]
                return result
            # connected before: this was the first attempt; the next ones reconnect
            return self._retry(messages, result, f"{type(exc).__name__}: {exc}", poll.ts)
        result.topic_id = self._topic_id
        return self._retry(messages, result, None, poll.ts)

    def _retry(
        self,
        messages: list[tuple[str, Message]],
        result: PublishResult,
        why: str | None,
        ts: str,
    ) -> PublishResult:
        """Send ``messages`` in up to ``send_attempts`` attempts (``why``: the first attempt
        already failed for that reason: it counts as one)."""
        failed: list[tuple[tuple[str, Message], str]] = []
        if why is not None:
            failed = [(item, why) for item in messages]
        for attempt in range(2 if why else 1, self.send_attempts + 1):
            if attempt > 1:
                delay = self.send_backoff_s * 2 ** (attempt - 2)
                log.warning(
                    "%d message(s) of poll %s not acknowledged (%s); retrying in %.2g s "
                    "(attempt %d/%d)",
                    len(messages),
                    ts,
                    failed[0][1],
                    delay,
                    attempt,
                    self.send_attempts,
                )
                self._sleep(delay)
                try:
                    self.reconnect()
                except (ConfigError, KafkaError) as exc:
                    failed = [(item, f"reconnect failed: {exc}") for item, _ in failed]
                    continue
                if not result.acked:  # else keep the id the first acks came from: acks of
                    # a topic lost meanwhile must not pass for the new one's (later acks are
                    # then resent once more, and deduplicated by the Spark job)
                    result.topic_id = self._topic_id
            failed = []
            for item, outcome in zip(messages, self._send_once(messages), strict=True):
                topic, message = item
                if outcome is None:
                    if topic == self.topic:
                        result.good_acked += 1
                        result.acked.append(message)
                    else:
                        result.bad_acked += 1
                else:
                    failed.append((item, outcome))
            if not failed:
                return result
            messages = [item for item, _ in failed]
        result.failures = [f"{topic} key={m.key}: {why}" for (topic, m), why in failed]
        return result

    def _send_once(self, messages: list[tuple[str, Message]]) -> list[str | None]:
        """One attempt at ``messages`` (falls back to a plain producer when idempotence is
        refused)."""
        try:
            outcomes = self._send_all(messages)
        except _IDEMPOTENCE_ERRORS as exc:
            if not self.idempotent:
                raise
            log.warning(
                "broker refused idempotent produce (%s); continuing with acks=all without it", exc
            )
            self._drop_producer()
            self.idempotent = False
            self._producer = self._make_producer(idempotent=False)
            outcomes = self._send_all(messages)
        return outcomes

    def close(self) -> None:
        """Wait for what is in flight (at most a delivery timeout), then close the clients."""
        if self._producer is not None:
            self._producer.flush(self.delivery_timeout_s)
            self._drop_producer()
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None
