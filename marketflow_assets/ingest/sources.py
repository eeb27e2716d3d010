"""Where polls come from: live CoinGecko, a replay file, or a seeded market simulator.

Every source yields :class:`Poll` objects — a snapshot time ``ts`` plus the raw CoinGecko-style
market records of that snapshot (validation happens later, the same way for every source).

* :class:`LiveSource` polls CoinGecko on a fixed cadence (poll k starts at ``start + k·interval``;
  a poll that overruns skips the ticks it missed instead of drifting) and can append every poll
  to a replay file (``--record``).
* :class:`ReplaySource` reads a replay file (README "Ingest": JSON Lines ``{"ts", "coins"}``) and
  publishes each line with its recorded ``ts``; ``speed`` multiplies real time (2 = twice as
  fast), 0 = as fast as possible.
* :class:`SimulateSource` / :func:`simulate_polls`: geometric Brownian motion with a common
  market factor and Poisson jumps (stablecoins mean-revert around 1 USD), seeded and
  reproducible, for realistic ids/symbols/prices of the top coins and synthetic coins beyond.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from marketflow_assets.ingest.coingecko import CoinGeckoClient, CoinGeckoError, coingecko_reachable
from marketflow_assets.ingest.validate import format_ts, parse_time
from marketflow_assets.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Poll:
    """One snapshot: ``records`` is None when the poll failed (``error`` says why); a live poll
    whose later page failed has the records of the pages that came and an ``error`` too."""

    ts: str
    records: list[Any] | None
    error: str | None = None
    label: str = ""  # where it came from, for log lines (e.g. "replay line 3")
    line: int | None = None  # line number in a replay file


def utc_now() -> datetime:
    return datetime.now(UTC)


def ticker(
    interval_s: float,
    stop: threading.Event,
    *,
    max_polls: int | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> Iterator[int]:
    """Yield tick numbers on a fixed cadence: tick k is due at ``start + k * interval_s``.

    Work done by the consumer between two ticks counts against the interval. When a tick's work
    overruns, the ticks that passed are skipped (logged) so the cadence never drifts.
    """
    start = monotonic()
    k = 0
    done = 0
    while not stop.is_set():
        yield k
        done += 1
        if max_polls is not None and done >= max_polls:
            return
        k += 1
        now = monotonic()
        due = start + k * interval_s
        if now > due:
            next_k = math.floor((now - start) / interval_s) + 1
            log.warning(
                "poll took longer than the %g s interval; skipping %d tick(s)",
                interval_s,
                next_k - k,
            )
            k = next_k
            due = start + k * interval_s
        if stop.wait(max(0.0, due - now)):
            return


# --------------------------------------------------------------------------------------------
# Replay file (README "Ingest"): JSON Lines, one poll per line:
# {"ts": ISO-8601 UTC, "coins": [records]}
# --------------------------------------------------------------------------------------------
class ReplayRecorder:
    """Appends polls to a replay file, one JSON line per poll, flushed after each line.

    Safe to reopen after a crash: a torn last line (the process was killed while writing it) is
    cut off, and :attr:`last_ts` is the ``ts`` of the last complete line, so a restarted writer
    can skip a poll it had already recorded.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.last_ts: str | None = self._repair_tail()
        self._fh = self.path.open("a", encoding="utf-8")

    def _repair_tail(self) -> str | None:
        """Cut a torn last line; return the ``ts`` of the last complete line (None if none)."""
        if not self.path.exists():
            return None
        with self.path.open("r+b") as fh:
            size = fh.seek(0, 2)
            cut = last_newline(fh, size) + 1  # end of the last complete line (0: none)
            if cut < size:
                log.warning(
                    "record file %s: cutting a torn last line (%d bytes)", self.path, size - cut
                )
                fh.truncate(cut)
            if cut == 0:
                return None
            start = last_newline(fh, cut - 1) + 1
            fh.seek(start)
            text = fh.read(cut - start)
        try:
            ts = json.loads(text).get("ts")
        except (ValueError, AttributeError):
            return None
        return ts if isinstance(ts, str) else None

    def append(self, ts: str, coins: list[Any]) -> None:
        self._fh.write(json.dumps({"ts": ts, "coins": coins}, separators=(",", ":")) + "\n")
        self._fh.flush()
        self.last_ts = ts

    def close(self) -> None:
        self._fh.close()


def last_newline(fh, end: int, chunk: int = 1 << 16) -> int:
    """Position of the last ``\\n`` before byte ``end`` of binary file ``fh``, else -1."""
    pos = end
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        fh.seek(pos)
        found = fh.read(step).rfind(b"\n")
        if found >= 0:
            return pos + found
    return -1


def read_replay(path: str | Path) -> Iterator[Poll]:
    """Polls of a replay file in file order; a bad line becomes a failed :class:`Poll`."""
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            label = f"replay line {lineno}"
            try:
                obj = json.loads(line)
            except ValueError as exc:
                yield Poll("", None, f"{label}: invalid JSON ({exc})", label, lineno)
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("coins"), list):
                yield Poll(
                    "", None, f"{label}: expected an object with a 'coins' list", label, lineno
                )
                continue
            ts = obj.get("ts")
            try:
                parse_time(ts)
            except ValueError as exc:
                yield Poll("", None, f"{label}: ts {exc}", label, lineno)
                continue
            yield Poll(ts=ts, records=obj["coins"], label=label, line=lineno)


class ReplaySource:
    """Publishes a replay file with its recorded ``ts``, paced by ``speed`` (0 = no waiting).

    ``start_after`` skips the file's first lines (a restarted replay resumes after the last line
    it had handled).
    """

    name = "replay"

    def __init__(self, path: str | Path, *, speed: float = 1.0, start_after: int = 0):
        self.path = Path(path)
        self.speed = speed
        self.start_after = start_after

    def polls(self, stop: threading.Event, max_polls: int | None = None) -> Iterator[Poll]:
        previous: datetime | None = None
        started = time.monotonic()
        first: datetime | None = None
        count = 0
        for poll in read_replay(self.path):
            if stop.is_set():
                return
            if poll.line is not None and poll.line <= self.start_after:
                continue
            if poll.records is not None and self.speed > 0:
                moment = parse_time(poll.ts)
                if first is None:
                    first, started = moment, time.monotonic()
                elif previous is not None and moment > previous:
                    # due relative to the first line, so pacing errors do not accumulate
                    due = started + (moment - first).total_seconds() / self.speed
                    if stop.wait(max(0.0, due - time.monotonic())):
                        return
                previous = moment
            yield poll
            count += 1
            if max_polls is not None and count >= max_polls:
                return


# --------------------------------------------------------------------------------------------
# Live CoinGecko
# --------------------------------------------------------------------------------------------
class LiveSource:
    """Polls CoinGecko every ``interval_s`` on a fixed cadence; failed polls are reported."""

    name = "coingecko"

    def __init__(
        self,
        client: CoinGeckoClient,
        *,
        n_coins: int,
        interval_s: float,
        once: bool = False,
        recorder: ReplayRecorder | None = None,
        once_budget_s: float = 120.0,
        clock: Callable[[], datetime] = utc_now,
    ):
        self.client = client
        self.n_coins = n_coins
        self.interval_s = interval_s
        self.once = once
        self.recorder = recorder
        self.once_budget_s = once_budget_s
        self.clock = clock

    def polls(self, stop: threading.Event, max_polls: int | None = None) -> Iterator[Poll]:
        limit = 1 if self.once else max_polls
        for _ in ticker(self.interval_s, stop, max_polls=limit):
            started = time.monotonic()
            ts = format_ts(self.clock())
            # retries must end before the next tick is due (or within a budget for --once)
            budget = self.once_budget_s if self.once else max(1.0, self.interval_s - 1.0)
            try:
                records, error = self.client.fetch_markets_partial(
                    self.n_coins, deadline=started + budget
                )
            except CoinGeckoError as exc:
                records, error = [], exc
            if error is not None and not records:
                yield Poll(ts=ts, records=None, error=str(error), label="coingecko")
                continue
            if self.recorder is not None:
                self.recorder.append(ts, records)
            # A later page failed: the pages that came are published (error says what is missing)
            yield Poll(
                ts=ts,
                records=records,
                error=None if error is None else f"incomplete poll: {error}",
                label="coingecko",
            )


# --------------------------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------------------------
# (id, symbol, name, price USD, circulating supply, max supply or None, annual volatility;
#  volatility 0 = USD stablecoin). Prices and supplies are of the order seen in 2025.
COINS: tuple[tuple[str, str, str, float, float, float | None, float], ...] = (
    ("bitcoin", "btc", "Bitcoin", 95_000.0, 19.9e6, 21e6, 0.55),
    ("ethereum", "eth", "Ethereum", 3_300.0, 120.7e6, None, 0.70),
    ("tether", "usdt", "Tether", 1.0, 185e9, None, 0.0),
    ("ripple", "xrp", "XRP", 2.2, 60e9, 100e9, 0.90),
    ("binancecoin", "bnb", "BNB", 900.0, 139e6, 200e6, 0.60),
    ("solana", "sol", "Solana", 150.0, 560e6, None, 0.90),
    ("usd-coin", "usdc", "USDC", 1.0, 75e9, None, 0.0),
    ("tron", "trx", "TRON", 0.28, 94.7e9, None, 0.60),
    ("dogecoin", "doge", "Dogecoin", 0.16, 151e9, None, 1.00),
    ("cardano", "ada", "Cardano", 0.50, 36e9, 45e9, 0.95),
    ("chainlink", "link", "Chainlink", 14.0, 680e6, 1e9, 1.00),
    ("stellar", "xlm", "Stellar", 0.25, 32e9, 50e9, 0.90),
    ("bitcoin-cash", "bch", "Bitcoin Cash", 500.0, 19.9e6, 21e6, 0.85),
    ("hyperliquid", "hype", "Hyperliquid", 35.0, 337e6, 1e9, 1.10),
    ("avalanche-2", "avax", "Avalanche", 15.0, 427e6, 720e6, 1.00),
    ("litecoin", "ltc", "Litecoin", 90.0, 76.5e6, 84e6, 0.85),
    ("sui", "sui", "Sui", 1.7, 3.6e9, 10e9, 1.20),
    ("hedera-hashgraph", "hbar", "Hedera", 0.15, 42e9, 50e9, 1.00),
    ("shiba-inu", "shib", "Shiba Inu", 9.0e-6, 589e12, None, 1.00),
    ("the-open-network", "ton", "Toncoin", 1.6, 2.5e9, None, 0.90),
    ("polkadot", "dot", "Polkadot", 2.5, 1.6e9, None, 0.95),
    ("monero", "xmr", "Monero", 380.0, 18.4e6, None, 0.70),
    ("uniswap", "uni", "Uniswap", 6.5, 630e6, 1e9, 1.10),
    ("dai", "dai", "Dai", 1.0, 5.3e9, None, 0.0),
    ("near", "near", "NEAR Protocol", 2.0, 1.28e9, None, 1.10),
    ("aave", "aave", "Aave", 190.0, 15.2e6, 16e6, 1.00),
    ("pepe", "pepe", "Pepe", 4.5e-6, 420.69e12, 420.69e12, 1.40),
    ("internet-computer", "icp", "Internet Computer", 4.0, 540e6, None, 1.10),
    ("ethereum-classic", "etc", "Ethereum Classic", 14.0, 154e6, 210.7e6, 0.90),
    ("aptos", "apt", "Aptos", 2.5, 740e6, None, 1.10),
    ("bittensor", "tao", "Bittensor", 280.0, 9.6e6, 21e6, 1.20),
    ("cosmos", "atom", "Cosmos Hub", 2.6, 480e6, None, 1.00),
    ("filecoin", "fil", "Filecoin", 1.6, 700e6, 1.96e9, 1.10),
    ("arbitrum", "arb", "Arbitrum", 0.22, 5.4e9, 10e9, 1.10),
    ("render-token", "render", "Render", 1.8, 518e6, 533e6, 1.20),
    ("algorand", "algo", "Algorand", 0.14, 8.8e9, 10e9, 1.00),
    ("vechain", "vet", "VeChain", 0.013, 86e9, 86.7e9, 1.00),
    ("optimism", "op", "Optimism", 0.32, 1.9e9, 4.29e9, 1.10),
    ("injective-protocol", "inj", "Injective", 5.5, 100e6, 100e6, 1.20),
    ("the-graph", "grt", "The Graph", 0.05, 10.6e9, 10.8e9, 1.10),
)

SECONDS_PER_YEAR = 365.25 * 86_400
MARKET_CORRELATION = 0.6  # share of variance from the common crypto market factor
JUMPS_PER_DAY = 2.0  # Poisson intensity of price jumps, per coin
JUMP_STDEV = 0.02  # log-size of a jump (2 %)
STABLE_STDEV = 0.0004  # stationary stdev of a stablecoin around 1 USD
STABLE_REVERSION_S = 600.0  # mean-reversion time of a stablecoin


def _universe(n_coins: int, rng: np.random.Generator) -> list[tuple]:
    coins = list(COINS[:n_coins])
    for i in range(len(coins), n_coins):
        number = i + 1
        price = float(10 ** rng.uniform(-4, 2))
        supply = float(10 ** rng.uniform(7, 10))
        coins.append(
            (f"simcoin-{number}", f"sim{number}", f"SimCoin {number}", price, supply, None, 1.2)
        )
    return coins


class MarketSimulator:
    """Seeded market: each :meth:`step` advances every coin by ``interval_s`` and returns
    CoinGecko ``/coins/markets``-shaped records ordered by market cap.

    Log-price increments: (μ − σ²/2)·dt + σ·√dt·(√ρ·M + √(1−ρ)·ε) + J, with a common market
    shock M, idiosyncratic ε, and J ~ N(0, 2 %) arriving as a Poisson process (2/day/coin).
    Stablecoins follow an Ornstein–Uhlenbeck process around 1 USD. The same (n_coins, seed,
    interval_s) always produces the same prices; ``ts`` only stamps them.
    """

    def __init__(self, n_coins: int, seed: int, interval_s: float = 30.0):
        if n_coins < 1:
            raise ValueError("n_coins must be at least 1")
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.rng = np.random.default_rng(seed)
        self.interval_s = float(interval_s)
        coins = _universe(n_coins, self.rng)
        self.ids = [c[0] for c in coins]
        self.symbols = [c[1] for c in coins]
        self.names = [c[2] for c in coins]
        self.supply = np.array([c[4] for c in coins])
        self.max_supply = [c[5] for c in coins]
        sigma = np.array([c[6] for c in coins])
        self.stable = sigma == 0.0
        self.sigma = sigma
        base = np.array([c[3] for c in coins])
        # start each coin somewhere around its reference price, with a plausible 24 h history
        self.price = base * np.exp(np.where(self.stable, 0.0, self.rng.normal(0, 0.05, len(base))))
        day_move = np.where(self.stable, 0.0, self.rng.normal(0, 0.03, len(base)))
        # hourly samples of the last 24 h (oldest first), for high/low/change over 24 h
        ramp = np.linspace(1.0, 0.0, 25)[:, None]
        self.hourly = self.price[None, :] * np.exp(-day_move[None, :] * ramp)
        self.hour_high = self.price.copy()
        self.hour_low = self.price.copy()
        self.turnover = self.rng.uniform(0.02, 0.15, len(base))  # daily volume / market cap
        self.steps_per_hour = max(1, round(3600.0 / self.interval_s))
        self.steps = 0

    def _advance(self) -> None:
        n = len(self.price)
        dt = self.interval_s / SECONDS_PER_YEAR
        market = self.rng.normal()
        eps = self.rng.normal(size=n)
        shock = math.sqrt(MARKET_CORRELATION) * market + math.sqrt(1 - MARKET_CORRELATION) * eps
        jumps = self.rng.random(n) < JUMPS_PER_DAY * self.interval_s / 86_400
        jump_size = self.rng.normal(0, JUMP_STDEV, n) * jumps
        log_ret = -0.5 * self.sigma**2 * dt + self.sigma * math.sqrt(dt) * shock + jump_size
        risky = self.price * np.exp(log_ret)
        # stablecoins: exact OU discretisation around 1 USD
        keep = math.exp(-self.interval_s / STABLE_REVERSION_S)
        noise = STABLE_STDEV * math.sqrt(1 - keep**2) * self.rng.normal(size=n)
        stable = 1.0 + (self.price - 1.0) * keep + noise
        self.price = np.where(self.stable, stable, risky)
        self.hour_high = np.maximum(self.hour_high, self.price)
        self.hour_low = np.minimum(self.hour_low, self.price)
        self.steps += 1
        if self.steps % self.steps_per_hour == 0:
            self.hourly = np.vstack([self.hourly[1:], self.price[None, :]])
            self.hour_high = self.price.copy()
            self.hour_low = self.price.copy()

    def step(self, ts: datetime) -> list[dict[str, Any]]:
        """Advance one interval and return the records of the snapshot taken at ``ts``."""
        self._advance()
        price = self.price
        cap = price * self.supply
        open_24h = self.hourly[0]
        high = np.maximum(self.hourly.max(axis=0), self.hour_high)
        low = np.minimum(self.hourly.min(axis=0), self.hour_low)
        change = price - open_24h
        volume = cap * self.turnover * np.exp(self.rng.normal(0, 0.05, len(price)))
        lag_ms = self.rng.integers(0, int(min(self.interval_s, 60.0) * 1000) + 1, len(price))
        order = np.argsort(-cap, kind="stable")
        # whole columns at once (Python numbers, in rank order): a 15,000-coin snapshot in a
        # fraction of the time a conversion per value takes, with the same values
        prices = price[order].tolist()
        caps = np.rint(cap[order]).astype(np.int64).tolist()  # round(): half to even too
        volumes = np.rint(volume[order]).astype(np.int64).tolist()
        highs, lows = high[order].tolist(), low[order].tolist()
        changes = change[order].tolist()
        percents = (100.0 * change[order] / open_24h[order]).tolist()
        supplies = self.supply[order].tolist()
        moment = np.datetime64(ts.astimezone(UTC).replace(tzinfo=None), "us")
        updated = np.datetime_as_string(
            moment - lag_ms[order].astype("timedelta64[ms]"), unit="ms", timezone="UTC"
        ).tolist()  # format_ts' text: milliseconds (truncated) and "Z"
        records = []
        for k, i in enumerate(order.tolist()):
            p = prices[k]
            max_supply = self.max_supply[i]
            records.append(
                {
                    "id": self.ids[i],
                    "symbol": self.symbols[i],
                    "name": self.names[i],
                    "current_price": p,
                    "market_cap": caps[k],
                    "market_cap_rank": k + 1,
                    "fully_diluted_valuation": (
                        round(p * max_supply) if max_supply is not None else None
                    ),
                    "total_volume": volumes[k],
                    "high_24h": highs[k],
                    "low_24h": lows[k],
                    "price_change_24h": changes[k],
                    "price_change_percentage_24h": percents[k],
                    "circulating_supply": supplies[k],
                    "total_supply": float(max_supply or supplies[k]),
                    "max_supply": max_supply,
                    "roi": None,
                    "last_updated": updated[k],
                }
            )
        return records


def simulate_polls(
    n_coins: int,
    seed: int,
    start: datetime,
    interval_s: float,
    count: int,
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """``count`` simulated polls ``(ts, records)`` at ``start + k * interval_s`` (no sleeping).

    Fast and reproducible: the same arguments always give the same output. For benchmarks,
    tests and building replay files.
    """
    sim = MarketSimulator(n_coins, seed, interval_s)
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    for k in range(count):
        moment = start + timedelta(seconds=k * interval_s)
        yield format_ts(moment), sim.step(moment)


class SimulateSource:
    """Simulated polls on the live cadence (``ts`` = wall-clock poll time)."""

    name = "simulate"

    def __init__(
        self,
        *,
        n_coins: int,
        seed: int,
        interval_s: float,
        once: bool = False,
        recorder: ReplayRecorder | None = None,
        clock: Callable[[], datetime] = utc_now,
    ):
        self.sim = MarketSimulator(n_coins, seed, interval_s)
        self.interval_s = interval_s
        self.once = once
        self.recorder = recorder
        self.clock = clock

    def polls(self, stop: threading.Event, max_polls: int | None = None) -> Iterator[Poll]:
        limit = 1 if self.once else max_polls
        for _ in ticker(self.interval_s, stop, max_polls=limit):
            now = self.clock()
            records = self.sim.step(now)
            ts = format_ts(now)
            if self.recorder is not None:
                self.recorder.append(ts, records)
            yield Poll(ts=ts, records=records, label="simulate")


def resolve_source(source: str, settings: Settings, log: logging.Logger) -> str:
    """``auto`` -> ``coingecko`` when the CoinGecko API answers, else ``simulate``; says which.

    Any other source is returned as is. ``up`` and ``ingest`` both resolve through here
    (``cli_defaults`` holds only option definitions and imports no component).
    """
    if source != "auto":
        return source
    if coingecko_reachable(settings):
        log.info("source: live CoinGecko at %s", settings.coingecko_api_url)
        return "coingecko"
    log.info(
        "source: simulator (CoinGecko at %s is not reachable from here)",
        settings.coingecko_api_url,
    )
    return "simulate"
