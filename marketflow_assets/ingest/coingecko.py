"""CoinGecko ``/coins/markets`` client (``requests``), with retries, backoff and quota checks.

* Plans: ``public`` (no key), ``demo`` and ``pro``; the base URL and the header carrying the key
  come from :class:`~marketflow_assets.settings.Settings` (``COINGECKO_API_PLAN``,
  ``COINGECKO_API_URL``). The key travels only in that header and is scrubbed from every message
  this module logs or raises.
* Pagination: pages of up to 250 coins ordered by market cap (``order=market_cap_desc``) until
  ``n_coins`` are fetched (15,000 coins = 60 pages); the page size is spread evenly (300 coins =
  2 pages of 150) because CoinGecko's ``page`` is relative to ``per_page``. Page requests are
  spaced to stay within the plan's calls/minute (Pro: 0.12 s, so 60 pages take ~7 s; Demo: 2 s,
  so 60 pages take 2 minutes and cannot fit a 30 s cadence — :func:`rate_limit_line` says so).
* Resilience: connect/read timeouts; HTTP 429 waits ``Retry-After`` (seconds or an HTTP date)
  when given, else exponential backoff with jitter; 5xx, connection errors, timeouts and
  malformed bodies are retried within a bounded number of attempts and an optional deadline.
  Other 4xx fail at once (they will not get better by retrying).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from marketflow_assets.settings import ConfigError, Settings

log = logging.getLogger(__name__)

MAX_PER_PAGE = 250
MARKETS_PATH = "/coins/markets"
PING_PATH = "/ping"
DAYS_PER_MONTH = 30


class CoinGeckoError(RuntimeError):
    """A request that could not be completed (after retries); the message is safe to log."""


@dataclass(frozen=True)
class PlanQuota:
    """Published limits of a CoinGecko plan (checked 2025; see the README)."""

    label: str
    calls_per_minute: int
    calls_per_month: int | None  # None: no monthly cap (the public API is rate-limited only)
    cache_seconds: int  # how long /coins/markets answers are cached server-side


PLAN_QUOTAS: dict[str, PlanQuota] = {
    # The keyless public API allows "5 to 15 calls per minute" depending on global load.
    "public": PlanQuota("Public (no key)", 5, None, 60),
    "demo": PlanQuota("Demo (free key)", 30, 10_000, 60),
    # Smallest paid plan; bigger Pro plans raise both limits.
    "pro": PlanQuota("Analyst (smallest paid plan)", 500, 500_000, 45),
}


def pages_for(n_coins: int) -> tuple[int, int]:
    """``(pages, per_page)`` to fetch the top ``n_coins`` with as few, evenly sized pages."""
    if n_coins < 1:
        raise ValueError("n_coins must be at least 1")
    pages = math.ceil(n_coins / MAX_PER_PAGE)
    return pages, math.ceil(n_coins / pages)


def page_spacing(plan: str) -> float:
    """Seconds between two page requests that keep a poll within ``plan``'s calls/minute."""
    return 60.0 / PLAN_QUOTAS[plan].calls_per_minute


def rate_limit_line(plan: str, interval_s: float, pages: int) -> str | None:
    """One line saying that ``plan`` cannot page ``pages`` every ``interval_s`` (None if it can).

    The client spaces page requests by :func:`page_spacing` (it never exceeds the plan's
    calls/minute), so a poll of ``pages`` pages takes ``(pages - 1) * spacing`` seconds; when that
    does not fit the interval, polls overrun and the fixed cadence skips the ticks they miss.
    """
    quota = PLAN_QUOTAS[plan]
    per_minute = pages * 60.0 / interval_s
    if per_minute <= quota.calls_per_minute:
        return None
    poll_s = pages * page_spacing(plan)
    max_coins = int(quota.calls_per_minute * interval_s / 60.0) * MAX_PER_PAGE
    fits = f"--coins {max_coins:,} or fewer, " if max_coins else ""
    return (
        f"CoinGecko {quota.label} plan cannot page {pages} page(s) of coins every "
        f"{interval_s:g} s: that needs {per_minute:.1f} calls/min and the plan allows "
        f"~{quota.calls_per_minute}, so pages are spaced {page_spacing(plan):.2f} s apart and a "
        f"poll takes ~{poll_s:.0f} s (polls every ~{max(poll_s, interval_s):.0f} s); use "
        f"COINGECKO_API_PLAN=pro, {fits}or --interval {poll_s:.0f} or more"
    )


def quota_warnings(plan: str, interval_s: float, pages: int) -> list[str]:
    """Human-readable warnings when polling ``pages`` every ``interval_s`` exceeds ``plan``."""
    quota = PLAN_QUOTAS[plan]
    per_month = pages * DAYS_PER_MONTH * 86_400 / interval_s
    warnings = []
    line = rate_limit_line(plan, interval_s, pages)
    if line:
        warnings.append(line)
    if quota.calls_per_month is not None and per_month > quota.calls_per_month:
        lasts_days = quota.calls_per_month / (per_month / DAYS_PER_MONTH)
        warnings.append(
            f"CoinGecko {quota.label} plan allows {quota.calls_per_month:,} calls/month but "
            f"{pages} page(s) every {interval_s:g} s make {per_month:,.0f} calls/month: the quota "
            f"runs out after ~{lasts_days:.1f} days; a 30 s cadence needs a paid plan "
            "(COINGECKO_API_PLAN=pro, Analyst or above) or a longer --interval"
        )
    return warnings


def cache_note(plan: str, interval_s: float) -> str | None:
    """A note when polls are more frequent than CoinGecko refreshes its cached answer."""
    quota = PLAN_QUOTAS[plan]
    if interval_s < quota.cache_seconds:
        return (
            f"CoinGecko caches /coins/markets for ~{quota.cache_seconds} s on the {plan} plan: "
            f"with --interval {interval_s:g} some polls will return the previous answer "
            "(published again with the new poll ts)"
        )
    return None


def _parse_retry_after(value: str | None, now: Callable[[], datetime]) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


class _Retry(Exception):
    """Internal: a retryable failure with an optional server-imposed delay."""

    def __init__(self, reason: str, delay: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class CoinGeckoClient:
    """Fetch the top coins by market cap from ``{base_url}/coins/markets``.

    Timing knobs are constructor arguments so that tests can shrink them.
    """

    def __init__(
        self,
        base_url: str,
        *,
        plan: str = "public",
        api_key: str | None = None,
        key_header: str | None = None,
        vs_currency: str = "usd",
        connect_timeout: float = 5.0,
        read_timeout: float = 20.0,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        max_retry_after: float = 120.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        calls_per_minute: float | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if api_key and not key_header:
            raise ValueError(f"plan {plan!r} has no API key header; use demo or pro")
        self.base_url = base_url.rstrip("/")
        self.plan = plan
        self.vs_currency = vs_currency
        self.timeout = (connect_timeout, read_timeout)
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self._secret = api_key or None
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._session = session or requests.Session()
        self._session.headers.update(
            {"Accept": "application/json", "User-Agent": "marketflow-ingest/0.1"}
        )
        if api_key and key_header:
            self._session.headers[key_header] = api_key
        self.requests_made = 0
        # Page requests are spaced to stay within the plan's rate limit (``from_settings`` sets
        # it from the plan); retries follow their own backoff / Retry-After instead.
        self.page_spacing_s = 60.0 / calls_per_minute if calls_per_minute else 0.0
        self._next_page_at = 0.0
        self.paced_seconds = 0.0  # total time spent waiting for the rate limit

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> CoinGeckoClient:
        if settings.coingecko_api_key and not settings.coingecko_key_header:
            raise ConfigError(
                f"COINGECKO_API_KEY is set but COINGECKO_API_PLAN={settings.coingecko_api_plan} "
                "sends no key: set COINGECKO_API_PLAN=demo or pro (or unset the key)"
            )
        kwargs.setdefault(
            "calls_per_minute", PLAN_QUOTAS[settings.coingecko_api_plan].calls_per_minute
        )
        return cls(
            settings.coingecko_api_url,
            plan=settings.coingecko_api_plan,
            api_key=settings.coingecko_api_key,
            key_header=settings.coingecko_key_header,
            **kwargs,
        )

    def __repr__(self) -> str:  # never shows the key
        return f"CoinGeckoClient({self.base_url!r}, plan={self.plan!r})"

    def close(self) -> None:
        self._session.close()

    # ----------------------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """``text`` with the API key (if any) replaced by ``***``."""
        if self._secret and self._secret in text:
            return text.replace(self._secret, "***")
        return text

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: in [d/2, d], d = min(max, base * 2^(n-1))."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def fetch_markets(self, n_coins: int, *, deadline: float | None = None) -> list[Any]:
        """The top ``n_coins`` market records (raw, unvalidated), rank order, ids de-duplicated.

        ``deadline`` is a :func:`time.monotonic` instant after which no retry is started.
        Raises :class:`CoinGeckoError` when a page cannot be fetched.
        """
        records, error = self.fetch_markets_partial(n_coins, deadline=deadline)
        if error is not None:
            raise error
        return records

    def fetch_markets_partial(
        self, n_coins: int, *, deadline: float | None = None
    ) -> tuple[list[Any], CoinGeckoError | None]:
        """Like :meth:`fetch_markets`, but a page that cannot be fetched (after its retries)
        ends the poll with the pages fetched before it: ``(records of pages 1..k-1, error of
        page k)``; the error is None when every page came. A failed first page gives
        ``([], error)``."""
        pages, per_page = pages_for(n_coins)
        records: list[Any] = []
        seen: set[str] = set()
        for page in range(1, pages + 1):
            try:
                rows = self._get_page(page, per_page, deadline)
            except CoinGeckoError as exc:
                if not str(exc).startswith("CoinGecko page"):  # say which page failed
                    exc = CoinGeckoError(f"CoinGecko page {page} of {pages}: {exc}")
                return records[:n_coins], exc
            for row in rows:
                coin_id = row.get("id") if isinstance(row, dict) else None
                if page > 1 and isinstance(coin_id, str) and coin_id in seen:
                    # ranks shifted between two page requests: keep the first sighting
                    log.debug("coin %s seen on an earlier page; dropped the repeat", coin_id)
                    continue
                if isinstance(coin_id, str):
                    seen.add(coin_id)
                records.append(row)
            if len(rows) < per_page:
                break  # the last page CoinGecko has
        return records[:n_coins], None

    def ping(self, timeout: float = 3.0) -> bool:
        """True when the API answers (``/ping``, else one tiny ``/coins/markets`` request)."""
        for path, params in (
            (PING_PATH, None),
            (MARKETS_PATH, {"vs_currency": self.vs_currency, "per_page": 1, "page": 1}),
        ):
            try:
                resp = self._session.get(
                    self.base_url + path, params=params, timeout=(timeout, timeout)
                )
            except requests.RequestException as exc:
                log.debug("CoinGecko not reachable at %s: %s", self.base_url, self._describe(exc))
                return False
            if resp.status_code in (200, 429):  # 429: there, just busy
                return True
            if resp.status_code in (401, 403):
                log.warning(
                    "CoinGecko at %s refused the request (HTTP %s): check COINGECKO_API_KEY "
                    "and COINGECKO_API_PLAN",
                    self.base_url,
                    resp.status_code,
                )
                return False
        return False

    # ----------------------------------------------------------------------------------------
    def _describe(self, exc: BaseException) -> str:
        return self.redact(f"{type(exc).__name__}: {exc}")

    def _get_page(self, page: int, per_page: int, deadline: float | None) -> list[Any]:
        params = {
            "vs_currency": self.vs_currency,
            "order": "market_cap_desc",
            "per_page": per_page,
            "page": page,
            "sparkline": "false",
        }
        url = self.base_url + MARKETS_PATH
        self._pace()
        last = "no attempt made"
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._attempt(url, params)
            except _Retry as retry:
                last = retry.reason
                if attempt == self.max_attempts:
                    break
                delay = retry.delay if retry.delay is not None else self.backoff(attempt)
                if retry.delay is not None and retry.delay > self.max_retry_after:
                    raise CoinGeckoError(
                        f"CoinGecko page {page}: {last}; Retry-After {retry.delay:g} s is "
                        f"longer than the {self.max_retry_after:g} s this poll may wait"
                    ) from None
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise CoinGeckoError(
                        f"CoinGecko page {page}: {last}; a retry in {delay:.1f} s would miss "
                        "the poll deadline"
                    ) from None
                log.warning(
                    "CoinGecko page %d: %s; retrying in %.1f s (attempt %d/%d)",
                    page,
                    last,
                    delay,
                    attempt,
                    self.max_attempts,
                )
                self._sleep(delay)
        raise CoinGeckoError(
            f"CoinGecko page {page}: gave up after {self.max_attempts} attempts; last error: {last}"
        )

    def _pace(self) -> None:
        """Wait until the next page request is allowed by the plan's calls/minute."""
        if self.page_spacing_s <= 0:
            return
        now = time.monotonic()
        wait = self._next_page_at - now
        if wait > 0:
            self.paced_seconds += wait
            self._sleep(wait)
        self._next_page_at = max(now, self._next_page_at) + self.page_spacing_s

    def _attempt(self, url: str, params: dict[str, Any]) -> list[Any]:
        self.requests_made += 1
        try:
            resp = self._session.get(url, params=params, timeout=self.timeout)
        except requests.Timeout as exc:
            raise _Retry(f"timed out ({self._describe(exc)})") from None
        except requests.ConnectionError as exc:
            raise _Retry(f"connection failed ({self._describe(exc)})") from None
        except requests.RequestException as exc:
            raise CoinGeckoError(f"CoinGecko request failed: {self._describe(exc)}") from None
        status = resp.status_code
        if status == 429:
            wait = _parse_retry_after(resp.headers.get("Retry-After"), lambda: datetime.now(UTC))
            raise _Retry("HTTP 429 rate limited", wait)
        if status >= 500:
            wait = _parse_retry_after(resp.headers.get("Retry-After"), lambda: datetime.now(UTC))
            raise _Retry(f"HTTP {status} server error", wait)
        if status in (401, 403):
            raise CoinGeckoError(
                f"CoinGecko refused the request (HTTP {status}): check COINGECKO_API_KEY and "
                f"COINGECKO_API_PLAN (now {self.plan!r})"
            )
        if status != 200:
            snippet = self.redact(resp.text[:200].replace("\n", " "))
            raise CoinGeckoError(f"CoinGecko answered HTTP {status}: {snippet}")
        try:
            body = json.loads(resp.content.decode(resp.encoding or "utf-8", errors="replace"))
        except ValueError as exc:
            raise _Retry(f"malformed JSON in the response ({exc})") from None
        if not isinstance(body, list):
            snippet = self.redact(json.dumps(body)[:200])
            raise CoinGeckoError(
                f"CoinGecko answered with a JSON {type(body).__name__}, "
                f"not a list of markets: {snippet}"
            )
        return body


def coingecko_reachable(settings: Settings, timeout: float = 3.0) -> bool:
    """True when the configured CoinGecko API answers within ``timeout`` seconds."""
    client = CoinGeckoClient.from_settings(settings, max_attempts=1)
    try:
        return client.ping(timeout)
    finally:
        client.close()
