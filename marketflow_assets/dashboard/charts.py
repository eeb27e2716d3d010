"""Plotly figures of the dashboard (pure: DataFrames in, figures out)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from marketflow_assets.dashboard import view


def change_treemap(coins: pd.DataFrame) -> go.Figure:
    """Every coin of the snapshot as a tile sized by its market cap (equal tiles where it is not
    known) and coloured by its 5-minute change (red down, green up, colour scale clipped at the
    95th percentile of |change|)."""
    labels = [str(s or c).upper() for s, c in zip(coins["symbol"], coins["coin_id"], strict=True)]
    change = coins["change_5min"].astype(float)
    caps = (
        coins["market_cap"].astype(float)
        if "market_cap" in coins
        else pd.Series(float("nan"), index=coins.index)
    )
    known = caps[caps > 0]
    # a coin without a market cap gets the smallest known one (a tile, not a gap)
    sizes = caps.where(caps > 0, known.min() if len(known) else 1.0)
    bound = float(change.abs().quantile(0.95)) or 1.0
    fig = go.Figure(
        go.Treemap(
            ids=coins["coin_id"],
            labels=labels,
            parents=[""] * len(coins),
            values=sizes.to_list(),
            text=[f"{v:+.2f}%" for v in change],
            customdata=list(zip(coins["coin_id"], coins["price"], strict=True)),
            texttemplate="%{label}<br>%{text}",
            hovertemplate="%{customdata[0]}<br>price %{customdata[1]:.6g}<br>5-min change "
            "%{text}<extra></extra>",
            marker={
                "colors": change,
                "colorscale": "RdYlGn",
                "cmin": -bound,
                "cmax": bound,
                "cmid": 0,
                "colorbar": {"title": {"text": "5-min %"}},
            },
        )
    )
    fig.update_layout(
        title="5-minute change across coins (%), tiles sized by market cap",
        margin={"t": 40, "l": 0, "r": 0, "b": 0},
        height=420,
    )
    return fig


#: The coin view's optional overlays and panes.
LAYERS = ("SMA 5m", "EMA 3m", "volatility", "change", "volume", "forecast")
#: The panes under the price pane, in order, with their titles.
PANES = {
    "volatility": "volatility 5 min (std of price)",
    "change": "change (%)",
    "volume": "24 h volume (USD, as CoinGecko reports it at each close)",
}


def coin_view(
    candles: pd.DataFrame,
    coin: str,
    forecasts: pd.DataFrame | None,
    layers=LAYERS,
    last_price: tuple | None = None,
) -> go.Figure:
    """The coin view, as charting tools stack it: OHLC candles (with wicks) and the chosen
    overlays (SMA 5m, EMA 3m, the forecast of the newest origin with its 80 % interval shaded,
    ahead of the last price only), then a volatility, a change and a volume pane, all on one
    shared time axis with a crosshair; price axis and hover by magnitude (no SI prefixes). The
    volume pane shows the rolling 24 h volume CoinGecko reported at each candle's close (its
    API has no volume per interval).
    ``last_price``: ``(ts, price)`` the forecast cone starts from."""
    panes = [p for p in PANES if p in layers]
    heights = [0.6] + [0.4 / len(panes)] * len(panes) if panes else [1.0]
    titles = [f"{coin}: price (USD)"] + [PANES[p] for p in panes]
    fig = make_subplots(
        rows=1 + len(panes),
        cols=1,
        shared_xaxes=True,
        row_heights=heights,
        vertical_spacing=0.04,
        subplot_titles=titles,
    )
    tick = view.price_tickformat(
        pd.concat([candles["low"], candles["high"]]) if len(candles) else []
    )
    fig.add_trace(
        go.Candlestick(
            x=candles["minute"],
            open=candles["open"],
            high=candles["high"],
            low=candles["low"],
            close=candles["close"],
            name="price",
        ),
        1,
        1,
    )
    for name, column, color in (
        ("SMA 5m", "sma_5min", "#1f77b4"),
        ("EMA 3m", "ema_3min", "#ff7f0e"),
    ):
        if name in layers:
            fig.add_trace(
                go.Scatter(
                    x=candles["minute"],
                    y=candles[column],
                    name=name,
                    line={"color": color, "width": 1.5},
                    hovertemplate=f"%{{y:{tick}}}",
                ),
                1,
                1,
            )
    ahead = view.forecasts_ahead(forecasts, candles["minute"].max()) if len(candles) else None
    if "forecast" in layers and ahead is not None:
        f = ahead.sort_values("target_ts")
        x0, p0 = last_price if last_price else (f["origin_ts"].iloc[0], None)
        xs = [x0, *f["target_ts"]]
        lower = [p0 if p0 is not None else f["lower_80"].iloc[0], *f["lower_80"]]
        upper = [p0 if p0 is not None else f["upper_80"].iloc[0], *f["upper_80"]]
        fig.add_trace(
            go.Scatter(
                x=xs + xs[::-1],
                y=upper + lower[::-1],
                fill="toself",
                fillcolor="rgba(99,110,250,0.18)",
                line={"width": 0},
                name="80% interval",
                hoverinfo="skip",
            ),
            1,
            1,
        )
        predicted = [p0 if p0 is not None else f["predicted_price"].iloc[0], *f["predicted_price"]]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=predicted,
                mode="lines+markers",
                name="forecast (" + ", ".join(sorted(f["model"].unique())) + ")",
                line={"dash": "dot", "color": "#636efa"},
                hovertemplate=f"%{{y:{tick}}}",
            ),
            1,
            1,
        )
    row = 2
    if "volatility" in panes:
        fig.add_trace(
            go.Scatter(x=candles["minute"], y=candles["volatility_5min"], name="volatility 5m"),
            row,
            1,
        )
        fig.update_yaxes(tickformat=tick, row=row, col=1)
        row += 1
    if "change" in panes:
        fig.add_trace(
            go.Bar(x=candles["minute"], y=candles["change_1min"], name="change 1m"), row, 1
        )
        fig.add_trace(
            go.Scatter(x=candles["minute"], y=candles["change_5min"], name="change 5m"), row, 1
        )
        fig.update_yaxes(ticksuffix="%", tickformat=".2f", row=row, col=1)
        row += 1
    if "volume" in panes:
        volume = candles["total_volume"] if "total_volume" in candles else [None] * len(candles)
        fig.add_trace(
            go.Bar(
                x=candles["minute"],
                y=volume,
                name="24h volume",
                marker={"color": "rgba(128,128,128,0.6)"},
                hovertemplate="%{y:$,.0f}",
            ),
            row,
            1,
        )
        fig.update_yaxes(tickprefix="$", tickformat=",.0f", row=row, col=1)
    fig.update_yaxes(tickformat=tick, row=1, col=1)
    # the crosshair: a vertical line across every pane, and the price where the cursor is
    fig.update_xaxes(showspikes=True, spikemode="across", spikesnap="cursor", spikethickness=1)
    fig.update_yaxes(showspikes=True, spikemode="across", spikesnap="cursor", spikethickness=1)
    fig.update_layout(
        hovermode="x unified",
        xaxis_rangeslider_visible=False,
        height=420 + 170 * len(panes),
        margin={"t": 40},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
    )
    return fig


def rows_per_poll(polls: pd.DataFrame) -> go.Figure:
    fig = px.line(polls, x="ts", y="rows", markers=True)
    fig.update_layout(height=300, margin={"t": 10}, yaxis_title="rows", xaxis_title="poll ts")
    return fig
