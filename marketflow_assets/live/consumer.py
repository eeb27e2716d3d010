"""The live consumer loop: poll the topic, compute, write, repeat (see the package docstring).

Partitions are assigned manually (``KafkaConsumer.assign``: no consumer group, no group join -
a Tansu group join takes ~20 s) and positioned at the offsets stored in ``live_offsets`` (the
beginning of a partition never seen). Every batch - the records one poll returns plus what is
already fetched, at most ``max_batch_records`` - becomes one transaction. The in-memory state
only moves on after that transaction committed; any error ends the process (exit 1), and the
supervisor's restart resumes from what was committed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field

import pandas as pd

from marketflow_assets import indicators as ind
from marketflow_assets.live.store import LiveStore

logger = logging.getLogger("marketflow.live")

#: How often the consumer looks for partitions added to the topic.
PARTITION_REFRESH_SECONDS = 30.0


@dataclass
class BatchStats:
    records: int = 0
    rows: int = 0
    skipped: int = 0
    invalid: int = 0
    movers: int = 0
    seconds: float = 0.0


@dataclass
class LiveConsumer:
    bootstrap: str
    topic: str
    postgres_url: str
    poll_timeout_s: float = 0.1
    max_batch_records: int = 100_000
    client_id: str = "marketflow-live"
    stats: list[BatchStats] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.store = LiveStore(self.postgres_url)
        started = time.perf_counter()
        self.state = self.store.load_state()
        logger.info(
            "live: state of %d coins rebuilt from price_indicators in %.2f s",
            len(self.state.last),
            time.perf_counter() - started,
        )
        self.consumer = self._consumer()
        self.assigned: set[int] = set()
        self._ts_cache: dict[str, pd.Timestamp] = {}

    def _consumer(self):
        from kafka import KafkaConsumer

        wait_ms = max(10, int(self.poll_timeout_s * 1000))
        return KafkaConsumer(
            bootstrap_servers=self.bootstrap.split(","),
            client_id=self.client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_batch_records,
            fetch_max_wait_ms=wait_ms,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )

    def assign(self) -> bool:
        """Assign every partition of the topic (new ones too) at its stored offset."""
        from kafka import TopicPartition

        partitions = self.consumer.partitions_for_topic(self.topic) or set()
        if not partitions or partitions <= self.assigned:
            return bool(partitions)
        stored = self.store.load_offsets(self.topic)
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        for tp in tps:
            if tp.partition in stored:
                self.consumer.seek(tp, stored[tp.partition])
            elif tp.partition not in self.assigned:
                self.consumer.seek_to_beginning(tp)
        new = sorted(partitions - self.assigned)
        self.assigned = set(partitions)
        logger.info(
            "live: reading %s partitions %s from offsets %s",
            self.topic,
            new,
            {p: stored.get(p, "beginning") for p in new},
        )
        return True

    # ------------------------------------------------------------------------------------
    def poll_batch(self) -> list:
        records: list = []
        polled = self.consumer.poll(
            timeout_ms=int(self.poll_timeout_s * 1000), max_records=self.max_batch_records
        )
        while polled:
            for batch in polled.values():
                records.extend(batch)
            room = self.max_batch_records - len(records)
            if room <= 0:
                break
            polled = self.consumer.poll(timeout_ms=0, max_records=room)
        return records

    def _parse(self, records: list) -> tuple[pd.DataFrame, int]:
        ids, symbols, stamps, prices = [], [], [], []
        invalid = 0
        cache = self._ts_cache
        for record in records:
            try:
                value = json.loads(record.value)
                ts_text = value["ts"]
                ts = cache.get(ts_text)
                if ts is None:
                    ts = pd.Timestamp(ts_text)
                    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
                    if len(cache) > 10_000:
                        cache.clear()
                    cache[ts_text] = ts
                price = float(value["current_price"])
                coin = str(value["id"])
            except (ValueError, KeyError, TypeError):
                invalid += 1
                continue
            if not price > 0:
                invalid += 1
                continue
            ids.append(coin)
            symbols.append(value.get("symbol"))
            stamps.append(ts)
            prices.append(price)
        frame = pd.DataFrame(
            {
                "id": pd.Series(ids, dtype=object),
                "symbol": pd.Series(symbols, dtype=object),
                "ts": pd.to_datetime(pd.Series(stamps, dtype=object), utc=True),
                "current_price": pd.Series(prices, dtype="float64"),
            }
        )
        return frame, invalid

    def process(self, records: list) -> BatchStats:
        """Compute and write one batch (one transaction); then move the state on."""
        started = time.perf_counter()
        next_offsets: dict[int, int] = {}
        for record in records:
            nxt = record.offset + 1
            if nxt > next_offsets.get(record.partition, -1):
                next_offsets[record.partition] = nxt
        frame, invalid = self._parse(records)
        rows, state, skipped = ind.advance_indicators(self.state, frame)
        if len(skipped):
            logger.debug(
                "live: %d record(s) not newer than their coin's last row (late or duplicate; "
                "the Dagster recompute owns them), e.g. %s",
                len(skipped),
                skipped.head(5)[["id", "ts"]].to_dict("records"),
            )
        inserted, movers = self.store.write_batch(self.topic, rows, next_offsets)
        self.state = state  # committed: the state moves on
        stats = BatchStats(
            len(records), inserted, len(skipped), invalid, movers, time.perf_counter() - started
        )
        self.stats.append(stats)
        del self.stats[:-1000]  # the last batches only (tests and benchmarks read them)
        logger.info(
            "live: %d record(s) -> %d row(s), %d mover row(s), %d skipped, %d invalid, %.3f s",
            stats.records,
            stats.rows,
            stats.movers,
            stats.skipped,
            stats.invalid,
            stats.seconds,
        )
        return stats

    def run(self, stop: threading.Event) -> None:
        last_check = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if not self.assigned or now - last_check > PARTITION_REFRESH_SECONDS:
                last_check = now
                if not self.assign():
                    logger.info("live: topic %s has no partitions yet; waiting", self.topic)
                    stop.wait(1.0)
                    continue
            records = self.poll_batch()
            if records:
                self.process(records)

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.store.close()
