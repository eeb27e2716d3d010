"""The live path's price alerts (:mod:`marketflow_assets.price_alerts`): the rules file is
re-read when it changes, each crossing is sent once (log line and webhook, as every Marketflow
alert: :func:`marketflow_assets.monitoring.alerts.emit_alert`) and recorded in
``price_alert_events`` for the dashboard."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from marketflow_assets.monitoring.alerts import Alert, emit_alert
from marketflow_assets.price_alerts import FIELDS, PriceAlert, PriceAlerts, load_rules
from marketflow_assets.settings import ConfigError

logger = logging.getLogger("marketflow.live")

INSERT_EVENT = (
    "INSERT INTO price_alert_events (alerted_at, rule, coin_id, ts, value, message) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (rule, coin_id, ts) DO NOTHING"
)


class LiveAlerts:
    """Price alerts of one live consumer: ``prime`` with the newest rows, then ``after_batch``
    with each committed batch's rows."""

    def __init__(self, path: Path | None, webhook_url: str | None):
        self.path = Path(path) if path else None
        self.webhook_url = webhook_url
        self._stamp: tuple[float, int] | None = None
        self.alerts = PriceAlerts([])
        self._reload()

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            stat = self.path.stat() if self.path else None
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size) if stat else None

    def _reload(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            rules = load_rules(self.path)
        except ConfigError as exc:  # an analyst's typo must not stop the live path
            logger.error("live: price alerts unchanged, the rules file has an error: %s", exc)
            return
        kept = {k: v for k, v in self.alerts.holding.items() if k[0] in rules}
        self.alerts = PriceAlerts(rules, kept)
        if rules:
            logger.info("live: %d price alert rule(s) from %s", len(rules), self.path)

    def prime(self, conn) -> None:
        """Start from the newest snapshot in ``price_indicators``: what holds there now was
        alerted before (or held before the rule existed), not a crossing."""
        if not self.alerts.rules:
            return
        with conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT coin_id, ts, {', '.join(FIELDS)} FROM price_indicators "
                "WHERE ts = (SELECT max(ts) FROM price_indicators)"
            )
            rows = pd.DataFrame(cur.fetchall(), columns=["coin_id", "ts", *FIELDS])
        for name in FIELDS:
            rows[name] = pd.to_numeric(rows[name], errors="coerce")
        self.alerts.prime(rows)

    def after_batch(self, conn, rows: pd.DataFrame) -> list[PriceAlert]:
        """Record and send the crossings of a committed batch. Recorded first: that commit is
        synchronous and flushes the batch's rows too (they were committed without waiting for
        the flush: ``LiveStore.write_indicators``), so an alert goes out only for rows a
        PostgreSQL crash cannot take back - best effort: an alert that cannot be recorded is
        still sent."""
        self._reload()
        fired = self.alerts.update(rows) if len(rows) else []
        if fired:
            now = datetime.now(UTC)
            try:
                with conn, conn.cursor() as cur:
                    cur.executemany(
                        INSERT_EVENT,
                        [
                            (now, str(e.rule), e.coin_id, pd.Timestamp(e.ts).to_pydatetime(),
                             e.value, e.message)
                            for e in fired
                        ],
                    )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - the alert goes out; the record is extra
                logger.warning("live: price alerts not recorded (sent all the same): %s", exc)
        for event in fired:
            emit_alert(
                Alert(f"price:{event.rule}:{event.coin_id}", "armed", "CROSSED", event.message),
                self.webhook_url,
            )
        return fired
