"""Plain functions behind the dashboard's numbers: no Streamlit, no SQL, tested directly.

* :func:`data_age` classifies the age of the newest data with the freshness checks' own
  thresholds (``MARKETFLOW_FRESHNESS_WARN_SECONDS`` / ``..._ERROR_SECONDS``, read by
  :func:`marketflow_assets.settings.load_check_settings`): ``OK`` when age <= warn, ``WARN``
  when warn < age <= error, ``ERROR`` above error — exactly
  :func:`marketflow_assets.defs.monitoring.checks.freshness_outcome`.
* :func:`market_tiles` counts coins, advancers (change_5min > 0), decliners (< 0) and unchanged.
* :func:`movers_table` formats a direction's movers: change_5min as a percentage with two
  decimals, and the rank change since the previous snapshot = previous rank − rank (positive =
  climbed; "new" when the coin had no change_5min then).
* :func:`movers_warm_up` and :func:`forecast_warm_up` say what the page waits for in the first
  minutes, from the poll times so far: the movers need prices five minutes apart, the forecasts
  a first model (:mod:`marketflow_assets.forecasting.warmup`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from marketflow_assets.forecasting.warmup import warm_up

MOVERS_WINDOW_S = 300  # change_5min compares prices five minutes apart
FORECAST_HORIZON_S = 300  # the served forecasts' horizon


@dataclass(frozen=True)
class Age:
    seconds: float
    status: str  # OK | WARN | ERROR
    warn_after: float
    error_after: float

    @property
    def text(self) -> str:
        return f"{human_duration(self.seconds)} old"


def human_duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def data_age(newest: datetime, now: datetime, warn_after: float, error_after: float) -> Age:
    """Age of ``newest`` at ``now`` and its status under the freshness thresholds."""
    seconds = (pd.Timestamp(now) - pd.Timestamp(newest)).total_seconds()
    if seconds > error_after:
        status = "ERROR"
    elif seconds > warn_after:
        status = "WARN"
    else:
        status = "OK"
    return Age(seconds, status, warn_after, error_after)


def freshness_thresholds() -> tuple[float, float]:
    """(warn, error) seconds of the freshness checks, from the same settings they use."""
    from marketflow_assets.settings import load_check_settings

    settings = load_check_settings()
    return settings.freshness_warn_seconds, settings.freshness_error_seconds


def latest_row_text(latest: tuple[str, datetime] | None, now: datetime) -> str:
    """``"latest row: live, 2 s old"``: which path wrote the newest ``price_indicators`` row
    (``live`` consumer or ``dagster`` recompute) and its age; ``"latest row: none"`` without."""
    if latest is None:
        return "latest row: none"
    source, ts = latest
    seconds = (pd.Timestamp(now) - pd.Timestamp(ts)).total_seconds()
    return f"latest row: {source}, {human_duration(seconds)} old"


@dataclass(frozen=True)
class Tiles:
    coins: int
    advancers: int
    decliners: int
    unchanged: int


def market_tiles(snapshot: pd.DataFrame) -> Tiles:
    """Counts over the coins of one snapshot (rows of ``price_indicators`` at that ts)."""
    change = snapshot["change_5min"]
    return Tiles(
        coins=int(snapshot["coin_id"].nunique()),
        advancers=int((change > 0).sum()),
        decliners=int((change < 0).sum()),
        unchanged=int((change == 0).sum()),
    )


def percent(value: float | None) -> str:
    """``1.2345`` -> ``+1.23%`` (two decimals, sign always shown)."""
    if value is None or pd.isna(value):
        return "—"
    return f"{value:+.2f}%"


def rank_change(rank: int, previous_rank) -> str:
    if previous_rank is None or pd.isna(previous_rank):
        return "new"
    delta = int(previous_rank) - int(rank)
    if delta > 0:
        return f"▲ {delta}"
    if delta < 0:
        return f"▼ {-delta}"
    return "="


def movers_table(movers: pd.DataFrame, direction: str) -> pd.DataFrame:
    """The page's table for one direction (``gainer`` | ``loser``), in rank order."""
    rows = movers[movers["direction"] == direction].sort_values("rank")
    return pd.DataFrame(
        {
            "rank": rows["rank"].astype(int).to_list(),
            "coin id": rows["coin_id"].to_list(),
            "symbol": [str(s).upper() if s is not None else "" for s in rows["symbol"]],
            "price": [price_text(v) for v in rows["price"]],
            "5-min change": [percent(v) for v in rows["change_5min"]],
            "rank change": [
                rank_change(r, p) for r, p in zip(rows["rank"], rows["previous_rank"], strict=True)
            ],
        }
    )


def range_bounds(newest: datetime, length) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(start, end] of a coin-page range ending at the coin's newest row."""
    end = pd.Timestamp(newest)
    return end - length, end


def share(value: float | None) -> str:
    """``0.8123`` -> ``81.2%``."""
    if value is None or pd.isna(value):
        return "—"
    return f"{100 * value:.1f}%"


def forecast_outcomes(forecasts: pd.DataFrame, candles: pd.DataFrame) -> pd.DataFrame:
    """Each forecast with what then happened: the close of the one-minute candle holding its
    ``target_ts`` (empty while the target lies in the future), the error, and whether the
    outcome fell inside the 80 % interval."""
    out = forecasts.sort_values("target_ts").copy()
    out["target_minute"] = out["target_ts"].dt.floor("min")
    closes = candles[["minute", "close"]].rename(columns={"minute": "target_minute"})
    out = out.merge(closes, on="target_minute", how="left").rename(columns={"close": "actual"})
    out["error"] = out["actual"] - out["predicted_price"]
    inside = (out["actual"] >= out["lower_80"]) & (out["actual"] <= out["upper_80"])
    out["inside_80"] = inside.where(out["actual"].notna())
    columns = ["origin_ts", "horizon_s", "target_ts", "model", "predicted_price", "lower_80"]
    columns += ["upper_80", "actual", "error", "inside_80"]
    return out[columns].sort_values("origin_ts", ascending=False)


def newest_raw_ts(checks: pd.DataFrame) -> str | None:
    """Newest raw ``ts`` as measured by the latest ``raw_prices`` freshness evaluation."""
    rows = checks[checks["check_key"] == "raw_prices:freshness_check"]
    if rows.empty:
        return None
    return rows["metadata"].iloc[0].get("newest")


def check_table(checks: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "asset": checks["asset_key"],
            "check": checks["check_name"],
            "status": [
                "skipped" if p and (m or {}).get("skipped") else "passed" if p else f"failed ({s})"
                for p, s, m in zip(
                    checks["passed"], checks["severity"], checks["metadata"], strict=True
                )
            ],
            "evaluated at": checks["evaluated_at"],
            "description": checks["description"],
        }
    )


def first_line(text, limit: int = 200) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0][:limit] if lines else ""


def failed_runs_table(runs: pd.DataFrame, dagster_ui_url: str) -> pd.DataFrame:
    """Failed runs for the Pipeline page: when, what, who launched it, the first line of the
    error, and a link to the run in the Dagster UI."""
    return pd.DataFrame(
        {
            "failed at": runs["failed_at"],
            "job": runs["job_name"],
            "launched by": runs["launched_by"].fillna("?"),
            "partition": runs["partition"].fillna(""),
            "error": [first_line(e) for e in runs["error"]],
            "run": [f"{dagster_ui_url.rstrip('/')}/runs/{r}" for r in runs["run_id"]],
        }
    )


_COUNT_WORDS = ("dlq", "dead", "reject")


def dead_letter_counts(checks: pd.DataFrame) -> pd.DataFrame:
    """Numeric metadata of the checks about dead letters or rejects (names containing ``dlq``,
    ``dead`` or ``reject``), e.g. the counts recorded by such checks."""
    rows = []
    for row in checks.itertuples():
        if not any(w in row.check_key.lower() for w in _COUNT_WORDS):
            continue
        for key, value in row.metadata.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                rows.append(
                    {"check": row.check_key, "measure": key, "value": value,
                     "evaluated at": row.evaluated_at}
                )  # fmt: skip
    return pd.DataFrame(rows, columns=["check", "measure", "value", "evaluated at"])


def movers_warm_up(poll_times: list, now: datetime) -> str:
    """What Market now shows before the first movers: the polls so far and when the first
    5-minute changes are due (five minutes after the first poll)."""
    if not poll_times:
        return "Waiting for the first poll."
    first, newest = pd.Timestamp(min(poll_times)), pd.Timestamp(max(poll_times))
    due = first + pd.Timedelta(seconds=MOVERS_WINDOW_S)
    left = (due - pd.Timestamp(now)).total_seconds()
    when = f"in about {human_duration(left)}" if left > 0 else "with the next refresh"
    polls = len(poll_times)
    return (
        f"Warming up: the movers compare prices five minutes apart; {polls} "
        f"poll{'s' if polls != 1 else ''} so far over {human_duration((newest - first).seconds)}, "
        f"the first movers {when} ({due:%H:%M:%S} UTC)."
    )


def forecast_warm_up(poll_times: list) -> str:
    """What the forecast panels show before the first model: how far the history is from it."""
    state = warm_up(poll_times, FORECAST_HORIZON_S)
    if state.ready:
        return "Enough history: the first forecast model is being trained."
    return (
        f"Forecasts {state.message()}. No forecast is served before a model was trained on "
        "enough history."
    )


def round_sig(value, digits: int = 6):
    """``value`` rounded to ``digits`` significant digits (None/NaN stay as they are)."""
    if value is None or not np.isfinite(value) or value == 0:
        return value
    return round(float(value), digits - 1 - int(np.floor(np.log10(abs(value)))))


def price_text(value) -> str:
    """A price written by its magnitude, never with SI prefixes: ``102,700.50``, ``1.2345``,
    ``0.00009130`` (four significant digits below 1)."""
    if value is None or not np.isfinite(value):
        return "—"
    value = float(value)
    if abs(value) >= 1000:
        return f"{value:,.2f}"
    if abs(value) >= 1:
        return f"{value:,.4f}"
    if value == 0:
        return "0"
    decimals = 3 - int(np.floor(np.log10(abs(value))))
    return f"{value:.{decimals}f}"


MARKET_COLUMNS = (
    "#", "coin", "symbol", "price", "1m %", "5m %", "1h %", "24h %", "market cap",
    "24h volume", "24h high", "24h low", "last hour",
)  # fmt: skip


def market_rows(table: pd.DataFrame, sparks: pd.DataFrame | None = None) -> pd.DataFrame:
    """The market table as the page shows it (rank order; numbers stay numbers so that the
    columns sort): 1 h change = ``100 (price / price an hour earlier - 1)``; prices rounded to 6
    significant digits; ``last hour``: each coin's prices of the last hour (sparkline), when
    ``sparks`` has them."""
    series = {}
    if sparks is not None and len(sparks):
        for coin, rows in sparks.groupby("coin_id", sort=False):
            prices = rows["price"].to_numpy(np.float64)
            step = max(1, len(prices) // 60)  # at most ~60 points per sparkline
            series[coin] = [float(p) for p in prices[::step]]
    price = table["price"].astype("float64")
    hour = 100.0 * (price / table["price_1h_ago"].astype("float64") - 1.0)
    names = table["name"].where(table["name"].notna(), table["coin_id"])
    out = pd.DataFrame(
        {
            "#": table["market_cap_rank"],
            "coin": names,
            "symbol": table["symbol"].fillna("").str.upper(),
            "price": [round_sig(p) for p in price],
            "1m %": table["change_1min"],
            "5m %": table["change_5min"],
            "1h %": hour,
            "24h %": table["change_24h"],
            "market cap": table["market_cap"].round(0),
            "24h volume": table["total_volume"].round(0),
            "24h high": [round_sig(p) for p in table["high_24h"]],
            "24h low": [round_sig(p) for p in table["low_24h"]],
            "last hour": [series.get(c) for c in table["coin_id"]],
        }
    )
    out.index = table["coin_id"].to_numpy()
    return out


def search_market(rows: pd.DataFrame, text: str) -> pd.DataFrame:
    """Rows whose coin id, name or symbol contains ``text`` (case-insensitive); all when empty."""
    text = (text or "").strip().lower()
    if not text:
        return rows
    hay = (
        pd.Series(rows.index, index=rows.index).astype(str).str.lower()
        + " "
        + rows["coin"].astype(str).str.lower()
        + " "
        + rows["symbol"].astype(str).str.lower()
    )
    return rows[hay.str.contains(text, regex=False)]


#: Candle intervals the coin view offers (minutes).
CANDLE_INTERVALS = {"1 min": 1, "5 min": 5, "15 min": 15, "1 hour": 60}


def continuous_candles(candles: pd.DataFrame) -> pd.DataFrame:
    """Candles whose open is the previous candle's close (as charting tools draw them): with
    two 30-s polls per minute a candle's own first price leaves no room for wicks; high and low
    are widened to hold the open. The first candle keeps its own open."""
    out = candles.copy()
    if len(out) < 2:
        return out
    previous_close = out["close"].shift(1)
    out["open"] = previous_close.where(previous_close.notna(), out["open"])
    out["high"] = np.maximum(out["high"], out["open"])
    out["low"] = np.minimum(out["low"], out["open"])
    return out


def resample_candles(candles: pd.DataFrame, minutes: int) -> pd.DataFrame:
    """One-minute candles folded into ``minutes``-minute ones: open of the first, high/low of
    all, close, the indicator values and the 24 h volume of the last, observations summed."""
    if minutes <= 1 or candles.empty:
        return candles
    key = candles["minute"].dt.floor(f"{minutes}min")
    last = ["close", "sma_5min", "ema_3min", "volatility_5min", "change_1min", "change_5min"]
    last += [c for c in ("total_volume",) if c in candles]
    grouped = candles.groupby(key, sort=True)
    out = pd.DataFrame(
        {
            "open": grouped["open"].first(),
            "high": grouped["high"].max(),
            "low": grouped["low"].min(),
            **{c: grouped[c].last() for c in last},
            "observations": grouped["observations"].sum(),
        }
    )
    return out.rename_axis("minute").reset_index()


def price_tickformat(prices) -> str:
    """A d3 format for a price axis, by magnitude (no SI prefixes such as ``9.13μ`` or
    ``102.7k``): thousands separators at and above 1000, 2 decimals above 1, else enough
    decimals for 4 significant digits of the smallest price."""
    values = np.asarray([p for p in prices if p is not None and np.isfinite(p) and p > 0], float)
    if not len(values):
        return ",.2f"
    if values.min() >= 1000:
        return ",.0f"
    if values.min() >= 1:
        return ",.2f"
    return f",.{3 - int(np.floor(np.log10(values.min())))}f"


def forecasts_ahead(forecasts: pd.DataFrame | None, last_ts) -> pd.DataFrame | None:
    """The forecasts of the newest origin, and only those ahead of the last price (never drawn
    over history)."""
    if forecasts is None or forecasts.empty:
        return None
    newest = forecasts[forecasts["origin_ts"] == forecasts["origin_ts"].max()]
    ahead = newest[newest["target_ts"] > pd.Timestamp(last_ts)]
    return ahead if len(ahead) else None
