"""Kafka publishing of validated polls (kafka-python), with delivery checked per message.

* Producer: key = coin id, ``acks=all``, bounded retries inside a delivery timeout, and
  idempotence (the embedded Tansu broker supports ``InitProducerId``; a broker that does not gets
  a plain producer and one log line saying so).
* Topics: the price topic and its dead-letter twin are created when missing, with the
  configured partition count; an existing topic is used as it is.
* Delivery: every send's future is resolved after ``flush``; a failed send is retried
  (``send_attempts`` attempts in all, ``send_backoff_s`` doubling between them, a new producer
  and the topics ensured again before each retry), then counted and reported, never ignored.
* Topic reset: an acknowledged offset below one acknowledged earlier on the same partition (or
  a topic that had to be created again) means the broker lost the topic (an in-memory broker
  restarted): :attr:`Publisher.topic_reset` is set so that ingest resends its spool.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

from kafka import KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaConfigurationError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    UnsupportedVersionError,
)

from marketflow_assets import kafka_client
from marketflow_assets.ingest.validate import Message, ValidatedPoll
from marketflow_assets.settings import ConfigError, KafkaSecurity

log = logging.getLogger(__name__)

_IDEMPOTENCE_ERRORS = (UnsupportedVersionError, ClusterAuthorizationFailedError)


@dataclass
class PublishResult:
    """Acknowledged counts of one poll and the reasons of failed sends."""

    good_acked: int = 0
    bad_acked: int = 0
    failures: list[str] = field(default_factory=list)
    acked: list[Message] = field(default_factory=list)  # good messages the broker acknowledged

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
        # connect=False: no producer until :meth:`reconnect` (ingest started with the broker away)
        self._producer = self._make_producer(idempotent=True) if connect else None

    # ----------------------------------------------------------------------------------------
    def _make_producer(self, *, idempotent: bool) -> KafkaProducer:
        delivery_ms = int(self.delivery_timeout_s * 1000)
        config = {
            "client_id": self.client_id,
            "acks": "all",
            "retries": 10,
            "retry_backoff_ms": 200,
            "linger_ms": 5,
            "request_timeout_ms": min(10_000, delivery_ms - 10),
            "delivery_timeout_ms": delivery_ms,
            "max_block_ms": int(self.connect_timeout_s * 1000),
            "bootstrap_timeout_ms": int(self.connect_timeout_s * 1000),
            "enable_idempotence": idempotent,
            "allow_auto_create_topics": False,  # and never by naming it: kafka_client.producer
        }
        try:
            producer = kafka_client.producer(self.bootstrap, self.security, **config)
        except KafkaTimeoutError:
            raise ConfigError(
                f"Kafka broker at {self.bootstrap} unreachable: start it or fix "
                "MARKETFLOW_KAFKA_BOOTSTRAP"
            ) from None
        except KafkaConfigurationError as exc:
            if not idempotent:
                raise
            log.warning("broker cannot do idempotent produce (%s); using acks=all without it", exc)
            self.idempotent = False
            return self._make_producer(idempotent=False)
        log.info(
            "Kafka producer connected to %s (acks=all, idempotence %s)",
            self.bootstrap,
            "on" if idempotent else "off",
        )
        return producer

    def ensure_topics(self) -> None:
        """Create the topic and the DLQ topic when missing (``partitions`` each)."""
        try:
            admin = kafka_client.admin(
                self.bootstrap,
                self.security,
                client_id=self.client_id + "-admin",
                request_timeout_ms=int(self.connect_timeout_s * 1000),
                bootstrap_timeout_ms=int(self.connect_timeout_s * 1000),
            )
        except KafkaTimeoutError:
            raise ConfigError(
                f"Kafka broker at {self.bootstrap} unreachable: start it or fix "
                "MARKETFLOW_KAFKA_BOOTSTRAP"
            ) from None
        try:
            existing = set(admin.list_topics())
            for name in (self.topic, self.dlq_topic):
                if name in existing:
                    log.info("Kafka topic %s exists", name)
                    continue
                try:
                    admin.create_topics([NewTopic(name, self.partitions, 1)])
                    log.info("created Kafka topic %s with %d partition(s)", name, self.partitions)
                    if self._topics_seen and name == self.topic:
                        log.warning("Kafka topic %s had to be created again", name)
                        self.topic_reset = True
                        self._high_offsets = {}  # offsets start again at 0: no second reset
                except TopicAlreadyExistsError:
                    log.info("Kafka topic %s exists", name)
        finally:
            admin.close()
        # wait until the producer sees both topics (metadata), so the first send cannot stall
        deadline = time.monotonic() + self.connect_timeout_s
        for name in (self.topic, self.dlq_topic):
            while not self._producer.partitions_for(name):
                if time.monotonic() > deadline:
                    raise KafkaError(f"topic {name} has no partitions after creation")
                time.sleep(0.1)
        self._topics_seen = True

    # ----------------------------------------------------------------------------------------
    def _send_all(self, messages: list[tuple[str, Message]]) -> list[str | None]:
        """Send and wait; returns per message None (acknowledged) or an error text."""
        futures = []
        outcomes: list[str | None] = []
        for topic, message in messages:
            try:
                futures.append(
                    self._producer.send(topic, key=message.key_bytes(), value=message.value_bytes())
                )
            except (KafkaError, ValueError, TypeError) as exc:
                futures.append(exc)
        deadline = time.monotonic() + self.delivery_timeout_s
        try:
            self._producer.flush(timeout=self.delivery_timeout_s)
        except KafkaError as exc:
            log.warning("flush did not complete: %s", exc)
        for future in futures:
            if isinstance(future, Exception):
                outcomes.append(f"{type(future).__name__}: {future}")
                continue
            try:
                # one shared deadline: a dead broker costs one delivery timeout, not one per message
                metadata = future.get(timeout=max(0.05, deadline - time.monotonic()))
                self._note_offset(metadata)
                outcomes.append(None)
            except _IDEMPOTENCE_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of a send is reported
                outcomes.append(f"{type(exc).__name__}: {exc}")
        return outcomes

    def _note_offset(self, metadata) -> None:
        """Track the highest acknowledged offset per partition; a lower one = a reset topic."""
        topic = getattr(metadata, "topic", None)
        offset = getattr(metadata, "offset", None)
        if topic != self.topic or not isinstance(offset, int) or offset < 0:
            return
        key = (topic, metadata.partition)
        high = self._high_offsets.get(key)
        if high is not None and offset < high:
            log.warning(
                "Kafka acknowledged offset %d on %s[%d] after offset %d: the broker lost the "
                "topic (restarted?)",
                offset,
                topic,
                metadata.partition,
                high,
            )
            self.topic_reset = True
            self._high_offsets = {}
        self._high_offsets[key] = max(offset, self._high_offsets.get(key, -1))

    def topic_id(self) -> str | None:
        """Kafka's id of the topic as the producer last saw it (a re-created topic has a new
        one); None when the broker does not report topic ids."""
        return kafka_client.topic_id(self._producer, self.topic)

    def reconnect(self) -> None:
        """A new producer and the topics ensured again (the broker may have restarted); raises
        :class:`ConfigError` or :class:`KafkaError` when the broker is still unreachable, and
        :class:`~marketflow_assets.kafka_client.KafkaAccessError` when it refuses this client's
        certificate or password (e.g. rotated while ingest ran)."""
        kafka_client.preflight(self.bootstrap, self.security, timeout_s=self.connect_timeout_s)
        fresh = self._make_producer(idempotent=self.idempotent)  # raises: the old one stays
        old, self._producer = self._producer, fresh
        with contextlib.suppress(Exception):
            old.close(timeout=0)
        self.ensure_topics()

    def publish(self, poll: ValidatedPoll) -> PublishResult:
        """Send every good message to the topic and every dead letter to the DLQ; the sends
        that fail are retried up to ``send_attempts`` attempts in all (backoff doubling from
        ``send_backoff_s``). The result lists what was acknowledged and what was not."""
        messages = [(self.topic, m) for m in poll.good] + [(self.dlq_topic, m) for m in poll.bad]
        result = PublishResult()
        if self._producer is None:  # never connected yet: the first attempt connects
            try:
                self.reconnect()
            except (ConfigError, KafkaError) as exc:
                result.failures = [f"{t} key={m.key}: not connected: {exc}" for t, m in messages]
                return result
        failed: list[tuple[tuple[str, Message], str]] = []
        for attempt in range(1, self.send_attempts + 1):
            if attempt > 1:
                delay = self.send_backoff_s * 2 ** (attempt - 2)
                log.warning(
                    "%d message(s) of poll %s not acknowledged (%s); retrying in %.2g s "
                    "(attempt %d/%d)",
                    len(messages),
                    poll.ts,
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
            self._producer.close(timeout=5)
            self.idempotent = False
            self._producer = self._make_producer(idempotent=False)
            outcomes = self._send_all(messages)
        return outcomes

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=self.delivery_timeout_s)
