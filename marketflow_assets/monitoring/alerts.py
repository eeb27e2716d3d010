"""Sending alerts: the one path every Marketflow alert leaves by (:func:`emit_alert`).

An alert is a log line (WARNING for failures, INFO for recoveries) and, when
``MARKETFLOW_ALERT_WEBHOOK_URL`` is set, an HTTP POST of ``{"text": ...}`` (the Slack incoming
webhook format, also accepted by Mattermost, Teams' Slack-compatible hooks, etc.), retried up to
3 times with backoff on connection errors, 429 and 5xx. The webhook URL is a secret: only its host
is ever logged.

Plain code: used by the Dagster alert sensor (:mod:`marketflow_assets.defs.monitoring.alerts`),
the ingest process (:mod:`marketflow_assets.monitoring.ingest_health`), the code-location watch
(:mod:`marketflow_assets.monitoring.location_health`) and ``marketflow up``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)

WEBHOOK_ATTEMPTS = 3
WEBHOOK_BACKOFF_SECONDS = 0.5
WEBHOOK_TIMEOUT_SECONDS = 5.0

PASSED = "passed"
RUN_OK = "SUCCESS"


@dataclass(frozen=True)
class Alert:
    key: str  # "raw_prices:freshness_check" or "job:<name>"
    previous: str
    state: str
    text: str

    @property
    def is_failure(self) -> bool:
        return self.state not in (PASSED, RUN_OK)


# ------------------------------------------------------------------------------------------
# Webhook
# ------------------------------------------------------------------------------------------
def webhook_host(url: str) -> str:
    """The part of a webhook URL that is safe to log."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def post_webhook(
    url: str,
    text: str,
    attempts: int = WEBHOOK_ATTEMPTS,
    backoff: float = WEBHOOK_BACKOFF_SECONDS,
    timeout: float = WEBHOOK_TIMEOUT_SECONDS,
) -> bool:
    """POST ``{"text": text}``; retry on connection errors, 429 and 5xx. True on a 2xx."""
    for attempt in range(1, attempts + 1):
        try:
            response = requests.post(url, json={"text": text}, timeout=timeout)
            if response.status_code < 300:
                return True
            retriable = response.status_code == 429 or response.status_code >= 500
            reason = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            retriable, reason = True, type(exc).__name__
        log.warning(
            "alert webhook %s attempt %d/%d failed: %s",
            webhook_host(url),
            attempt,
            attempts,
            reason,
        )
        if not retriable or attempt == attempts:
            break
        time.sleep(backoff * 2 ** (attempt - 1))
    log.error("alert webhook %s gave up; the alert is only in this log", webhook_host(url))
    return False


def emit_alert(alert: Alert, webhook_url: str | None) -> bool:
    """The one place an alert leaves Marketflow: a log line (WARNING for failures, INFO for
    recoveries), then the webhook when configured. True when delivered (or nothing to post)."""
    (log.warning if alert.is_failure else log.info)("ALERT %s", alert.text)
    if webhook_url:
        return post_webhook(webhook_url, alert.text)
    return True
