"""The Kafka client code every Marketflow component shares (kafka-python; ingest's producer is
confluent-kafka, :func:`fast_producer`): group-less consumers that never auto-create a topic,
and :class:`KafkaOffsetProbe`, the driver-side view of a topic's
partitions and their *true* beginning/end offsets.

Used by the Spark source (:mod:`spark_streaming.kafka_source`), the lag monitor
(:mod:`marketflow_assets.monitoring.lag`) and ``marketflow up``. **True end offsets:** some
brokers (the embedded Tansu broker) report a partition's end offset as "base offset of the last
record batch + 1", i.e. they under-report by the rest of the last batch although those records
are readable; :meth:`KafkaOffsetProbe.end_offsets` fetches from ``reported_end - 1`` and takes
the position after the last record it actually received.

**Security:** every client (producer, consumers, admin, the Spark source's reader, the lag
probe, the Spark built-in connector) gets its protocol, SASL credentials and TLS files from one
:class:`~marketflow_assets.settings.KafkaSecurity` through :func:`client_config` (kafka-python),
:func:`librdkafka_config` (confluent-kafka) or :func:`spark_connector_options` (the Java
connector); :func:`preflight` tells a refused
certificate or password (a configuration problem: one clear line) from a broker that is away.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence

from marketflow_assets.settings import (
    ENV_KAFKA_CAFILE,
    ENV_KAFKA_PASSWORD,
    ConfigError,
    KafkaSecurity,
    parse_bootstrap,
)

logger = logging.getLogger(__name__)

Offsets = dict[int, int]  # partition -> next offset to read


def _cluster(client):
    """kafka-python's cluster view of a producer (``_metadata``) or a consumer (``_cluster``)."""
    return getattr(client, "_metadata", None) or getattr(client, "_cluster", None)


def no_auto_create(client):
    """Make ``client`` (a consumer or producer) never cause a topic to be auto-created, and
    return it.

    kafka-python sends ``allow_auto_topic_creation=False`` (``allow_auto_create_topics``), but
    the Tansu broker ignores that flag: any metadata request *naming* a missing topic creates it
    with Tansu's default partition count (4) -- ``beginning_offsets`` / ``end_offsets`` / a fetch
    of an assigned partition all send one. A source asking about the topic right after a broker
    restart therefore created it before the producer did (with the wrong partition count).
    Requesting metadata for *all* topics instead never creates one; a missing topic then just
    has no partitions (offset look-ups time out, fetches return nothing; a producer's send
    waits until the topic is created).
    """
    cluster = _cluster(client)
    if cluster is not None and hasattr(cluster, "need_all_topic_metadata"):
        cluster.need_all_topic_metadata = True
    return client


def metadata_backoff(client, ms: int):
    """Let ``client`` (a kafka-python consumer or producer) refresh its metadata again ``ms``
    after the last refresh, and return it.

    kafka-python 3.0 builds its cluster view with the default ``retry_backoff_ms`` (100 ms: the
    client's own setting is not passed on), and a forced refresh (``consumer.topics()``) within
    that time of the last one waits out the rest: 50-100 ms for a 2 ms round trip when the live
    consumer asks before each batch it computes. A broker that is away still gets the connection
    backoff (``connection_delay``), which comes first."""
    cluster = _cluster(client)
    if cluster is not None and isinstance(getattr(cluster, "config", None), dict):
        cluster.config["retry_backoff_ms"] = ms
    return client


class KafkaAccessError(ConfigError):
    """The broker refused this client's TLS certificate check or SASL credentials: waiting does
    not help, the configuration must change (exit 2, one line)."""


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext:
    """The TLS context of every Kafka client: the CA file (else the system CAs), the client
    certificate for mutual TLS, host names verified unless switched off."""
    ctx = ssl.create_default_context(
        cafile=str(security.ssl_cafile) if security.ssl_cafile else None
    )
    ctx.check_hostname = security.ssl_check_hostname
    if not security.ssl_check_hostname:
        ctx.verify_mode = ssl.CERT_REQUIRED  # the chain is still verified
    if security.ssl_certfile:
        try:
            # an empty passphrase: OpenSSL must never prompt on a terminal for an encrypted key
            ctx.load_cert_chain(
                str(security.ssl_certfile), str(security.ssl_keyfile), password=lambda: b""
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"cannot load the Kafka client certificate {security.ssl_certfile} with key "
                f"{security.ssl_keyfile} ({exc}); the key must be an unencrypted PEM key that "
                "matches the certificate (decrypt one with `openssl pkey -in KEY -out KEY2`)"
            ) from None
    return ctx


def client_config(security: KafkaSecurity | None) -> dict:
    """kafka-python keyword arguments for ``security`` (empty for plain PLAINTEXT)."""
    if security is None or security.protocol == "PLAINTEXT":
        return {}
    config: dict = {"security_protocol": security.protocol}
    if security.uses_tls:
        config["ssl_context"] = ssl_context(security)
    if security.uses_sasl:
        config["sasl_mechanism"] = security.sasl_mechanism
        config["sasl_plain_username"] = security.sasl_username
        config["sasl_plain_password"] = security.sasl_password
    return config


def servers(bootstrap: str) -> list[str]:
    """The bootstrap list as kafka-python wants it (checked: a ConfigError names a bad entry)."""
    return parse_bootstrap(bootstrap)


def producer(bootstrap: str, security: KafkaSecurity | None = None, **config):
    """A kafka-python producer of ``bootstrap`` with ``security`` over ``config``; with
    ``allow_auto_create_topics=False`` it never auto-creates a topic (:func:`no_auto_create`)."""
    from kafka import KafkaProducer

    client = KafkaProducer(
        bootstrap_servers=servers(bootstrap), **client_config(security), **config
    )
    return client if config.get("allow_auto_create_topics", True) else no_auto_create(client)


def librdkafka_config(bootstrap: str, security: KafkaSecurity | None = None) -> dict[str, str]:
    """The same connection as :func:`client_config` for a confluent-kafka (librdkafka) client:
    bootstrap list, protocol, SASL credentials, TLS files (host names checked unless switched
    off; without a CA file, the system CAs)."""
    config = {"bootstrap.servers": ",".join(servers(bootstrap))}
    if security is None or security.protocol == "PLAINTEXT":
        return config
    config["security.protocol"] = security.protocol.lower()
    if security.uses_sasl:
        config["sasl.mechanism"] = str(security.sasl_mechanism)
        config["sasl.username"] = str(security.sasl_username)
        config["sasl.password"] = str(security.sasl_password)
    if security.uses_tls:
        ssl_context(security)  # the same up-front checks of the files (one clear line)
        config["enable.ssl.certificate.verification"] = "true"
        config["ssl.endpoint.identification.algorithm"] = (
            "https" if security.ssl_check_hostname else "none"
        )
        if security.ssl_cafile:
            config["ssl.ca.location"] = str(security.ssl_cafile)
        if security.ssl_certfile:
            config["ssl.certificate.location"] = str(security.ssl_certfile)
        if security.ssl_keyfile:
            config["ssl.key.location"] = str(security.ssl_keyfile)
    return config


class _LibrdkafkaLog:
    """librdkafka's own log lines at DEBUG on ``logger``: the clients report every failure
    that matters themselves (a send not acknowledged, a broker away), so "connection refused"
    while a broker restarts is not repeated at every reconnect attempt."""

    def __init__(self, name: str, on_line=None):
        self._logger = logging.getLogger(name)
        self._on_line = on_line

    def log(self, level, msg, *args, **kwargs) -> None:
        self._logger.debug(msg, *args)
        if self._on_line is not None:
            self._on_line(msg % args if args else msg)


def fast_producer(
    bootstrap: str,
    security: KafkaSecurity | None = None,
    *,
    log_name: str = __name__,
    on_log=None,
    **config,
):
    """A confluent-kafka producer (librdkafka: batching, compression and acknowledgements in C;
    a 15,000-record poll is sent in a few hundredths of a second where kafka-python takes
    seconds) of ``bootstrap`` with ``security`` over ``config`` (librdkafka property names).
    Its log goes to ``log_name`` at DEBUG (:class:`_LibrdkafkaLog`), each line also to
    ``on_log`` (served by the producer's ``poll``)."""
    from confluent_kafka import Producer

    return Producer(
        {**librdkafka_config(bootstrap, security), **config},
        logger=_LibrdkafkaLog(log_name, on_log),
    )


def wait_idempotent_ready(producer, ready, timeout_s: float) -> bool:
    """Serve ``producer`` until ``ready`` (a ``threading.Event`` its log watcher sets when the
    idempotent producer has its producer id) or ``timeout_s``; True when ready. librdkafka asks
    for the id only after its first broker connection and on a 500 ms timer (0.5-1 s against
    Tansu); messages produced before count that wait against their delivery timeout."""
    deadline = time.monotonic() + timeout_s
    while not ready.is_set() and time.monotonic() < deadline:
        producer.poll(0.02)
    return ready.is_set()


def admin(bootstrap: str, security: KafkaSecurity | None = None, **config):
    """A kafka-python admin client of ``bootstrap`` with ``security`` over ``config``."""
    from kafka import KafkaAdminClient

    return KafkaAdminClient(
        bootstrap_servers=servers(bootstrap), **client_config(security), **config
    )


def consumer(bootstrap: str, security: KafkaSecurity | None = None, **config):
    """A kafka-python consumer of ``bootstrap`` that never auto-creates a topic."""
    from kafka import KafkaConsumer

    config.setdefault("allow_auto_create_topics", False)
    return no_auto_create(
        KafkaConsumer(bootstrap_servers=servers(bootstrap), **client_config(security), **config)
    )


def group_less_consumer(
    bootstrap: str, client_id: str, security: KafkaSecurity | None = None, **extra
):
    """A group-less kafka-python consumer (manual assignment only; nothing is ever committed;
    never auto-creates a topic, see :func:`no_auto_create`)."""
    config = {
        "client_id": client_id,
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": 100,
        "request_timeout_ms": 30000,
    }
    return consumer(bootstrap, security, **{**config, **extra})


def topic_id(client, topic: str) -> str | None:
    """The broker's id of ``topic`` in a kafka-python producer's or consumer's cluster view
    (call after fresh metadata); None when missing or not reported (an older broker)."""
    try:
        value = _cluster(client).topic_id(topic)
    except Exception:  # noqa: BLE001 - an older client or no metadata yet
        return None
    return str(value) if value else None


# ------------------------------------------------------------------------------------------------
# Spark: the project's source takes these options; the built-in connector its Java equivalents
# ------------------------------------------------------------------------------------------------
#: Option names of the ``marketflow_kafka`` source carrying :class:`KafkaSecurity` (Spark
#: redacts option values whose key contains "password" from plans and the UI).
SOURCE_SECURITY_OPTIONS = {
    "protocol": "kafka.security.protocol",
    "sasl_mechanism": "kafka.sasl.mechanism",
    "sasl_username": "kafka.sasl.username",
    "sasl_password": "kafka.sasl.password",
    "ssl_cafile": "kafka.ssl.cafile",
    "ssl_certfile": "kafka.ssl.certfile",
    "ssl_keyfile": "kafka.ssl.keyfile",
    "ssl_check_hostname": "kafka.ssl.check.hostname",
}


def source_options(security: KafkaSecurity) -> dict[str, str]:
    """``marketflow_kafka`` source options for ``security`` (only the set ones)."""
    options = {}
    for attr, key in SOURCE_SECURITY_OPTIONS.items():
        value = getattr(security, attr)
        if value is not None:
            options[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return options


def security_from_options(options: Mapping[str, str]) -> KafkaSecurity:
    """The inverse of :func:`source_options` (missing options: PLAINTEXT defaults)."""
    from pathlib import Path

    values: dict = {}
    for attr, key in SOURCE_SECURITY_OPTIONS.items():
        raw = options.get(key)
        if raw is None:
            continue
        if attr.startswith("ssl_") and attr.endswith("file"):
            values[attr] = Path(raw)
        elif attr == "ssl_check_hostname":
            values[attr] = raw.lower() == "true"
        else:
            values[attr] = raw
    return KafkaSecurity(**values)


def spark_connector_options(security: KafkaSecurity) -> dict[str, str]:
    """Options of Spark's built-in Kafka connector (``spark-sql-kafka``) for ``security``: the
    Java client's names, PEM files read as PEM (Kafka >= 2.7), JAAS for SASL."""
    if security.protocol == "PLAINTEXT":
        return {}
    options = {"kafka.security.protocol": security.protocol}
    if security.uses_tls:
        if security.ssl_cafile:
            options["kafka.ssl.truststore.type"] = "PEM"
            options["kafka.ssl.truststore.location"] = str(security.ssl_cafile)
        if security.ssl_certfile:
            options["kafka.ssl.keystore.type"] = "PEM"
            options["kafka.ssl.keystore.certificate.chain"] = security.ssl_certfile.read_text()
            options["kafka.ssl.keystore.key"] = security.ssl_keyfile.read_text()
        if not security.ssl_check_hostname:
            options["kafka.ssl.endpoint.identification.algorithm"] = ""
    if security.uses_sasl:
        module = (
            "org.apache.kafka.common.security.plain.PlainLoginModule"
            if security.sasl_mechanism == "PLAIN"
            else "org.apache.kafka.common.security.scram.ScramLoginModule"
        )

        def quoted(value: str) -> str:
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

        options["kafka.sasl.mechanism"] = security.sasl_mechanism
        options["kafka.sasl.jaas.config"] = (
            f"{module} required username={quoted(security.sasl_username)} "
            f"password={quoted(security.sasl_password)};"
        )
    return options


# ------------------------------------------------------------------------------------------------
# Pre-flight: a refused certificate or password is a configuration error, not an outage
# ------------------------------------------------------------------------------------------------
def host_port(server: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) -> ``(host, port)``."""
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


def check_tls(server: str, security: KafkaSecurity, timeout_s: float = 10.0) -> None:
    """One TLS handshake with ``server`` as the clients make it. A certificate that is not
    trusted or names another host, or a refused client certificate, raises
    :class:`KafkaAccessError`; an unreachable server raises ``OSError``."""
    host, port = host_port(server)
    ctx = ssl_context(security)
    with socket.create_connection((host, port), timeout=timeout_s) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                # TLS 1.3 reports a refused client certificate only at the first read
                tls.settimeout(min(timeout_s, 1.0))
                try:
                    tls.recv(1)
                except TimeoutError:
                    pass
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or str(exc)
            if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
                hint = "connect by a name the certificate lists (MARKETFLOW_KAFKA_BOOTSTRAP)"
            else:
                hint = f"check {ENV_KAFKA_CAFILE}"
            raise KafkaAccessError(
                f"Kafka at {server}: the broker's TLS certificate was refused ({reason}); {hint}"
            ) from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            # closed without a word (a broker restarting, a proxy without a healthy backend):
            # away, not refused
            raise ConnectionResetError(f"{server} closed the TLS connection ({exc})") from None
        except ssl.SSLError as exc:
            # the peer's alert (e.g. a refused client certificate) or a port that does not
            # speak TLS: both definite
            reason = exc.reason or str(exc)
            hint = (
                "the broker wants a client certificate (MARKETFLOW_KAFKA_SSL_CERTFILE/KEYFILE)"
                if "CERTIFICATE_REQUIRED" in str(reason).upper()
                else "is this port a TLS listener?"
            )
            raise KafkaAccessError(
                f"Kafka at {server}: TLS handshake failed ({reason}); {hint}"
            ) from None


def check_sasl(bootstrap: str, security: KafkaSecurity, timeout_s: float = 10.0) -> None:
    """Authenticate once with the SASL credentials; refused ones raise :class:`KafkaAccessError`
    (the password is never part of the message).

    kafka-python 3.0 only *logs* a refused login while it bootstraps (it retries until
    ``bootstrap_timeout_ms``, then raises ``KafkaTimeoutError``): the error it logs is caught
    by a handler on ``kafka.net.manager`` for the length of the attempt."""
    from kafka import errors

    refusals = (errors.SaslAuthenticationFailedError, errors.UnsupportedSaslMechanismError)

    class _Refusals(logging.Handler):
        refusal: Exception | None = None

        def emit(self, record: logging.LogRecord) -> None:
            args = record.args if isinstance(record.args, tuple) else ()
            for arg in args:
                if isinstance(arg, refusals) and self.refusal is None:
                    self.refusal = arg

    watcher = _Refusals()
    manager_log = logging.getLogger("kafka.net.manager")
    level = manager_log.level
    manager_log.addHandler(watcher)
    if not manager_log.isEnabledFor(logging.WARNING):
        manager_log.setLevel(logging.WARNING)
    try:
        client = admin(
            bootstrap,
            security,
            client_id="marketflow-preflight",
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
        )
    except (*refusals, errors.KafkaTimeoutError) as exc:
        refusal = exc if isinstance(exc, refusals) else watcher.refusal
        if refusal is None:
            raise  # a broker that is away: the caller's wait
        raise KafkaAccessError(
            f"Kafka at {bootstrap} refused SASL {security.sasl_mechanism} login of user "
            f"{security.sasl_username!r} ({type(refusal).__name__}); check the user and "
            f"{ENV_KAFKA_PASSWORD}"
        ) from None
    finally:
        manager_log.removeHandler(watcher)
        manager_log.setLevel(level)
    client.close()


def preflight(bootstrap: str, security: KafkaSecurity | None, timeout_s: float = 10.0) -> bool:
    """Check, before anything starts, that the first reachable broker of ``bootstrap`` accepts
    ``security``: raises :class:`KafkaAccessError` (a ConfigError) for a refused certificate or
    password. Brokers that cannot be reached are left to the caller's wait (an outage). True
    when a broker accepted ``security`` (or there is nothing to check), False when none
    answered."""
    if security is None or security.protocol == "PLAINTEXT":
        return True
    from kafka import errors

    for server in servers(bootstrap):
        try:
            if security.uses_tls:
                check_tls(server, security, timeout_s)
            else:
                socket.create_connection(host_port(server), timeout=timeout_s).close()
        except OSError:
            continue  # away: the next one, or the caller's wait
        if security.uses_sasl:
            try:
                check_sasl(server, security, timeout_s)
            except errors.KafkaError:
                return False  # no answer in time: away, left to the caller's wait
        return True
    return False


def read_each(
    consumer,
    topic: str,
    offsets: Mapping[int, int],
    take: Callable[[int, list], bool],
    timeout_s: float,
    max_records: int | None = None,
) -> None:
    """Fetch each partition of ``topic`` from its offset in ``offsets`` and hand what arrives to
    ``take(partition, records)`` until it says that partition is done (True) or ``timeout_s``
    passes. The consumer's assignment is emptied afterwards.

    A finished partition leaves the assignment (the others keep their positions); it is never
    paused: kafka-python 3 parks what a paused partition's in-flight fetch brings back
    (KAFKA-7548) and gives it back only while no other partition's drained records are in hand,
    so on a long-lived consumer that partition is never fetched again, whatever it is assigned
    and seeked to later. That starved the next :meth:`KafkaOffsetProbe.end_offsets` of a
    partition for its whole timeout while a producer was writing: the Spark source then planned
    micro-batches without a poll's last records, which waited for the next poll."""
    from kafka import TopicPartition

    pending = {p: TopicPartition(topic, p) for p in offsets}
    if not pending:
        return
    consumer.assign(list(pending.values()))
    for p, tp in pending.items():
        consumer.seek(tp, offsets[p])
    deadline = time.monotonic() + timeout_s
    try:
        while pending and time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=200, max_records=max_records, update_offsets=True)
            finished = [
                tp.partition
                for tp, records in polled.items()
                if tp.partition in pending and take(tp.partition, records)
            ]
            if finished:
                for p in finished:
                    del pending[p]
                consumer.assign(list(pending.values()))  # the others keep their positions
    finally:
        consumer.assign([])


class KafkaOffsetProbe:
    """Driver-side view of a topic's partitions and their *true* beginning/end offsets.

    Its questions are answered from fresh metadata, where metadata at most
    :attr:`metadata_fresh_s` old counts as fresh: the Spark source asks for partitions, the
    topic's id and offsets several times while planning one micro-batch, and kafka-python
    refreshes metadata at most once per ``retry_backoff_ms`` (100 ms) and waits out the rest,
    so each of these questions used to cost 0.1 s, 0.7 s per trigger."""

    #: Metadata refreshed this many seconds ago or less is reused.
    metadata_fresh_s = 0.5

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        client_id: str = "marketflow-spark-offsets",
        security: KafkaSecurity | None = None,
        **config,
    ):
        self.bootstrap = bootstrap
        self.topic = topic
        self.client_id = client_id
        self.security = security
        self.config = config  # extra kafka-python consumer settings
        self._consumer = None
        self._metadata_at: float | None = None  # monotonic time of the last refresh

    @property
    def consumer(self):
        if self._consumer is None:
            self._consumer = group_less_consumer(
                self.bootstrap, self.client_id, self.security, **self.config
            )
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._metadata_at = None

    def _fresh_topics(self) -> set[str]:
        """The cluster's topics from metadata at most :attr:`metadata_fresh_s` old (refreshed
        here otherwise: a metadata request for all topics, never creating one)."""
        now = time.monotonic()
        if self._metadata_at is None or now - self._metadata_at > self.metadata_fresh_s:
            topics = self.consumer.topics()  # a remote metadata call
            self._metadata_at = time.monotonic()
            return topics
        return _cluster(self.consumer).topics()

    def partitions(self) -> list[int]:
        """Current partition ids of the topic (fresh metadata); ``[]`` if it does not exist."""
        if self.topic not in self._fresh_topics():
            return []
        return sorted(_cluster(self.consumer).partitions_for_topic(self.topic) or [])

    def topic_id(self) -> str | None:
        """The broker's id of the topic (fresh metadata); None when missing or not reported."""
        self._fresh_topics()
        return topic_id(self.consumer, self.topic)

    def existing(self, partitions) -> list[int]:
        """Those of ``partitions`` the topic has now (offsets may only be asked for these: a
        missing partition raises ``KeyError`` in kafka-python, a missing topic times out)."""
        wanted = {int(p) for p in partitions}
        return sorted(wanted & set(self.partitions())) if wanted else []

    def record_stamps(self, offsets: Offsets, timeout_s: float = 2.0) -> dict[int, str]:
        """``{partition: stamp}`` of the records at ``offsets`` (``"<timestamp ms>:<crc32 of
        key>"``); partitions whose record did not arrive within ``timeout_s`` are left out."""
        import zlib

        present = set(self.existing(offsets))
        offsets = {p: o for p, o in offsets.items() if p in present}
        stamps: dict[int, str] = {}

        def take(partition: int, records: list) -> bool:
            target = offsets[partition]
            for r in records:
                if r.offset == target:
                    stamps[partition] = f"{r.timestamp}:{zlib.crc32(r.key or b'')}"
                    return True
            return bool(records) and records[-1].offset >= target  # past it: compacted away

        read_each(self.consumer, self.topic, offsets, take, timeout_s)
        return stamps

    def beginning_offsets(self, partitions: Sequence[int]) -> Offsets:
        """Earliest offsets of those of ``partitions`` that exist (the others are left out)."""
        from kafka import TopicPartition

        tps = [TopicPartition(self.topic, p) for p in self.existing(partitions)]
        if not tps:
            return {}
        return {tp.partition: off for tp, off in self.consumer.beginning_offsets(tps).items()}

    def reported_end_offsets(self, partitions: Sequence[int] | None = None) -> Offsets:
        """The end offsets the broker reports for ``partitions`` (default: the topic's; one
        list-offsets request; no fetch past them, so short by Tansu's last record batch): a
        cheap sign of new records, which move them."""
        from kafka import TopicPartition

        parts = self.partitions() if partitions is None else partitions
        tps = [TopicPartition(self.topic, p) for p in parts]
        if not tps:
            return {}
        return {tp.partition: off for tp, off in self.consumer.end_offsets(tps).items()}

    def await_records(
        self,
        seen: Offsets | None,
        timeout_s: float,
        every_s: float = 0.1,
        settle_every_s: float = 0.05,
        settle_s: float = 1.0,
    ) -> Offsets:
        """Wait until the reported end offsets differ from ``seen`` (new records, or partitions
        that came or went), looking every ``every_s``, at most ``timeout_s``; then, while they
        keep moving (a large poll published in pieces), until they hold still for
        ``settle_every_s``, at most ``settle_s`` more. Returns the last reported end offsets
        (``seen`` for the next call; ``seen`` itself when nothing moved). One list-offsets
        request a look (about 1.3 ms of CPU here); while the broker cannot answer, the wait
        lasts ``timeout_s`` and ``seen`` is returned (the caller's own requests say why)."""
        deadline = time.monotonic() + timeout_s
        try:
            now = self.reported_end_offsets()
            while seen is not None and now == seen and time.monotonic() < deadline:
                time.sleep(every_s)
                now = self.reported_end_offsets()
            if seen is None or now == seen:
                return now
            settled = time.monotonic() + settle_s
            while time.monotonic() < settled:
                time.sleep(settle_every_s)
                later = self.reported_end_offsets()
                if later == now:
                    break
                now = later
            return now
        except Exception as exc:  # noqa: BLE001 - the broker away: wait it out, not a busy loop
            logger.debug("waiting for records: %s", exc)
            time.sleep(max(0.0, deadline - time.monotonic()))
            return {} if seen is None else seen

    def end_offsets(self, partitions: Sequence[int], probe_timeout_s: float = 2.0) -> Offsets:
        """True end offsets: reported end, extended by fetching past it (see module doc)."""
        from kafka import TopicPartition

        partitions = self.existing(partitions)  # missing ones are left out
        if not partitions:
            return {}
        c = self.consumer
        tps = [TopicPartition(self.topic, p) for p in partitions]
        reported = self.reported_end_offsets(partitions)
        begin = self.beginning_offsets(partitions)
        probe = [tp for tp in tps if reported[tp.partition] > begin.get(tp.partition, 0)]
        true_end = dict(reported)
        if not probe:
            return true_end
        c.assign(probe)
        for tp in probe:
            c.seek(tp, reported[tp.partition] - 1)
        pending = {tp.partition for tp in probe}
        deadline = time.monotonic() + probe_timeout_s
        while pending and time.monotonic() < deadline:
            records = c.poll(timeout_ms=200, max_records=1_000_000, update_offsets=True)
            for tp, recs in records.items():
                if recs:
                    last = recs[-1].offset + 1
                    true_end[tp.partition] = max(true_end[tp.partition], last)
                    pending.discard(tp.partition)
        for tp in probe:
            # position() is the offset after the last record handed out (covers empty polls).
            try:
                true_end[tp.partition] = max(true_end[tp.partition], c.position(tp))
            except Exception:  # pragma: no cover - position unknown after a failed fetch
                pass
        c.assign([])
        if pending:
            logger.debug("end-offset probe got no record from partitions %s", sorted(pending))
        return true_end


# ------------------------------------------------------------------------------------------------
# The live path's record fetch: librdkafka (confluent-kafka)
# ------------------------------------------------------------------------------------------------
class Fetched:
    """Records fetched: their values in offset order per partition and each partition's next
    offset after them."""

    __slots__ = ("values", "next_offsets")

    def __init__(self, values: list | None = None, next_offsets: dict | None = None):
        self.values = values if values is not None else []
        self.next_offsets = next_offsets if next_offsets is not None else {}

    def __len__(self) -> int:
        return len(self.values)

    def extend(self, other: Fetched) -> None:
        self.values.extend(other.values)
        for p, o in other.next_offsets.items():
            if o > self.next_offsets.get(p, -1):
                self.next_offsets[p] = o


class RecordFetcher:
    """Records of assigned partitions of one topic, fetched by librdkafka (confluent-kafka): its
    fetch and record decoding run in C threads of their own, so fetching goes on while the
    caller computes and an idle fetch round trip costs no Python (measured beside aiokafka, the
    fetcher before it: docs/PERFORMANCE.md, thirteenth round). Group-less in effect (partitions
    assigned by hand, nothing committed; the group id only satisfies the client), ``earliest``
    where an offset is out of range, and it never causes a topic to be auto-created (the
    recreated-topic tests restart Tansu under it). Known limit (docs/DECISIONS.md): librdkafka
    2.16 crashes (SIGSEGV) when a topic it fetches is deleted on a running Tansu broker."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        security: KafkaSecurity | None = None,
        *,
        client_id: str,
        fetch_max_wait_ms: int = 100,
        fetch_max_bytes: int = 64 * 1024 * 1024,
        max_partition_fetch_bytes: int = 16 * 1024 * 1024,
        metadata_max_age_ms: int = 5000,
    ):
        from confluent_kafka import Consumer

        self.topic = topic
        self._positions: dict[int, int | None] = {}
        self._consumer = Consumer(
            {
                **librdkafka_config(bootstrap, security),
                "client.id": client_id,
                "group.id": client_id,  # required by the client; never joined nor committed
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
                "auto.offset.reset": "earliest",
                "allow.auto.create.topics": False,
                "fetch.wait.max.ms": fetch_max_wait_ms,
                "fetch.max.bytes": fetch_max_bytes,
                "max.partition.fetch.bytes": max_partition_fetch_bytes,
                "topic.metadata.refresh.interval.ms": metadata_max_age_ms,
                "fetch.error.backoff.ms": 100,
                "reconnect.backoff.ms": 50,
                "reconnect.backoff.max.ms": 1000,
            },
            logger=_LibrdkafkaLog(__name__),
        )

    def assign(self, starts: Mapping[int, int | None]) -> None:
        """Read exactly the partitions of ``starts``, each from its offset (None: from the
        beginning)."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self._consumer.assign(
            [
                TopicPartition(self.topic, p, OFFSET_BEGINNING if o is None else o)
                for p, o in sorted(starts.items())
            ]
        )
        self._positions = dict(starts)

    def position(self, partition: int) -> int | None:
        """The next offset to read of an assigned partition (None when unknown)."""
        return self._positions.get(partition)

    def poll(self, timeout_s: float, max_records: int) -> Fetched:
        """The records fetched so far (waiting up to ``timeout_s`` for the first one), at most
        ``max_records``, in offset order per partition. librdkafka's ``consume`` waits until it
        has all ``max_records`` or the timeout ends, so one ``poll`` waits for the first record
        and ``consume`` without waiting takes what is already fetched."""
        first = self._consumer.poll(timeout_s)
        if first is None:
            return Fetched()
        records = [first]
        if max_records > 1:
            records.extend(self._consumer.consume(max_records - 1, 0))
        fetched = Fetched()
        values, next_offsets = fetched.values, fetched.next_offsets
        for record in records:
            error = record.error()
            if error is None:
                next_offsets[record.partition()] = record.offset() + 1  # offset order
                values.append(record.value())
            elif error.fatal():
                from confluent_kafka import KafkaException

                raise KafkaException(error)
            else:  # a broker away, a partition gone: librdkafka retries; the caller's metadata
                logger.debug("record fetch: %s", error)  # check decides what it means
        self._positions.update(next_offsets)
        return fetched

    def close(self) -> None:
        self._consumer.close()
