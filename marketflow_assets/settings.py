"""Typed settings read from the environment (and a local `.env`), in one place.

Every component reads its configuration through :func:`load_settings`, so the names in the
README's configuration table are the only knobs. Secrets (the CoinGecko key, passwords inside
``MARKETFLOW_POSTGRES_URL``) are kept out of ``repr`` and logs; use :func:`redact_url`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_TOPIC = "crypto_prices"
DLQ_SUFFIX = "_dlq"

COINGECKO_PLANS = {
    # plan: (base URL, header carrying the key)
    "public": ("https://api.coingecko.com/api/v3", None),
    "demo": ("https://api.coingecko.com/api/v3", "x-cg-demo-api-key"),
    "pro": ("https://pro-api.coingecko.com/api/v3", "x-cg-pro-api-key"),
}


class ConfigError(ValueError):
    """Bad configuration; the CLI turns it into a one-line message and exit code 2."""


def load_dotenv_once(path: str | os.PathLike[str] = ".env") -> None:
    """Load ``.env`` from the working directory without overriding the real environment."""
    try:
        from dotenv import load_dotenv
    except ImportError:  # pragma: no cover - python-dotenv is a dependency
        return
    if Path(path).is_file():
        load_dotenv(path, override=False)


def redact_url(url: str | None) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe to log)."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str | None = None
    kafka_topic: str = DEFAULT_TOPIC
    postgres_url: str | None = field(default=None, repr=False)
    data_dir: Path = Path("data")
    coingecko_api_key: str | None = field(default=None, repr=False)
    coingecko_api_plan: str = "public"
    coingecko_api_url: str = COINGECKO_PLANS["public"][0]
    local_max_rows: int | None = None  # None: the pyspark resource's default

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
    def coingecko_key_header(self) -> str | None:
        return COINGECKO_PLANS[self.coingecko_api_plan][1]


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default: ``os.environ`` after loading ``.env``)."""
    if env is None:
        load_dotenv_once()
        env = dict(os.environ)

    def get(name: str) -> str | None:
        value = env.get(name)
        return value.strip() if value and value.strip() else None

    key = get("COINGECKO_API_KEY")
    plan = (get("COINGECKO_API_PLAN") or ("demo" if key else "public")).lower()
    if plan not in COINGECKO_PLANS:
        raise ConfigError(f"COINGECKO_API_PLAN={plan!r} is not one of {', '.join(COINGECKO_PLANS)}")
    if plan != "public" and not key:
        raise ConfigError(f"COINGECKO_API_PLAN={plan} needs COINGECKO_API_KEY to be set")
    postgres_url = get("MARKETFLOW_POSTGRES_URL")
    if postgres_url and urlsplit(postgres_url).scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            "MARKETFLOW_POSTGRES_URL must look like postgresql://user:pass@host:port/db"
        )
    return Settings(
        kafka_bootstrap=get("MARKETFLOW_KAFKA_BOOTSTRAP"),
        kafka_topic=get("MARKETFLOW_KAFKA_TOPIC") or DEFAULT_TOPIC,
        postgres_url=postgres_url,
        data_dir=Path(get("MARKETFLOW_DATA_DIR") or "data").expanduser().absolute(),
        coingecko_api_key=key,
        coingecko_api_plan=plan,
        coingecko_api_url=(get("COINGECKO_API_URL") or COINGECKO_PLANS[plan][0]).rstrip("/"),
        local_max_rows=parse_local_max_rows(get("MARKETFLOW_LOCAL_MAX_ROWS")),
    )


def parse_local_max_rows(value: str | None) -> int | None:
    """``MARKETFLOW_LOCAL_MAX_ROWS`` as an int >= 0; None when unset (the resource default)."""
    if value is None or not value.strip():
        return None
    if not value.strip().isdigit():
        raise ConfigError(f"MARKETFLOW_LOCAL_MAX_ROWS={value!r} must be an integer >= 0")
    return int(value)


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
        load_dotenv_once()
        env = dict(os.environ)
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
    url = (env.get("MARKETFLOW_ALERT_WEBHOOK_URL") or "").strip() or None
    return MonitoringSettings(**values, alert_webhook_url=url)


def load_pipeline_settings(env: dict[str, str] | None = None) -> Settings:
    """:class:`Settings` without the CoinGecko part (which is validated only where it is used):
    what the Dagster code location needs, so a bad CoinGecko variable cannot break its load."""
    if env is None:
        load_dotenv_once()
        env = dict(os.environ)
    return load_settings({k: v for k, v in env.items() if not k.startswith("COINGECKO_")})
