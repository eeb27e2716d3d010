"""Plotly figures of the dashboard (pure: DataFrames in, figures out)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots


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


def coin_chart(candles: pd.DataFrame, coin: str, forecasts: pd.DataFrame | None) -> go.Figure:
    """One-minute candles with SMA 5m / EMA 3m overlays, and the forecasts with their 80 %
    interval at their target times when there are any."""
    fig = go.Figure()
    fig.add_trace(
        go.Candlestick(
            x=candles["minute"],
            open=candles["open"],
            high=candles["high"],
            low=candles["low"],
            close=candles["close"],
            name="price (1 min)",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=candles["minute"], y=candles["sma_5min"], name="SMA 5m", line={"color": "#1f77b4"}
        )
    )
    fig.add_trace(
        go.Scatter(
            x=candles["minute"], y=candles["ema_3min"], name="EMA 3m", line={"color": "#ff7f0e"}
        )
    )
    if forecasts is not None and len(forecasts):
        f = forecasts.sort_values("target_ts")
        fig.add_trace(
            go.Scatter(
                x=pd.concat([f["target_ts"], f["target_ts"][::-1]]),
                y=pd.concat([f["upper_80"], f["lower_80"][::-1]]),
                fill="toself",
                fillcolor="rgba(99,110,250,0.15)",
                line={"width": 0},
                name="80% interval",
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=f["target_ts"],
                y=f["predicted_price"],
                mode="lines+markers",
                name="forecast (" + ", ".join(sorted(f["model"].unique())) + ")",
                line={"dash": "dot"},
            )
        )
    fig.update_layout(
        title=f"{coin}: price", xaxis_rangeslider_visible=False, height=460, margin={"t": 40}
    )
    return fig


def indicator_panels(candles: pd.DataFrame) -> go.Figure:
    """5-min volatility, and 1-/5-min % change, one panel each (values at each minute's end)."""
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        subplot_titles=("volatility 5 min (sample std of price)", "change (%)"),
        vertical_spacing=0.12,
    )
    fig.add_trace(
        go.Scatter(x=candles["minute"], y=candles["volatility_5min"], name="volatility 5m"), 1, 1
    )
    fig.add_trace(go.Bar(x=candles["minute"], y=candles["change_1min"], name="change 1m"), 2, 1)
    fig.add_trace(go.Scatter(x=candles["minute"], y=candles["change_5min"], name="change 5m"), 2, 1)
    fig.update_layout(height=420, margin={"t": 40})
    return fig


def rows_per_poll(polls: pd.DataFrame) -> go.Figure:
    fig = px.line(polls, x="ts", y="rows", markers=True)
    fig.update_layout(height=300, margin={"t": 10}, yaxis_title="rows", xaxis_title="poll ts")
    return fig
