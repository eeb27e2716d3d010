"""Baseline of the latency benchmark: a Pathway stream processor on the same broker, topic and
PostgreSQL as Marketflow (a second baseline beside :mod:`benchmarks.quix_baseline`).

Pathway (https://pathway.com) is licensed under the Business Source License (BSL 1.1): it is a
benchmark baseline only, never a runtime dependency of Marketflow; nothing outside
``benchmarks/`` imports it. It runs in a virtualenv of its own, ``.venv-pathway`` (``make bench``
creates it from ``benchmarks/pathway-requirements.lock``; Pathway 0.33 needs pyarrow < 26, where
Marketflow runs on 26): the latency benchmark starts this module with that interpreter
(:func:`pathway_python`) and ``PYTHONPATH`` at the repository.

``python -m benchmarks.pathway_baseline --bootstrap HOST:PORT --topic T --postgres-url URL``
consumes the price topic (JSON values keyed by coin id, as ``marketflow ingest`` publishes them)
with ``pw.io.kafka.read`` (librdkafka underneath, a consumer group of its own, ``earliest``
offsets, a minibatch every ``--commit-ms`` = 20 ms), groups it by coin and keeps, per coin, one
stateful reducer (``pw.reducers.stateful_many``) whose state is the coin's recent observations
(every one within 300 s of the newest, plus the latest older one) and its last ``ema_3min``.
Each minibatch, the reducer of every coin with new observations computes their indicator rows
with the formulas of ``marketflow_assets/indicators.py`` (:func:`advance`: the same windows,
references and arithmetic as :func:`~marketflow_assets.indicators.compute_indicators`, so the
values equal Marketflow's; the EMA step by step instead of in closed form, equal up to rounding);
a ``pw.io.python.write`` observer upserts the rows of each minibatch into
``pathway_price_indicators`` (the columns and key of ``price_indicators``) with one ``COPY`` and
one ``INSERT ... ON CONFLICT DO UPDATE`` (``pw.io.postgres.write`` in snapshot mode would delete
the rows of a coin's previous minibatch when its reducer's value changes).

An observation not newer than its coin's newest one (a duplicate or late record) is skipped, as
Marketflow's live path does (:func:`~marketflow_assets.indicators.advance_indicators`).

``session.timeout.ms`` = 10 s, as for the Quix baseline: Tansu answers the JoinGroup that carries
the member id only after about half the session timeout. ``ready: consuming`` is logged once the
consumer group is stable (confluent-kafka's admin ``describe_consumer_groups``; Pathway has no
hook for the partition assignment); each write logs ``write: N coins, R rows upserted in S s
(newest ts ...)``.
"""

from __future__ import annotations

import argparse
import bisect
import io
import logging
import math
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from marketflow_assets import indicators as ind

logger = logging.getLogger("pathway_baseline")

TABLE = "pathway_price_indicators"
PATHWAY_VERSION = "0.33.0"

_NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAN = float("nan")
_perf_counter = time.perf_counter  # observer methods take a `time` argument

#: (symbol, ts as int ns, price, change_1min, change_5min, sma_5min, ema_3min, volatility_5min)
Row = tuple
#: (times as int ns, increasing; prices; ema_3min at the last time; rows of the last minibatch)
State = tuple


REPO_ROOT = Path(__file__).resolve().parents[1]
#: The interpreter of the Pathway virtualenv (``make bench-pathway``).
PATHWAY_PYTHON = REPO_ROOT / ".venv-pathway" / "bin" / "python"


def pathway_python() -> str | None:
    """The interpreter that can run this baseline (its virtualenv's, where pathway is
    installed), or None when there is none (``make bench-pathway`` creates it)."""
    python = str(PATHWAY_PYTHON)
    if not PATHWAY_PYTHON.is_file():
        return None
    check = subprocess.run(
        [python, "-c", "import pathway"], capture_output=True, timeout=120, check=False
    )
    return python if check.returncode == 0 else None


def import_pathway():
    """``pathway``, or an ImportError that says how to install it (its own virtualenv)."""
    try:
        import pathway
    except ImportError as exc:
        raise ImportError(
            f"the Pathway baseline needs pathway=={PATHWAY_VERSION}: run it with "
            ".venv-pathway/bin/python (`make bench-pathway` creates it; benchmark baseline "
            "only, BSL-licensed)"
        ) from exc
    return pathway


def create_table_sql(table: str = TABLE) -> str:
    from benchmarks.quix_baseline import create_table_sql as ddl

    return ddl(table)


# --------------------------------------------------------------------------------------------
# The indicator formulas of marketflow_assets/indicators.py, one coin, one observation at a time.
# --------------------------------------------------------------------------------------------
def ts_ns(value: str) -> int:
    """ISO-8601 time (``...Z`` or with an offset; naive = UTC) as int ns since the epoch."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return int(ind.to_ns(value))  # pandas: other spellings, nanoseconds
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def ns_iso(value: int) -> str:
    """int ns since the epoch as ISO-8601 UTC with microseconds (PostgreSQL's precision)."""
    moment = _EPOCH + timedelta(microseconds=value // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _change(t: list[int], p: list[float], i: int, seconds: int) -> float:
    """``price_change``: ``100 (p_i / p_ref - 1)``, ``p_ref`` the latest price at or before
    ``t_i - seconds``; NaN when there is none."""
    j = bisect.bisect_right(t, t[i] - seconds * _NS, 0, i + 1) - 1
    if j < 0:
        return _NAN
    ref = p[j]
    if ref == 0.0:  # numpy's division by zero
        ratio = _NAN if p[i] == 0.0 or math.isnan(p[i]) else math.copysign(math.inf, p[i])
    else:
        ratio = p[i] / ref
    return 100.0 * (ratio - 1.0)


def _window(t: list[int], p: list[float], i: int) -> tuple[float, float]:
    """``window_mean_std`` of row ``i``: mean and sample std over ``(t_i - 300 s, t_i]``, summed
    from the newest member back, two-pass; a flat window gives exactly ``(p_i, 0)``."""
    lo = bisect.bisect_right(t, t[i] - ind.WINDOW_SECONDS * _NS, 0, i + 1)
    count = i - lo + 1
    last = p[i]
    total = low = high = last
    for k in range(i - 1, lo - 1, -1):
        value = p[k]
        total += value
        low = min(low, value)
        high = max(high, value)
    mean = total / count
    diff = last - mean
    squares = diff * diff
    for k in range(i - 1, lo - 1, -1):
        diff = p[k] - mean
        squares += diff * diff
    if low == high:  # also a window of one observation (whose std is NaN)
        return last, (0.0 if count >= 2 else _NAN)
    return mean, math.sqrt(squares / (count - 1))


def advance(
    state: State | None, observations: list[tuple[int, float, str | None]]
) -> tuple[State, tuple[Row, ...]]:
    """One coin's next indicator rows, from its state and new observations ``(ts ns, price,
    symbol)`` (any order; a duplicate ts keeps the last one; NaN prices are ignored).

    Returns the new state and the rows of the observations newer than the coin's newest one
    (older ones are skipped, as by ``indicators.advance_indicators``), in ``ts`` order. The values
    are those of ``indicators.compute_indicators`` over all the coin's observations: the state
    holds every observation within 300 s of the newest and the latest one before (the windows
    and the ``p_ref`` of both changes), and the EMA (``tau`` = 180 s, seeded by the coin's first
    observation) continues from its last value.
    """
    if state is None:
        t: list[int] = []
        p: list[float] = []
        ema = _NAN
    else:
        t, p, ema = list(state[0]), list(state[1]), state[2]
    newest = t[-1] if t else None
    fresh: dict[int, tuple[float, str | None]] = {}
    for when, price, symbol in observations:
        if price is None or math.isnan(price) or (newest is not None and when <= newest):
            continue
        fresh[when] = (float(price), symbol)
    rows = []
    tau = ind.TAU_SECONDS
    for when in sorted(fresh):
        price, symbol = fresh[when]
        if not t:
            ema = price
        else:
            alpha = -math.expm1(-((when - t[-1]) / _NS) / tau)
            ema = ema + alpha * (price - ema)
        t.append(when)
        p.append(price)
        i = len(t) - 1
        mean, std = _window(t, p, i)
        rows.append(
            (
                symbol,
                when,
                price,
                _change(t, p, i, ind.CHANGE_1MIN_SECONDS),
                _change(t, p, i, ind.CHANGE_5MIN_SECONDS),
                mean,
                ema,
                std,
            )
        )
    if t:  # keep the observations after newest - 300 s and the latest one at or before it
        keep = bisect.bisect_right(t, t[-1] - ind.LOOKBACK_SECONDS * _NS) - 1
        if keep > 0:
            del t[:keep], p[:keep]
    return (tuple(t), tuple(p), ema, tuple(rows)), tuple(rows)


def combine(state: State | None, updates: list[tuple[list, int]]) -> State:
    """The ``stateful_many`` reducer of one coin: ``updates`` are the minibatch's
    ``([ts, current_price, symbol], count)`` (insertions only: the topic is append-only)."""
    observations = []
    for (ts, price, symbol), count in updates:
        if count <= 0 or ts is None or price is None:
            continue
        try:
            observations.append((ts_ns(ts), float(price), symbol))
        except (ValueError, TypeError, OverflowError):
            continue  # an unparsable ts: Marketflow's raw dataset rejects it too
    new_state, _ = advance(state, observations)
    return new_state


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------
def _text(value: str | None) -> str:
    """A CSV field of PostgreSQL's ``COPY``: quoted text (an empty string stays one), unquoted
    empty for NULL."""
    return "" if value is None else '"' + str(value).replace('"', '""') + '"'


def _float(value: float) -> str:
    """Shortest round-trip form (the value survives exactly); NaN = NULL."""
    return "" if math.isnan(value) else repr(value)


def csv_payload(rows: list[tuple[str, Row]]) -> io.StringIO:
    """``COPY ... (FORMAT csv)`` payload of ``(coin_id, row)`` pairs in the columns of
    ``price_indicators``."""
    buf = io.StringIO()
    for coin, (symbol, when, price, *values) in rows:
        fields = [_text(coin), _text(symbol), ns_iso(when), _float(price)]
        fields += [_float(v) for v in values]
        buf.write(",".join(fields))
        buf.write("\n")
    buf.seek(0)
    return buf


class Upserter:
    """Writes indicator rows to ``table``: ``COPY`` into a temporary table, then
    ``INSERT ... ON CONFLICT DO UPDATE`` (idempotent, like ``price_indicators``)."""

    def __init__(self, url: str, table: str = TABLE):
        import psycopg2

        from marketflow_assets.schema import column_names

        self.table = table
        self.columns = column_names("price_indicators")
        self.conn = psycopg2.connect(url)
        with self.conn, self.conn.cursor() as cur:
            cur.execute(create_table_sql(table))

    def write(self, rows: list[tuple[str, Row]]) -> None:
        """``rows``: ``(coin_id, row)`` pairs, ``row`` as :func:`advance` returns it."""
        cols = ", ".join(self.columns)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in self.columns[2:])
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS _pathway_batch (LIKE {self.table}) "
                "ON COMMIT DELETE ROWS"
            )
            cur.copy_expert(
                f"COPY _pathway_batch ({cols}) FROM STDIN WITH (FORMAT csv)", csv_payload(rows)
            )
            cur.execute(
                f"INSERT INTO {self.table} ({cols}) SELECT {cols} FROM _pathway_batch "
                f"ON CONFLICT (coin_id, ts) DO UPDATE SET {updates}"
            )

    def close(self) -> None:
        self.conn.close()


def make_observer(pw, url: str, table: str = TABLE):
    """A ``pw.io.python.ConnectorObserver`` that upserts each minibatch's new rows."""

    class IndicatorObserver(pw.io.python.ConnectorObserver):
        def __init__(self) -> None:
            self.upserter = Upserter(url, table)  # creates the table before the first poll
            self.pending: list[tuple[str, Row]] = []
            self.coins = 0

        def on_change(self, key, row, time, is_addition) -> None:
            # a coin's reducer value changed: its old value is retracted (rows already written;
            # an upsert keeps them), its new one carries the rows of this minibatch
            if is_addition and row["rows"]:
                coin = row["coin_id"]
                self.pending.extend((coin, r) for r in row["rows"])
                self.coins += 1

        def on_time_end(self, time) -> None:
            if not self.pending:
                return
            started = _perf_counter()
            rows, self.pending = self.pending, []
            coins, self.coins = self.coins, 0
            self.upserter.write(rows)
            logger.info(
                "write: %d coins, %d rows upserted in %.3f s (newest ts %s)",
                coins,
                len(rows),
                _perf_counter() - started,
                ns_iso(max(r[1] for _, r in rows)),
            )

        def on_end(self) -> None:
            self.upserter.close()

    return IndicatorObserver()


def build(pw, args) -> None:
    """The dataflow: Kafka -> per-coin stateful reducer -> PostgreSQL observer."""

    class PriceMessage(pw.Schema):  # the fields of the Kafka message the indicators read
        coin_id: str | None = pw.column_definition(default_value=None)
        symbol: str | None = pw.column_definition(default_value=None)
        current_price: float | None = pw.column_definition(default_value=None)
        ts: str | None = pw.column_definition(default_value=None)

    settings = {
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": str(args.session_timeout_ms),
        "heartbeat.interval.ms": str(min(3000, args.session_timeout_ms // 3)),
    }
    prices = pw.io.kafka.read(
        settings,
        args.topic,
        schema=PriceMessage,
        format="json",
        json_field_paths={"coin_id": "/id"},  # `id` is the row id column in Pathway
        autocommit_duration_ms=args.commit_ms,
        name="prices",
    )
    prices = prices.filter(pw.this.coin_id.is_not_none())
    reducer = pw.reducers.stateful_many(combine)
    coins = prices.groupby(pw.this.coin_id).reduce(
        pw.this.coin_id, state=reducer(pw.this.ts, pw.this.current_price, pw.this.symbol)
    )
    rows = coins.select(pw.this.coin_id, rows=pw.this.state[3])
    pw.io.python.write(rows, make_observer(pw, args.postgres_url, args.table), name=args.table)


def watch_group(bootstrap: str, group: str, started: float, timeout: float = 300.0) -> None:
    """Log ``ready: consuming`` once the consumer group is stable (joined and synced)."""
    try:
        from confluent_kafka import ConsumerGroupState
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": bootstrap})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                found = admin.describe_consumer_groups([group])[group].result(timeout=5)
            except Exception:  # noqa: BLE001 - the group does not exist yet
                found = None
            if found is not None and found.state == ConsumerGroupState.STABLE:
                logger.info(
                    "ready: consuming, group %s stable %.1f s after start",
                    group,
                    time.monotonic() - started,
                )
                return
            time.sleep(0.1)
        logger.warning("consumer group %s not stable after %.0f s", group, timeout)
    except Exception as exc:  # noqa: BLE001 - no admin API: say so, the reader still runs
        logger.warning("cannot watch consumer group %s (%s)", group, exc)
        logger.info("ready: consuming (group state unknown)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pathway_baseline", description=__doc__
    )
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--postgres-url", required=True)
    parser.add_argument("--group", default=f"pathway-baseline-{int(time.time())}")
    parser.add_argument("--table", default=TABLE)
    parser.add_argument(
        "--commit-ms", type=int, default=20, help="Pathway's autocommit_duration_ms (minibatch)"
    )
    parser.add_argument(
        "--session-timeout-ms",
        type=int,
        default=10_000,
        help="consumer group session timeout; Tansu answers a JoinGroup after about half of it",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("pathway_engine").setLevel(logging.WARNING)  # a status line every 5 s
    started = time.monotonic()
    pw = import_pathway()
    build(pw, args)
    logger.info("dataflow built %.1f s after start; running", time.monotonic() - started)
    threading.Thread(
        target=watch_group, args=(args.bootstrap, args.group, started), daemon=True
    ).start()
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    logger.info("stopped after %.0f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
