"""Typed settings read from the environment (and a local `.env`), in one place.

This is the only module that reads ``os.environ``. Every component gets its configuration through
:func:`load_settings` (and :func:`load_check_settings` for the checks and alerts), so the names in
the README's configuration table are the only knobs, and every one of them has a default: with
nothing set, the data directory is ``./data``, PostgreSQL is the embedded server under
``./data/postgres`` (started on first use), Kafka is an embedded broker (``marketflow up``) and
Spark runs ``local[*]``. Nothing reads the environment at import time; callers load settings when
they need them (a Dagster resource on first use, a sensor tick, a CLI command). The ``.env`` file
(``MARKETFLOW_DOTENV``) is read as defaults beneath the real environment, never copied into
``os.environ``: loading settings does not change the process environment (children get the
values through :func:`child_environment`).

Secrets (the CoinGecko key, passwords inside ``MARKETFLOW_POSTGRES_URL``, the alert webhook) are
kept out of ``repr`` and logs; use :func:`redact_url`.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

DEFAULT_TOPIC = "crypto_prices"
DLQ_SUFFIX = "_dlq"
DEFAULT_DATA_DIR = "data"
DEFAULT_DAGSTER_UI_URL = "http://127.0.0.1:3000"

COINGECKO_PLANS = {
    # plan: (base URL, header carrying the key)
    "public": ("https://api.coingecko.com/api/v3", None),
    "demo": ("https://api.coingecko.com/api/v3", "x-cg-demo-api-key"),
    "pro": ("https://pro-api.coingecko.com/api/v3", "x-cg-pro-api-key"),
}

# Variable names used in messages (documented in the README's configuration table).
ENV_POSTGRES_URL = "MARKETFLOW_POSTGRES_URL"
ENV_DATA_DIR = "MARKETFLOW_DATA_DIR"
ENV_SPARK_REMOTE = "MARKETFLOW_SPARK_REMOTE"
ENV_SPARK_DRIVER_MEMORY = "MARKETFLOW_SPARK_DRIVER_MEMORY"
ENV_SPARK_CONNECT_MEMORY = "MARKETFLOW_SPARK_CONNECT_MEMORY"
ENV_SPARK_MAX_OFFSETS = "MARKETFLOW_SPARK_MAX_OFFSETS_PER_TRIGGER"
#: Heap of the streaming job's driver JVM: its micro-batches are bounded by
#: DEFAULT_SPARK_MAX_OFFSETS (a catch-up after an outage proceeds in several batches).
DEFAULT_SPARK_DRIVER_MEMORY = "512m"
#: Heap of the Spark Connect server's JVM (the Dagster runs' backfills): Spark's default.
DEFAULT_SPARK_CONNECT_MEMORY = "1g"
#: Records per micro-batch of the streaming job at most: 2 whole-market polls (15,000 coins).
DEFAULT_SPARK_MAX_OFFSETS = 30000
ENV_BATCH_NICE = "MARKETFLOW_BATCH_NICE"
#: Niceness ``marketflow up`` adds to the batch work - the streaming job, the Dagster daemon and
#: code server (runs, backfills), the Spark Connect server: on a busy machine they yield the cores
#: to ingest, the live path, the follower's refresh and the UI (0: all equal).
DEFAULT_BATCH_NICE = 5
ENV_PARTITION_START = "MARKETFLOW_PARTITION_START"
ENV_FRESHNESS_WARN = "MARKETFLOW_FRESHNESS_WARN_SECONDS"
ENV_FRESHNESS_ERROR = "MARKETFLOW_FRESHNESS_ERROR_SECONDS"
ENV_CHECK_WINDOW = "MARKETFLOW_CHECK_WINDOW_HOURS"
ENV_ALERT_WEBHOOK = "MARKETFLOW_ALERT_WEBHOOK_URL"
ENV_ALERT_MIN_SEVERITY = "MARKETFLOW_ALERT_MIN_SEVERITY"
#: MARKETFLOW_DOTENV: the dotenv file whose values serve as defaults beneath the environment
#: (default ``.env`` in the working directory; set it empty to read no file - the tests do).
ENV_DOTENV = "MARKETFLOW_DOTENV"
DEFAULT_DOTENV = ".env"
#: MARKETFLOW_TEST_POSTGRES_URL: the test suite's PostgreSQL (default: unset, the tests start
#: their own pgserver). Its database must be empty at session start: the tests drop tables.
ENV_TEST_POSTGRES_URL = "MARKETFLOW_TEST_POSTGRES_URL"
#: MARKETFLOW_TEST_KAFKA_BOOTSTRAP: the test suite's Kafka (default: unset, an embedded Tansu).
ENV_TEST_KAFKA_BOOTSTRAP = "MARKETFLOW_TEST_KAFKA_BOOTSTRAP"
#: Query parameters of a URL that carry a password (hidden by :func:`redact_url`).
SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd"})

DEFAULT_FRESHNESS_WARN_SECONDS = 120.0  # 4 missed 30 s polls
DEFAULT_FRESHNESS_ERROR_SECONDS = 300.0  # 10 missed polls: the stage is down
DEFAULT_CHECK_WINDOW_HOURS = 1.0
#: MARKETFLOW_RECONCILE_INTERVAL_SECONDS: how often ``reconciliation_sensor`` compares raw rows
#: per hour with ``price_indicators`` rows per hour (default 300 s).
ENV_RECONCILE_INTERVAL = "MARKETFLOW_RECONCILE_INTERVAL_SECONDS"
DEFAULT_RECONCILE_INTERVAL_SECONDS = 300.0
#: MARKETFLOW_RAW_RETENTION_HOURS: how long a data file of the ``raw_prices`` Delta table stays
#: on disk after a compaction removed it from the table (``VACUUM`` retention; >= 1, default 6).
#: A reader pinned to an older table version than this may find its files gone.
ENV_RAW_RETENTION = "MARKETFLOW_RAW_RETENTION_HOURS"
DEFAULT_RAW_RETENTION_HOURS = 6.0
MIN_RAW_RETENTION_HOURS = 1.0

# Ingest durability (issue #20): the write-ahead spool and the send retries.
#: MARKETFLOW_SPOOL_DIR: directory of the ingest write-ahead spool (every poll is fsynced there
#: before it is sent, and kept until it is in raw Parquet); default ``<MARKETFLOW_DATA_DIR>/spool``;
#: ``off``, ``none``, ``0`` or ``false`` disables it.
ENV_SPOOL_DIR = "MARKETFLOW_SPOOL_DIR"
#: MARKETFLOW_SPOOL_RECONCILE_SECONDS: how often ingest prunes the spool of records found in raw
#: Parquet and resends the ones the broker never acknowledged; default 60.
ENV_SPOOL_RECONCILE = "MARKETFLOW_SPOOL_RECONCILE_SECONDS"
#: MARKETFLOW_SEND_ATTEMPTS: attempts to get one poll acknowledged by Kafka before its
#: unacknowledged records count as lost (they stay in the spool); default 5.
ENV_SEND_ATTEMPTS = "MARKETFLOW_SEND_ATTEMPTS"
#: MARKETFLOW_SEND_BACKOFF_SECONDS: wait before the 2nd send attempt, doubled for each further
#: attempt (0.5, 1, 2, 4 s); default 0.5.
ENV_SEND_BACKOFF = "MARKETFLOW_SEND_BACKOFF_SECONDS"
#: MARKETFLOW_SPOOL_MAX_MB: size cap of the spool's polls and ack markers (issue #27); at 80 % one
#: alert, at the cap the oldest polls are dropped (acknowledged ones first) to keep the newest;
#: default 2048 (about 2 h of 15,000 coins every 30 s, 13 days of the default 100 coins).
ENV_SPOOL_MAX_MB = "MARKETFLOW_SPOOL_MAX_MB"
#: MARKETFLOW_SPOOL_MIN_FREE_MB: free space the spool's file system must keep after a write; a
#: poll that would leave less is held in memory (not sent) until it can be spooled; default 256.
ENV_SPOOL_MIN_FREE_MB = "MARKETFLOW_SPOOL_MIN_FREE_MB"
DEFAULT_SPOOL_RECONCILE_SECONDS = 60.0
DEFAULT_SEND_ATTEMPTS = 5
DEFAULT_SEND_BACKOFF_SECONDS = 0.5
DEFAULT_SPOOL_MAX_MB = 2048.0
DEFAULT_SPOOL_MIN_FREE_MB = 256.0
SPOOL_OFF_VALUES = ("off", "none", "0", "false")


class ConfigError(ValueError):
    """Bad configuration; the CLI turns it into a one-line message and exit code 2."""


# ------------------------------------------------------------------------------------------------
# Kafka connection security (docs/DEPLOY.md): one object every Kafka client is built from
# ------------------------------------------------------------------------------------------------
ENV_KAFKA_BOOTSTRAP = "MARKETFLOW_KAFKA_BOOTSTRAP"
ENV_KAFKA_PROTOCOL = "MARKETFLOW_KAFKA_SECURITY_PROTOCOL"
ENV_KAFKA_MECHANISM = "MARKETFLOW_KAFKA_SASL_MECHANISM"
ENV_KAFKA_USERNAME = "MARKETFLOW_KAFKA_SASL_USERNAME"
ENV_KAFKA_PASSWORD = "MARKETFLOW_KAFKA_SASL_PASSWORD"
ENV_KAFKA_CAFILE = "MARKETFLOW_KAFKA_SSL_CAFILE"
ENV_KAFKA_CERTFILE = "MARKETFLOW_KAFKA_SSL_CERTFILE"
ENV_KAFKA_KEYFILE = "MARKETFLOW_KAFKA_SSL_KEYFILE"
#: MARKETFLOW_KAFKA_SSL_CHECK_HOSTNAME: ``1`` (default) verifies that the broker's certificate
#: names the host connected to; ``0`` only for a test broker whose certificate cannot match.
ENV_KAFKA_CHECK_HOSTNAME = "MARKETFLOW_KAFKA_SSL_CHECK_HOSTNAME"
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client connects: the protocol, SASL credentials and TLS files.

    The password is kept out of ``repr``; :meth:`describe` is the loggable form."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """One loggable line (never the password), e.g. ``SASL_SSL, SCRAM-SHA-512 as ingest``."""
        parts = [self.protocol]
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} as {self.sasl_username}")
        if self.uses_tls:
            parts.append(f"CA {self.ssl_cafile}" if self.ssl_cafile else "system CAs")
            if self.ssl_certfile:
                parts.append("client certificate")
            if not self.ssl_check_hostname:
                parts.append("host names NOT verified")
        return ", ".join(parts)


def parse_bootstrap(value: str, name: str = ENV_KAFKA_BOOTSTRAP) -> list[str]:
    """``host:port[,host:port...]`` -> the list of servers; a ConfigError names the bad entry.

    IPv6 addresses go in brackets (``[::1]:9092``)."""
    if "://" in value:
        raise ConfigError(
            f"{name}={value!r} must be host:port[,host:port...] without a scheme "
            "(drop the PLAINTEXT:// / SASL_SSL:// prefix; the protocol is "
            f"{ENV_KAFKA_PROTOCOL})"
        )
    servers = [s.strip() for s in value.split(",")]
    if not value.strip() or any(not s for s in servers):
        raise ConfigError(f"{name}={value!r} must be host:port[,host:port...] (an empty entry)")
    for server in servers:
        host, sep, port = server.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]") and len(host) > 2
        if bracketed:
            host = host[1:-1]
        valid_host = (
            bool(host)
            and not any(c in host for c in "/@ []")
            and (":" not in host or bracketed)  # IPv6 only in brackets
        )
        if not sep or not valid_host:
            raise ConfigError(f"{name}: {server!r} is not host:port")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{name}: {server!r} has no valid port (1-65535)")
    return servers


def load_kafka_security(env: Mapping[str, str]) -> KafkaSecurity:
    """Read and check the Kafka security settings (see the ``ENV_KAFKA_*`` names)."""

    def get(name: str) -> str | None:
        value = env.get(name)
        return value.strip() if value and value.strip() else None

    protocol = (get(ENV_KAFKA_PROTOCOL) or "PLAINTEXT").upper()
    if protocol not in KAFKA_PROTOCOLS:
        raise ConfigError(
            f"{ENV_KAFKA_PROTOCOL}={protocol!r} is not one of {', '.join(KAFKA_PROTOCOLS)}"
        )
    username, password = get(ENV_KAFKA_USERNAME), env.get(ENV_KAFKA_PASSWORD) or None
    mechanism = get(ENV_KAFKA_MECHANISM)
    if mechanism is not None:
        mechanism = mechanism.upper()
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(
                f"{ENV_KAFKA_MECHANISM}={mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}"
            )
    sasl = protocol.startswith("SASL_")
    if sasl:
        if not username or not password:
            raise ConfigError(
                f"{ENV_KAFKA_PROTOCOL}={protocol} needs {ENV_KAFKA_USERNAME} and "
                f"{ENV_KAFKA_PASSWORD}"
            )
        mechanism = mechanism or "PLAIN"
    elif username or password or mechanism:
        raise ConfigError(
            f"SASL settings are set but {ENV_KAFKA_PROTOCOL}={protocol} does not use SASL"
            " (SASL_SSL or SASL_PLAINTEXT)"
        )
    files: dict[str, Path | None] = {}
    for name in (ENV_KAFKA_CAFILE, ENV_KAFKA_CERTFILE, ENV_KAFKA_KEYFILE):
        raw = get(name)
        path = Path(raw).expanduser().absolute() if raw else None
        if path is not None and not path.is_file():
            raise ConfigError(f"{name}={raw!r}: no such file")
        files[name] = path
    tls = protocol in ("SSL", "SASL_SSL")
    if not tls and any(files.values()):
        raise ConfigError(
            f"TLS files are set but {ENV_KAFKA_PROTOCOL}={protocol} does not use TLS"
            " (SSL or SASL_SSL)"
        )
    if bool(files[ENV_KAFKA_CERTFILE]) != bool(files[ENV_KAFKA_KEYFILE]):
        raise ConfigError(f"mutual TLS needs both {ENV_KAFKA_CERTFILE} and {ENV_KAFKA_KEYFILE}")
    check = (get(ENV_KAFKA_CHECK_HOSTNAME) or "1").lower()
    if check not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ConfigError(f"{ENV_KAFKA_CHECK_HOSTNAME}={check!r} must be 1 or 0")
    return KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=mechanism if sasl else None,
        sasl_username=username if sasl else None,
        sasl_password=password if sasl else None,
        ssl_cafile=files[ENV_KAFKA_CAFILE],
        ssl_certfile=files[ENV_KAFKA_CERTFILE],
        ssl_keyfile=files[ENV_KAFKA_KEYFILE],
        ssl_check_hostname=check in ("1", "true", "yes", "on"),
    )


def dotenv_path(env: Mapping[str, str] | None = None) -> Path | None:
    """The dotenv file to read (``MARKETFLOW_DOTENV``, default ``./.env``); None: read none."""
    env = os.environ if env is None else env
    value = env.get(ENV_DOTENV, DEFAULT_DOTENV)
    return Path(value) if value.strip() else None


def dotenv_values_once(path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The values of the dotenv file (``path``, default :func:`dotenv_path`), without touching
    ``os.environ``; empty when there is no file."""
    path = dotenv_path() if path is None else Path(path)
    if path is None or not path.is_file():
        return {}
    try:
        from dotenv import dotenv_values
    except ImportError:  # pragma: no cover - python-dotenv is a dependency
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_dotenv_once(path: str | os.PathLike[str] | None = None) -> None:
    """Copy the dotenv file into ``os.environ`` without overriding the real environment.

    Nothing in the package calls it (settings read the file as defaults, see
    :func:`environment`); kept for scripts that want the old behaviour explicitly."""
    for key, value in dotenv_values_once(path).items():
        os.environ.setdefault(key, value)


def environment() -> dict[str, str]:
    """``os.environ`` over the dotenv file's values (the real environment wins); a copy."""
    return {**dotenv_values_once(), **os.environ}


def _environment(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return environment() if env is None else env


def redact_url(url: str | None) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe to log): the userinfo password
    and ``password=`` / ``passwd=`` / ``pwd=`` query parameters (libpq accepts ``?password=``).
    The rest of the URL is kept as written."""
    if not url:
        return ""
    rest, hash_, fragment = url.partition("#")
    head, mark, query = rest.partition("?")
    try:
        parts = urlsplit(head)
        password = parts.password
    except ValueError:  # not parseable as a URL: show nothing of it
        return "***"
    if password is not None:
        netloc = parts.netloc.rsplit("@", 1)
        head = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc[-1]}"))
    if query:
        pairs = []
        for pair in query.split("&"):
            key = unquote(pair.partition("=")[0]).strip().lower()
            pairs.append(f"{pair.partition('=')[0]}=***" if key in SECRET_QUERY_KEYS else pair)
        query = "&".join(pairs)
    return head + mark + query + hash_ + fragment


def redact_secret(text: str, url: str | None) -> str:
    """``text`` (e.g. a driver's error message) with the password of ``url`` - as written and
    percent-decoded - replaced by ``***``."""
    if not text or not url:
        return text
    try:
        raw = urlsplit(url).netloc.rpartition("@")[0].partition(":")[2]
    except ValueError:
        return text
    for secret in {raw, unquote(raw)}:
        if secret:
            text = text.replace(secret, "***")
    return text


def parse_utc(value: str, name: str = "time") -> datetime:
    """ISO-8601 date or date-time -> tz-aware UTC datetime (naive input means UTC)."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"{name}={value!r} is not an ISO-8601 date or date-time") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def floor_hour(ts: datetime) -> datetime:
    """Start of the UTC hour holding ``ts`` (tz-aware UTC; naive input means UTC)."""
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return ts.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str | None = None
    kafka_topic: str = DEFAULT_TOPIC
    #: Protocol, SASL credentials and TLS files of every Kafka client (docs/DEPLOY.md).
    kafka_security: KafkaSecurity = field(default_factory=lambda: KafkaSecurity())
    #: None: the embedded PostgreSQL under ``data_dir/postgres`` (started on first use).
    postgres_url: str | None = field(default=None, repr=False)
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    coingecko_api_key: str | None = field(default=None, repr=False)
    coingecko_api_plan: str = "public"
    coingecko_api_url: str = COINGECKO_PLANS["public"][0]
    local_max_rows: int | None = None  # None: the pyspark resource's default
    spark_master: str = "local[*]"
    spark_remote: str | None = None  # sc://host:port of a Spark Connect server
    spark_shuffle_partitions: str = "4"
    spark_ui: str = "false"
    spark_log_level: str = "WARN"
    #: Heap (``spark.driver.memory``) of the streaming job's driver and of the Spark Connect server.
    spark_driver_memory: str = DEFAULT_SPARK_DRIVER_MEMORY
    spark_connect_memory: str = DEFAULT_SPARK_CONNECT_MEMORY
    #: Cap on the records of one micro-batch of the streaming job (its default
    #: ``--max-offsets-per-trigger``).
    spark_max_offsets_per_trigger: int = DEFAULT_SPARK_MAX_OFFSETS
    #: Niceness added to the batch children of ``marketflow up`` (0..19; see DEFAULT_BATCH_NICE).
    batch_nice: int = DEFAULT_BATCH_NICE
    #: First hourly partition (explicit); None: the first hour of raw data, else today.
    partition_start: datetime | None = None
    dagster_home: str | None = None
    #: Where the Dagster UI serves (the dashboard links failed runs to it).
    dagster_ui_url: str = DEFAULT_DAGSTER_UI_URL
    #: Price alert rules of the live path (``marketflow_assets/price_alerts.py``).
    price_alerts_file: Path | None = None
    log_level: str = "INFO"
    bench_dir: Path = Path(DEFAULT_DATA_DIR) / "bench"
    #: ``MARKETFLOW_SPOOL_DIR`` as given: None = ``data_dir/spool``, "off" = no spool.
    spool: str | None = None
    spool_reconcile_seconds: float = DEFAULT_SPOOL_RECONCILE_SECONDS
    send_attempts: int = DEFAULT_SEND_ATTEMPTS
    send_backoff_seconds: float = DEFAULT_SEND_BACKOFF_SECONDS
    spool_max_mb: float = DEFAULT_SPOOL_MAX_MB
    spool_min_free_mb: float = DEFAULT_SPOOL_MIN_FREE_MB

    @property
    def spool_dir(self) -> Path | None:
        """The ingest write-ahead spool (``data_dir/spool`` by default); None when disabled."""
        if self.spool is None:
            return self.data_dir / "spool"
        if self.spool.lower() in SPOOL_OFF_VALUES:
            return None
        return Path(self.spool).expanduser().absolute()

    @property
    def dlq_topic(self) -> str:
        return self.kafka_topic + DLQ_SUFFIX

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw_prices"

    @property
    def rejects_dir(self) -> Path:
        return self.data_dir / "raw_prices_rejects"

    @property
    def checkpoint_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def postgres_dir(self) -> Path:
        """Data directory of the embedded PostgreSQL (used when ``postgres_url`` is None)."""
        return self.data_dir / "postgres"

    @property
    def coingecko_key_header(self) -> str | None:
        return COINGECKO_PLANS[self.coingecko_api_plan][1]


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default: ``os.environ`` after loading ``.env``)."""
    env = _environment(env)

    def get(name: str) -> str | None:
        value = env.get(name)
        return value.strip() if value and value.strip() else None

    key = get("COINGECKO_API_KEY")
    plan = (get("COINGECKO_API_PLAN") or ("demo" if key else "public")).lower()
    if plan not in COINGECKO_PLANS:
        raise ConfigError(f"COINGECKO_API_PLAN={plan!r} is not one of {', '.join(COINGECKO_PLANS)}")
    if plan != "public" and not key:
        raise ConfigError(f"COINGECKO_API_PLAN={plan} needs COINGECKO_API_KEY to be set")
    postgres_url = get(ENV_POSTGRES_URL)
    if postgres_url and urlsplit(postgres_url).scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"{ENV_POSTGRES_URL} must look like postgresql://user:pass@host:port/db")
    start = get(ENV_PARTITION_START)
    bootstrap = get(ENV_KAFKA_BOOTSTRAP)
    if bootstrap is not None:
        bootstrap = ",".join(parse_bootstrap(bootstrap))
    kafka_security = load_kafka_security(env)
    if bootstrap is None and kafka_security.protocol != "PLAINTEXT":
        raise ConfigError(
            f"{ENV_KAFKA_PROTOCOL}={kafka_security.protocol} needs {ENV_KAFKA_BOOTSTRAP} "
            "(the embedded broker speaks PLAINTEXT only)"
        )
    return Settings(
        kafka_bootstrap=bootstrap,
        kafka_security=kafka_security,
        kafka_topic=get("MARKETFLOW_KAFKA_TOPIC") or DEFAULT_TOPIC,
        postgres_url=postgres_url,
        data_dir=Path(get(ENV_DATA_DIR) or DEFAULT_DATA_DIR).expanduser().absolute(),
        coingecko_api_key=key,
        coingecko_api_plan=plan,
        coingecko_api_url=(get("COINGECKO_API_URL") or COINGECKO_PLANS[plan][0]).rstrip("/"),
        local_max_rows=parse_local_max_rows(get("MARKETFLOW_LOCAL_MAX_ROWS")),
        spark_master=get("MARKETFLOW_SPARK_MASTER") or "local[*]",
        spark_remote=get(ENV_SPARK_REMOTE),
        spark_shuffle_partitions=get("MARKETFLOW_SPARK_SHUFFLE_PARTITIONS") or "4",
        spark_ui=get("MARKETFLOW_SPARK_UI") or "false",
        spark_log_level=get("MARKETFLOW_SPARK_LOG_LEVEL") or "WARN",
        spark_driver_memory=_jvm_memory(env, ENV_SPARK_DRIVER_MEMORY, DEFAULT_SPARK_DRIVER_MEMORY),
        spark_connect_memory=_jvm_memory(
            env, ENV_SPARK_CONNECT_MEMORY, DEFAULT_SPARK_CONNECT_MEMORY
        ),
        spark_max_offsets_per_trigger=_positive_int(
            env, ENV_SPARK_MAX_OFFSETS, DEFAULT_SPARK_MAX_OFFSETS
        ),
        batch_nice=_nice(env, ENV_BATCH_NICE, DEFAULT_BATCH_NICE),
        partition_start=(
            None if start is None else floor_hour(parse_utc(start, ENV_PARTITION_START))
        ),
        dagster_home=get("DAGSTER_HOME"),
        dagster_ui_url=(get("MARKETFLOW_DAGSTER_UI_URL") or DEFAULT_DAGSTER_UI_URL).rstrip("/"),
        price_alerts_file=Path(
            get("MARKETFLOW_PRICE_ALERTS_FILE")
            or Path(get(ENV_DATA_DIR) or DEFAULT_DATA_DIR) / "price_alerts.txt"
        )
        .expanduser()
        .absolute(),
        log_level=get("MARKETFLOW_LOG_LEVEL") or "INFO",
        bench_dir=Path(get("MARKETFLOW_BENCH_DIR") or Path(DEFAULT_DATA_DIR) / "bench").absolute(),
        spool=get(ENV_SPOOL_DIR),
        spool_reconcile_seconds=_positive_float(
            env, ENV_SPOOL_RECONCILE, DEFAULT_SPOOL_RECONCILE_SECONDS
        ),
        send_attempts=_positive_int(env, ENV_SEND_ATTEMPTS, DEFAULT_SEND_ATTEMPTS),
        send_backoff_seconds=_non_negative_float(
            env, ENV_SEND_BACKOFF, DEFAULT_SEND_BACKOFF_SECONDS
        ),
        spool_max_mb=_positive_float(env, ENV_SPOOL_MAX_MB, DEFAULT_SPOOL_MAX_MB),
        spool_min_free_mb=_non_negative_float(
            env, ENV_SPOOL_MIN_FREE_MB, DEFAULT_SPOOL_MIN_FREE_MB
        ),
    )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _int_in(env, name, default, 1)


def _nice(env: Mapping[str, str], name: str, default: int) -> int:
    return _int_in(env, name, default, 0, 19)


def _int_in(
    env: Mapping[str, str], name: str, default: int, low: int, high: int | None = None
) -> int:
    """The integer ``name`` of ``env`` within ``low`` .. ``high`` (no upper bound when None);
    ``default`` when unset; ConfigError otherwise."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    value = int(raw) if raw.isdigit() else None
    if value is None or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"from {low} to {high}"
        raise ConfigError(f"{name}={raw!r} must be an integer {bounds}")
    return value


def _jvm_memory(env: Mapping[str, str], name: str, default: str) -> str:
    """A JVM heap size as ``spark.driver.memory`` takes it (``512m``, ``2g``); at least 512m, as
    Spark refuses a driver with less than 450 MB."""
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    match = re.fullmatch(r"(\d+)([kmgt])b?", raw)
    mb = {"k": 2**-10, "m": 1, "g": 2**10, "t": 2**20}
    if match is None or int(match.group(1)) * mb[match.group(2)] < 512:
        raise ConfigError(
            f"{name}={raw!r} must be a JVM size of at least 512m (Spark needs 450 MB), e.g. 1g"
        )
    return match.group(1) + match.group(2)


def _non_negative_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={raw!r} must be a number >= 0")
    return value


def parse_local_max_rows(value: str | None) -> int | None:
    """``MARKETFLOW_LOCAL_MAX_ROWS`` as an int >= 0; None when unset (the resource default)."""
    if value is None or not value.strip():
        return None
    if not value.strip().isdigit():
        raise ConfigError(f"MARKETFLOW_LOCAL_MAX_ROWS={value!r} must be an integer >= 0")
    return int(value)


# ------------------------------------------------------------------------------------------------
# Checks and alerts
# ------------------------------------------------------------------------------------------------
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


def webhook_url(env: Mapping[str, str]) -> str | None:
    """``MARKETFLOW_ALERT_WEBHOOK_URL`` checked: an ``http(s)://host...`` URL, or None when unset
    (the message never shows the URL: it usually carries a token)."""
    url = (env.get(ENV_ALERT_WEBHOOK) or "").strip() or None
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{ENV_ALERT_WEBHOOK} must be an http:// or https:// URL with a host")
    return url


def load_check_settings(env: Mapping[str, str] | None = None) -> CheckSettings:
    """Read the check settings from ``env`` (default ``os.environ``); raises ConfigError."""
    env = _environment(env)
    warn = _positive_float(env, ENV_FRESHNESS_WARN, DEFAULT_FRESHNESS_WARN_SECONDS)
    error = _positive_float(env, ENV_FRESHNESS_ERROR, DEFAULT_FRESHNESS_ERROR_SECONDS)
    if error < warn:
        raise ConfigError(
            f"{ENV_FRESHNESS_ERROR}={error:g} must be >= {ENV_FRESHNESS_WARN}={warn:g}"
        )
    url = webhook_url(env)
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


def load_reconcile_interval(env: Mapping[str, str] | None = None) -> float:
    """``MARKETFLOW_RECONCILE_INTERVAL_SECONDS`` (> 0, default 300), read at each sensor tick."""
    return _positive_float(
        _environment(env), ENV_RECONCILE_INTERVAL, DEFAULT_RECONCILE_INTERVAL_SECONDS
    )


def load_raw_retention_hours(env: Mapping[str, str] | None = None) -> float:
    """``MARKETFLOW_RAW_RETENTION_HOURS`` (>= 1, default 6): the raw table's VACUUM retention."""
    env = _environment(env)
    hours = _positive_float(env, ENV_RAW_RETENTION, DEFAULT_RAW_RETENTION_HOURS)
    if hours < MIN_RAW_RETENTION_HOURS:
        raise ConfigError(
            f"{ENV_RAW_RETENTION}={env.get(ENV_RAW_RETENTION)!r} must be at least "
            f"{MIN_RAW_RETENTION_HOURS:g} hour (readers pinned to a table version need its files)"
        )
    return hours


# ------------------------------------------------------------------------------------------------
# The process environment of Spark and of child processes
# ------------------------------------------------------------------------------------------------
def export_default(name: str, value: str) -> None:
    """Set ``name`` for this process and its children unless it is already set."""
    os.environ.setdefault(name, value)


def export_pyspark_python() -> None:
    """Make Spark's Python workers run this interpreter (the venv), not the system python,
    unless ``PYSPARK_PYTHON`` / ``PYSPARK_DRIVER_PYTHON`` say otherwise."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def export_spark_local_ip() -> None:
    """Bind a local Spark driver to the loopback interface unless ``SPARK_LOCAL_IP`` is set."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def child_environment(
    overrides: Mapping[str, str] | None = None, defaults: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for a child process: this one's (over the dotenv file's values), with
    ``defaults`` for unset names and then ``overrides``."""
    env = {**(defaults or {}), **dotenv_values_once(), **os.environ}
    env.update(overrides or {})
    return env


def fresh_stack_environment(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``marketflow up`` that a test, a benchmark or a docs script starts on
    a data directory of its own: this process's environment without any Marketflow, CoinGecko or
    Dagster setting (so none of the caller's services, keys or data leak in), the data directory
    and its Dagster home, unbuffered output, then ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MARKETFLOW_", "COINGECKO_", "DAGSTER_"))
    }
    env.update(
        MARKETFLOW_DATA_DIR=str(data_dir),
        DAGSTER_HOME=str(Path(data_dir) / "dagster_home"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def lent_test_services(env: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """``(MARKETFLOW_TEST_POSTGRES_URL, MARKETFLOW_TEST_KAFKA_BOOTSTRAP)`` of the real environment
    (never the dotenv file): the servers a developer lends the test suite; None each when unset."""
    env = os.environ if env is None else env

    def get(name: str) -> str | None:
        value = (env.get(name) or "").strip()
        return value or None

    return get(ENV_TEST_POSTGRES_URL), get(ENV_TEST_KAFKA_BOOTSTRAP)


def launched_by_spark_submit() -> bool:
    """True in a driver started by ``spark-submit`` (its master is then spark-submit's)."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT"))


# ------------------------------------------------------------------------------------------------
# Monitoring: stream lag / dead-letter / reject thresholds and alert pacing (README: Monitoring)
# ------------------------------------------------------------------------------------------------
MONITORING_DEFAULTS = {
    # variable: (field, default)
    "MARKETFLOW_LAG_WARN_SECONDS": ("lag_warn_seconds", 60.0),
    "MARKETFLOW_LAG_ERROR_SECONDS": ("lag_error_seconds", 180.0),
    "MARKETFLOW_DLQ_RATE_WARN": ("dlq_rate_warn", 0.05),
    "MARKETFLOW_DLQ_RATE_ERROR": ("dlq_rate_error", 0.25),
    "MARKETFLOW_REJECT_RATE_WARN": ("reject_rate_warn", 0.01),
    "MARKETFLOW_REJECT_RATE_ERROR": ("reject_rate_error", 0.10),
    "MARKETFLOW_RATE_WINDOW_SECONDS": ("rate_window_seconds", 600.0),
    "MARKETFLOW_ALERT_COOLDOWN_SECONDS": ("alert_cooldown_seconds", 60.0),
    "MARKETFLOW_ALERT_STARTUP_GRACE_SECONDS": ("startup_grace_seconds", 600.0),
}


@dataclass(frozen=True)
class MonitoringSettings:
    """Thresholds of the stream checks and the pacing of alerts (WARN <= ERROR each)."""

    lag_warn_seconds: float = 60.0
    lag_error_seconds: float = 180.0
    dlq_rate_warn: float = 0.05
    dlq_rate_error: float = 0.25
    reject_rate_warn: float = 0.01
    reject_rate_error: float = 0.10
    rate_window_seconds: float = 600.0
    #: a check or job that changed state is alerted at most once per cooldown (flaps are held)
    alert_cooldown_seconds: float = 60.0
    #: "no data yet" failures are not alerted this long after the code location loaded
    startup_grace_seconds: float = 600.0
    alert_webhook_url: str | None = field(default=None, repr=False)


def load_monitoring_settings(env: dict[str, str] | None = None) -> MonitoringSettings:
    """Build :class:`MonitoringSettings` from ``env`` (default: ``os.environ`` + ``.env``)."""
    if env is None:
        env = environment()
    values: dict[str, float] = {}
    for name, (attr, default) in MONITORING_DEFAULTS.items():
        raw = (env.get(name) or "").strip()
        try:
            value = float(raw) if raw else default
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if not value >= 0 or value == float("inf"):
            raise ConfigError(f"{name}={raw!r} must be a number >= 0")
        values[attr] = value
    for kind in ("lag", "dlq_rate", "reject_rate"):
        warn_key, error_key = (
            ("lag_warn_seconds", "lag_error_seconds")
            if kind == "lag"
            else (f"{kind}_warn", f"{kind}_error")
        )
        if values[error_key] < values[warn_key]:
            raise ConfigError(f"the {kind} ERROR threshold must be >= its WARN threshold")
    return MonitoringSettings(**values, alert_webhook_url=webhook_url(env))


def load_pipeline_settings(env: dict[str, str] | None = None) -> Settings:
    """:class:`Settings` without the CoinGecko part (which is validated only where it is used):
    what the Dagster code location needs, so a bad CoinGecko variable cannot break its load."""
    if env is None:
        env = environment()
    return load_settings({k: v for k, v in env.items() if not k.startswith("COINGECKO_")})


# ------------------------------------------------------------------------------------------------
# Live path: Kafka -> price_indicators / market_movers in seconds (marketflow_assets/live)
# ------------------------------------------------------------------------------------------------
#: ``1`` (default): ``marketflow up`` starts the live consumer (``marketflow live``); ``0``: not.
ENV_LIVE = "MARKETFLOW_LIVE"
#: Seconds one Kafka poll of the live consumer waits for records (default 0.1).
ENV_LIVE_POLL_TIMEOUT = "MARKETFLOW_LIVE_POLL_TIMEOUT"
#: Most records the live consumer folds into one transaction (default 100000).
ENV_LIVE_MAX_BATCH = "MARKETFLOW_LIVE_MAX_BATCH"
#: Arrow's allocator in ``marketflow live`` (Arrow's own variable; see runtime/heap.py).
ENV_ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL"
ARROW_POOLS = ("system", "mimalloc", "jemalloc")


def malloc_set_by_environment(names: Iterable[str], env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment sets any of ``names``: glibc's freed-memory parameters an
    operator may set for the stream processes themselves (``runtime/heap.keep_freed_memory``
    then leaves them alone)."""
    env = os.environ if env is None else env
    return any(name in env for name in names)


@dataclass(frozen=True)
class LiveSettings:
    """Settings of the live consumer (README: live path)."""

    enabled: bool = True
    poll_timeout_s: float = 0.1
    max_batch_records: int = 100_000
    #: Arrow's allocator: ``system`` (malloc) unless ``ARROW_DEFAULT_MEMORY_POOL`` names another
    arrow_memory_pool: str = "system"


def load_live_settings(env: Mapping[str, str] | None = None) -> LiveSettings:
    """Read :class:`LiveSettings` from ``env`` (default: ``os.environ`` + ``.env``)."""
    env = _environment(env)
    raw = (env.get(ENV_LIVE) or "1").strip().lower()
    if raw not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ConfigError(f"{ENV_LIVE}={raw!r} must be 1 or 0")
    batch_raw = (env.get(ENV_LIVE_MAX_BATCH) or "").strip()
    if batch_raw and (not batch_raw.isdigit() or int(batch_raw) < 1):
        raise ConfigError(f"{ENV_LIVE_MAX_BATCH}={batch_raw!r} must be an integer >= 1")
    pool = (env.get(ENV_ARROW_POOL) or "").strip().lower() or "system"
    if pool not in ARROW_POOLS:
        raise ConfigError(f"{ENV_ARROW_POOL}={pool!r} must be one of {', '.join(ARROW_POOLS)}")
    return LiveSettings(
        enabled=raw in ("1", "true", "yes", "on"),
        poll_timeout_s=_positive_float(env, ENV_LIVE_POLL_TIMEOUT, 0.1),
        max_batch_records=int(batch_raw) if batch_raw else 100_000,
        arrow_memory_pool=pool,
    )
