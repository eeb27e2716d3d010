"""The Marketflow analyst dashboard (Streamlit script; started by ``marketflow dashboard``).

Three pages, picked in the sidebar: "Market now" (landing page), "Coin" and "Pipeline". Data comes
only from PostgreSQL, through :mod:`marketflow_assets.dashboard.queries` (no SQL here), cached for
a few seconds (``st.cache_data``); each panel refreshes itself (``st.fragment(run_every=...)``)
instead of reloading the page. Missing tables, empty tables and an unreachable database are shown
as plain messages and retried on the next refresh.
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from marketflow_assets.dashboard import charts, view
from marketflow_assets.dashboard import queries as q

logger = logging.getLogger("marketflow.dashboard")

PAGES = ("Market now", "Coin", "Pipeline")
CACHE_TTL_SECONDS = 5
MARKET_REFRESH = timedelta(seconds=10)
COIN_REFRESH = timedelta(seconds=30)
PIPELINE_REFRESH = timedelta(seconds=30)
NO_DATA_HINT = "Run `marketflow up` (live pipeline) or `marketflow refresh` (from raw data)."


# ------------------------------------------------------------------------------------------
# Database access: one shared connection, short-lived cached reads keyed by the URL
# ------------------------------------------------------------------------------------------
def postgres_url() -> str:
    from marketflow_assets.settings import load_settings

    return load_settings().postgres_url or ""


@st.cache_resource(show_spinner=False)
def database(url: str) -> q.Database:
    return q.Database(url or None)


def _read(name: str, url: str, *args):
    return getattr(q, name)(database(url), *args)


@st.cache_data(ttl=CACHE_TTL_SECONDS, show_spinner=False)
def read(name: str, url: str, *args):
    """``queries.<name>(db, *args)``, cached for a few seconds (errors are not cached)."""
    return _read(name, url, *args)


def explain(exc: q.DashboardError, what: str) -> None:
    """A plain message instead of a traceback."""
    if isinstance(exc, q.DatabaseUnavailable):
        st.warning(f"Database not reachable: {exc}. The page retries by itself.")
    else:
        st.info(f"No {what} yet ({exc}). {NO_DATA_HINT}")


def guarded(panel):
    """Any unexpected error of a panel becomes a one-line message (the traceback goes to the
    log); the panel's next refresh tries again. Streamlit's own control flow (stop, rerun) is
    not an ``Exception`` and passes through."""

    @functools.wraps(panel)
    def wrapper(*args, **kwargs):
        try:
            return panel(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a message on the page, never a traceback
            logger.exception("dashboard panel %s failed", panel.__name__)
            reason = " ".join(str(exc).split())[:300]
            st.warning(
                f"This panel could not be drawn ({type(exc).__name__}: {reason}); "
                "it retries on the next refresh."
            )

    return wrapper


# ------------------------------------------------------------------------------------------
# Market now
# ------------------------------------------------------------------------------------------
@st.fragment(run_every=MARKET_REFRESH)
@guarded
def market_now() -> None:
    url = postgres_url()
    try:
        snapshot = read("latest_snapshot", url)
        if snapshot is None:
            polls = read("recent_poll_times", url)
            if polls:  # prices are coming in; the movers need five minutes of them
                st.info(view.movers_warm_up(polls, datetime.now(UTC)))
                market_table_panel(url)
                promoted_model()
            else:
                st.info(f"No market data yet: table market_movers has no rows. {NO_DATA_HINT}")
            return
        previous = read("previous_snapshot", url, snapshot)
        movers = read("movers", url, snapshot, previous)
        coins = read("snapshot_coins", url, snapshot)
        latest_row = read("latest_row_source", url)
    except q.DashboardError as exc:
        explain(exc, "market data")
        return

    warn, error = view.freshness_thresholds()
    age = view.data_age(snapshot, datetime.now(UTC), warn, error)
    if age.status != "OK":
        st.error(
            f"Stale data: the latest snapshot is {age.text} (freshness {age.status}: warn after "
            f"{warn:g} s, error after {error:g} s). The pipeline may be stopped or lagging."
        )
    colour = {"OK": "green", "WARN": "orange", "ERROR": "red"}[age.status]
    st.markdown(
        f"**Latest snapshot** `{snapshot.isoformat()}` · data age "
        f":{colour}[**{age.text}** ({age.status})] · "
        f"{view.latest_row_text(latest_row, datetime.now(UTC))}"
    )
    tiles = view.market_tiles(coins)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Coins tracked", tiles.coins)
    c2.metric("Advancers (5 min)", tiles.advancers)
    c3.metric("Decliners (5 min)", tiles.decliners)
    c4.metric("Unchanged", tiles.unchanged)

    gainers = view.movers_table(movers, "gainer")
    losers = view.movers_table(movers, "loser")
    if len(gainers) and len(losers):
        st.markdown(
            f"Top gainer: **{gainers['coin id'].iloc[0]}** {gainers['5-min change'].iloc[0]} · "
            f"top loser: **{losers['coin id'].iloc[0]}** {losers['5-min change'].iloc[0]}"
        )
    left, right = st.columns(2)
    with left:
        st.subheader("Top 5 gainers (5 min)")
        st.table(gainers.set_index("rank"))
    with right:
        st.subheader("Top 5 losers (5 min)")
        st.table(losers.set_index("rank"))

    price_alerts_panel(url)
    market_table_panel(url)
    with_change = coins.dropna(subset=["change_5min"])
    if len(with_change):
        st.plotly_chart(charts.change_treemap(with_change), width="stretch")
    promoted_model()


def price_alerts_panel(url: str) -> None:
    """The newest price alerts (rules in MARKETFLOW_PRICE_ALERTS_FILE, sent by the live path)."""
    try:
        alerts = read("price_alerts", url)
    except q.DashboardError:
        return
    if alerts.empty:
        return
    st.subheader("Price alerts")
    st.dataframe(alerts, hide_index=True)


#: Column widths of the market table (pixels; fixed, so the layout is the same for everyone).
MARKET_WIDTHS = {
    "#": 45, "coin": 130, "symbol": 70, "price": 110, "1m %": 70, "5m %": 70, "1h %": 70,
    "24h %": 70, "market cap": 150, "24h volume": 140, "24h high": 100, "24h low": 100,
    "last hour": 130,
}  # fmt: skip


def market_table_panel(url: str) -> None:
    """Every coin of the newest snapshot, CoinGecko style: rank, name, price, 1 min / 5 min /
    1 h / 24 h change, market cap, 24 h volume, high and low, the last hour as a sparkline;
    sortable (column headers) and searchable."""
    st.subheader("Market")
    newest = read("newest_indicator_ts", url)
    if newest is None:
        return
    table = read("market_table", url, newest)
    top = tuple(table["coin_id"].head(q.SPARKLINE_COINS))
    rows = view.market_rows(table, read("sparklines", url, top, newest))
    search = st.text_input("Search coins", key="market_search", placeholder="name, symbol or id")
    shown = view.search_market(rows, search)
    st.caption(
        f"{len(shown)} of {len(rows)} coins at {newest.isoformat()} · click a column header to "
        "sort · 1 h change needs an hour of history"
    )
    pct = "%+.2f%%"
    # prices shown by magnitude (0.000009130, 102,700.50) while the cells keep their numbers,
    # which is what a click on a column header sorts by
    prices = ["price", "24h high", "24h low"]
    styled = shown.style.format(view.price_text, subset=prices)
    st.dataframe(
        styled,
        hide_index=True,
        column_config={
            name: column(label, width=MARKET_WIDTHS[name])
            for name, (column, label) in {
                "#": (functools.partial(st.column_config.NumberColumn, format="%d"), "#"),
                "coin": (st.column_config.TextColumn, "coin"),
                "symbol": (st.column_config.TextColumn, "symbol"),
                "price": (st.column_config.NumberColumn, "price (USD)"),
                "1m %": (functools.partial(st.column_config.NumberColumn, format=pct), "1m"),
                "5m %": (functools.partial(st.column_config.NumberColumn, format=pct), "5m"),
                "1h %": (functools.partial(st.column_config.NumberColumn, format=pct), "1h"),
                "24h %": (functools.partial(st.column_config.NumberColumn, format=pct), "24h"),
                "market cap": (
                    functools.partial(st.column_config.NumberColumn, format="localized"),
                    "market cap (USD)",
                ),
                "24h volume": (
                    functools.partial(st.column_config.NumberColumn, format="localized"),
                    "24h volume (USD)",
                ),
                "24h high": (st.column_config.NumberColumn, "24h high"),
                "24h low": (st.column_config.NumberColumn, "24h low"),
                "last hour": (st.column_config.LineChartColumn, "last hour"),
            }.items()
        },
    )


def promoted_model() -> None:
    st.subheader("Forecast model")
    try:
        evaluation = read("promoted_forecast", postgres_url())
    except q.NoData:
        st.caption(
            "No forecasts yet (table forecast_evaluation is absent): run `marketflow forecast`."
        )
        return
    except q.DashboardError as exc:
        explain(exc, "forecasts")
        return
    if evaluation.empty:
        st.caption(view.forecast_warm_up(read("recent_poll_times", postgres_url())))
        return
    table = pd.DataFrame(
        {
            "horizon": [f"{int(h)} s" for h in evaluation["horizon_s"]],
            "promoted model": evaluation["model"],
            "MASE": evaluation["mase"].map(lambda v: f"{v:.3f}"),
            "MAE": evaluation["mae"].map(lambda v: f"{v:.6g}"),
            "directional accuracy": evaluation["directional_accuracy"].map(view.share),
            "80% coverage": evaluation["coverage_80"].map(view.share),
            "backtest n": evaluation["n"].astype(int),
        }
    )
    st.caption(f"Evaluated at {evaluation['evaluated_at'].iloc[0].isoformat()}")
    st.table(table.set_index("horizon"))


# ------------------------------------------------------------------------------------------
# Coin
# ------------------------------------------------------------------------------------------
@guarded
def coin_page() -> None:
    url = postgres_url()
    try:
        coin_list = read("coins", url)
    except q.DashboardError as exc:
        explain(exc, "coins")
        return
    if coin_list.empty:
        st.info(f"No coins yet: table price_indicators has no rows. {NO_DATA_HINT}")
        return
    # rank order (the largest coin first, and opened first), as CoinGecko lists them
    labels = {
        row.coin_id: f"{row.name or row.coin_id} ({str(row.symbol or '').upper()})"
        + (f" · #{row.market_cap_rank}" if pd.notna(row.market_cap_rank) else "")
        for row in coin_list.itertuples()
    }
    pick, span = st.columns([2, 3])
    coin = pick.selectbox("Coin (type to search)", list(labels), format_func=labels.get, key="coin")
    range_label = span.radio("Range", list(q.RANGES), index=1, horizontal=True, key="range")
    coin_panels(coin, range_label)


@st.fragment(run_every=COIN_REFRESH)
@guarded
def coin_panels(coin: str, range_label: str) -> None:
    url = postgres_url()
    try:
        coin_list = read("coins", url)
        match = coin_list[coin_list["coin_id"] == coin]
        if match.empty:
            st.info(f"No rows for {coin} any more.")
            return
        start, end = view.range_bounds(match["newest_ts"].iloc[0], q.RANGES[range_label])
        candles = read("candles", url, coin, start, end)
        rows = read("latest_rows", url, coin, start, end)
    except q.DashboardError as exc:
        explain(exc, "price data")
        return
    observations = int(candles["observations"].sum()) if len(candles) else 0
    interval_col, layers_col = st.columns([1, 3])
    interval = interval_col.radio(
        "Candles", list(view.CANDLE_INTERVALS), horizontal=True, key="candle_interval"
    )
    layers = layers_col.pills(
        "Show", charts.LAYERS, selection_mode="multi", default=list(charts.LAYERS), key="layers"
    )
    shown = view.resample_candles(view.continuous_candles(candles), view.CANDLE_INTERVALS[interval])
    st.caption(
        f"{coin}: {observations} observations from {start.isoformat()} to {end.isoformat()} "
        f"({len(shown)} candles of {interval}); latest price "
        f"{view.price_text(candles['close'].iloc[-1]) if len(candles) else '—'}"
    )
    forecasts = coin_forecasts(url, coin, start, end)
    if observations < 2:
        st.info(
            f"Only {observations} observation of {coin} in this range: charts need at least two. "
            "The latest row is below."
        )
    else:
        last = (rows["ts"].iloc[0], float(rows["price"].iloc[0])) if len(rows) else None
        figure = charts.coin_view(shown, coin, forecasts, layers or (), last_price=last)
        st.plotly_chart(figure, width="stretch")
    if forecasts is not None and len(forecasts):
        st.subheader("Forecasts against what then happened")
        st.dataframe(view.forecast_outcomes(forecasts, candles), hide_index=True)
    st.subheader("Latest rows")
    st.dataframe(rows, hide_index=True)
    st.download_button(
        "Download CSV (the candles and indicators shown)",
        candles.to_csv(index=False).encode(),
        file_name=f"marketflow_{coin}_{range_label.replace(' ', '')}.csv",
        mime="text/csv",
    )


def coin_forecasts(url: str, coin: str, start, end) -> pd.DataFrame | None:
    try:
        forecasts = read("coin_forecasts", url, coin, start, end)
    except q.DashboardError:
        st.caption("No forecasts yet (table price_forecasts is absent).")
        return None
    if forecasts.empty:
        st.caption("No forecasts yet for this coin in this range.")
    return forecasts


# ------------------------------------------------------------------------------------------
# Pipeline
# ------------------------------------------------------------------------------------------
@st.fragment(run_every=PIPELINE_REFRESH)
@guarded
def pipeline_page() -> None:
    url = postgres_url()
    try:
        newest = read("newest_indicator_ts", url)
    except q.DashboardError as exc:
        explain(exc, "pipeline data")
        return
    try:
        checks = read("latest_check_results", url)
    except q.NoData:
        checks = None
    except q.DashboardError as exc:
        explain(exc, "check results")
        return
    st.subheader("Asset checks (latest result of each)")
    if checks is None or checks.empty:
        st.info(
            "No check results recorded yet: monitoring_checks_sensor records them every minute "
            "while `marketflow up` (dagster dev) runs."
        )
    else:
        raw_newest = view.newest_raw_ts(checks)
        st.markdown(
            f"Newest raw `ts`: **{raw_newest or 'not recorded yet'}** · newest indicator `ts`: "
            f"**{newest.isoformat() if newest is not None else 'none'}**"
        )
        st.dataframe(view.check_table(checks), hide_index=True)
        counts = view.dead_letter_counts(checks)
        st.subheader("Dead letters and rejects")
        if counts.empty:
            st.caption("No dead-letter or reject counts recorded by the checks yet.")
        else:
            st.dataframe(counts, hide_index=True)
    if newest is not None:
        polls = read("rows_per_poll", url, newest - q.ROWS_PER_POLL_WINDOW)
        st.subheader("Rows per poll (price_indicators, last 2 hours of data)")
        st.plotly_chart(charts.rows_per_poll(polls), width="stretch")
    failed_runs_panel(url)
    since = (newest or pd.Timestamp.now(tz="UTC")) - timedelta(days=7)
    for title, name, args in (
        ("Recent failed check results", "recent_failed_checks", (since,)),
        ("Alert history", "alerts", ()),
    ):
        st.subheader(title)
        try:
            frame = read(name, url, *args)
        except q.DashboardError:
            frame = pd.DataFrame()
        if frame.empty:
            st.caption("Nothing recorded yet.")
        else:
            st.dataframe(frame, hide_index=True)


def failed_runs_panel(url: str) -> None:
    """Failed runs of the last 24 hours, each linked to the Dagster UI."""
    from marketflow_assets.settings import load_settings

    st.subheader("Failed runs (last 24 hours)")
    try:
        runs = read("failed_runs", url, pd.Timestamp.now(tz="UTC") - timedelta(hours=24))
    except q.DashboardError:
        runs = pd.DataFrame()
    if runs.empty:
        st.caption("No failed run in the last 24 hours.")
        return
    table = view.failed_runs_table(runs, load_settings().dagster_ui_url)
    st.dataframe(
        table,
        hide_index=True,
        column_config={"run": st.column_config.LinkColumn("run", display_text="open in Dagster")},
    )


# ------------------------------------------------------------------------------------------
def main() -> None:
    st.set_page_config(page_title="Marketflow", page_icon="📈", layout="wide")
    page = st.sidebar.radio("Page", PAGES, key="page")
    st.sidebar.caption("Data: PostgreSQL (price_indicators, market_movers, ...)")
    st.title(f"Marketflow · {page}")
    if page == "Market now":
        market_now()
    elif page == "Coin":
        coin_page()
    else:
        pipeline_page()


main()
