"""The dashboard script under Streamlit's AppTest, against a real seeded PostgreSQL: the numbers
on each page equal SQL ground truth; empty and unreachable databases give plain messages."""

from __future__ import annotations

import base64
import gc
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import marketflow_assets.dashboard
from marketflow_assets.defs.monitoring.history import (
    record_alerts,
    record_check_evaluations,
    record_run_failures,
)
from marketflow_assets.runtime.services import free_port
from marketflow_assets_tests.dashboard.dashboard_data import (
    SOLO,
    create_forecast_tables,
    drop_forecast_tables,
    insert_forecasts,
    sql,
)

APP = str(Path(marketflow_assets.dashboard.__file__).with_name("app.py"))


@pytest.fixture(autouse=True)
def no_gc_during_script_compilation():
    """CPython 3.11.7 can fail ``ast.parse`` in AppTest's script thread with "AST constructor
    recursion depth mismatch" when a garbage collection runs finalizers meanwhile (here: the
    SQLite connections of Dagster instances left by earlier tests; fixed in later CPythons). Collect
    first, and keep the collector off while the app runs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def run_app(monkeypatch, url: str, page: str | None = None, **env: str) -> AppTest:
    monkeypatch.setenv("MARKETFLOW_POSTGRES_URL", url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page:
        at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def ground_truth_movers(url: str) -> tuple[pd.Timestamp, pd.DataFrame]:
    snapshot = sql(url, "SELECT max(snapshot_ts) FROM market_movers")[0][0]
    rows = sql(
        url,
        "SELECT direction, rank, coin_id, change_5min FROM market_movers "
        "WHERE snapshot_ts = %s ORDER BY direction, rank",
        (snapshot,),
    )
    return pd.Timestamp(snapshot), pd.DataFrame(
        rows, columns=["direction", "rank", "coin_id", "change_5min"]
    )


def test_market_page_matches_sql(seeded, monkeypatch):
    url, _raw, indicators, _movers = seeded
    at = run_app(monkeypatch, url, MARKETFLOW_FRESHNESS_WARN_SECONDS="3600",
                 MARKETFLOW_FRESHNESS_ERROR_SECONDS="7200")  # fmt: skip
    snapshot, truth = ground_truth_movers(url)

    gainers, losers = (at.table[0].value, at.table[1].value)
    for table, direction in ((gainers, "gainer"), (losers, "loser")):
        expected = truth[truth["direction"] == direction]
        assert table["coin id"].to_list() == expected["coin_id"].to_list()
        assert table["5-min change"].to_list() == [f"{v:+.2f}%" for v in expected["change_5min"]]
    top_g = truth[(truth.direction == "gainer") & (truth["rank"] == 1)].iloc[0]
    top_l = truth[(truth.direction == "loser") & (truth["rank"] == 1)].iloc[0]
    summary = next(m for m in texts(at.markdown) if m.startswith("Top gainer"))
    assert f"**{top_g.coin_id}** {top_g.change_5min:+.2f}%" in summary
    assert f"**{top_l.coin_id}** {top_l.change_5min:+.2f}%" in summary

    # rank change since the previous snapshot, from the seeded frame (independent of the SQL)
    previous = indicators[indicators["ts"] < snapshot]["ts"].max()
    before = indicators[(indicators["ts"] == previous) & indicators["change_5min"].notna()]
    ranked = before.sort_values(["change_5min", "coin_id"], ascending=[False, True])
    prev_rank = {c: i + 1 for i, c in enumerate(ranked["coin_id"])}
    expected = []
    for rank, coin in zip(range(1, 6), gainers["coin id"], strict=False):
        delta = prev_rank[coin] - rank if coin in prev_rank else None
        expected.append("new" if delta is None else "=" if delta == 0 else
                        f"▲ {delta}" if delta > 0 else f"▼ {-delta}")  # fmt: skip
    assert gainers["rank change"].to_list() == expected

    count, up, down = sql(
        url,
        "SELECT count(*), count(*) FILTER (WHERE change_5min > 0), "
        "count(*) FILTER (WHERE change_5min < 0) FROM price_indicators WHERE ts = %s",
        (snapshot.to_pydatetime(),),
    )[0]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Coins tracked"] == str(count)
    assert metrics["Advancers (5 min)"] == str(up)
    assert metrics["Decliners (5 min)"] == str(down)

    assert not at.error  # fresh data: no stale banner
    assert not at.warning and not at.exception
    badge = next(m for m in texts(at.markdown) if m.startswith("**Latest snapshot**"))
    assert snapshot.isoformat() in badge and "(OK)" in badge
    assert any(c.startswith("Forecasts warming up: ") for c in texts(at.caption))


def test_stale_data_shows_the_banner(seeded, monkeypatch):
    url = seeded[0]
    at = run_app(monkeypatch, url, MARKETFLOW_FRESHNESS_WARN_SECONDS="0.001",
                 MARKETFLOW_FRESHNESS_ERROR_SECONDS="0.002")  # fmt: skip
    assert len(at.error) == 1 and at.error[0].value.startswith("Stale data")
    assert "(ERROR)" in next(m for m in texts(at.markdown) if m.startswith("**Latest snapshot**"))


@pytest.mark.parametrize("page", ["Market now", "Coin", "Pipeline"])
def test_empty_database_shows_a_message(empty_db, monkeypatch, page):
    at = run_app(monkeypatch, empty_db, page=None if page == "Market now" else page)
    messages = texts(at.info)
    assert messages and "No " in messages[0] and "yet" in messages[0]
    assert not at.exception


def test_tables_without_rows_show_a_message(empty_db, monkeypatch):
    from marketflow_assets.resources.postgres import PostgresResource

    PostgresResource(url=empty_db).ensure_tables()
    at = run_app(monkeypatch, empty_db)
    assert texts(at.info)[0].startswith("No market data yet: table market_movers has no rows")


def test_a_broken_table_is_a_message_not_a_traceback(empty_db, monkeypatch):
    from marketflow_assets.resources.postgres import PostgresResource

    sql(empty_db, "CREATE TABLE market_movers (snapshot_ts timestamptz)")  # columns missing
    sql(empty_db, "INSERT INTO market_movers VALUES (now())")
    PostgresResource(url=empty_db).ensure_tables()  # the other tables, as they should be
    at = run_app(monkeypatch, empty_db)
    assert not at.exception
    assert at.warning[0].value.startswith("This panel could not be drawn (UndefinedColumn")


def test_unreachable_database_shows_a_message(monkeypatch):
    url = f"postgresql://mf:s3cret@127.0.0.1:{free_port()}/mf"
    at = run_app(monkeypatch, url)
    assert at.warning and at.warning[0].value.startswith("Database not reachable")
    assert "s3cret" not in at.warning[0].value
    assert not at.exception


def test_coin_page_matches_sql(seeded, monkeypatch):
    url = seeded[0]
    at = run_app(monkeypatch, url, page="Coin")
    at.selectbox(key="coin").set_value("coin-03").run()
    at.radio(key="range").set_value("15 min").run()
    assert not at.exception
    end = sql(url, "SELECT max(ts) FROM price_indicators WHERE coin_id = 'coin-03'")[0][0]
    (count,) = sql(
        url,
        "SELECT count(*) FROM price_indicators WHERE coin_id = 'coin-03' "
        "AND ts > %s - interval '15 minutes' AND ts <= %s",
        (end, end),
    )[0]
    assert any(c.startswith(f"coin-03: {count} observations") for c in texts(at.caption))
    rows = at.dataframe[0].value
    truth = sql(
        url,
        "SELECT ts, price FROM price_indicators WHERE coin_id = 'coin-03' "
        "ORDER BY ts DESC LIMIT %s",
        (min(count, 50),),
    )
    assert rows["price"].to_list() == [p for _, p in truth]
    (chart,) = at.get("plotly_chart")  # one figure: price, volatility, change, volume panes
    spec = json.loads(chart.proto.spec)
    layout, kinds = spec["layout"], [t["type"] for t in spec["data"]]
    assert kinds.count("candlestick") == 1 and "bar" in kinds
    # one time axis: the panes above follow the bottom one
    assert layout["xaxis"]["matches"] == layout["xaxis3"]["matches"] == "x4"
    (volume,) = [t for t in spec["data"] if t.get("name") == "24h volume"]
    assert volume["yaxis"] == "y4" and len(volume["x"]) == len(spec["data"][0]["x"])
    stored = sql(
        url,
        "SELECT total_volume FROM coin_market_history WHERE coin_id = 'coin-03' "
        "ORDER BY ts DESC LIMIT 1",
    )
    ys = volume["y"]  # plotly sends numeric arrays as typed arrays
    ys = np.frombuffer(base64.b64decode(ys["bdata"]), ys["dtype"]) if "bdata" in ys else ys
    assert ys[-1] == stored[0][0]  # the newest candle's close
    assert layout["hovermode"] == "x unified" and layout["xaxis"]["showspikes"]  # crosshair
    assert "μ" not in json.dumps(layout) and layout["yaxis"]["tickformat"].startswith(",.")
    minutes = len(spec["data"][0]["x"])
    at.radio(key="candle_interval").set_value("5 min").run()
    (chart,) = at.get("plotly_chart")
    assert len(json.loads(chart.proto.spec)["data"][0]["x"]) < minutes  # 5-minute candles
    at.button_group(key="layers").set_value(["SMA 5m"]).run()
    (chart,) = at.get("plotly_chart")
    spec = json.loads(chart.proto.spec)
    assert [t.get("name") for t in spec["data"]] == ["price", "SMA 5m"]  # no panes, no EMA
    assert "yaxis2" not in spec["layout"]

    at.selectbox(key="coin").set_value(SOLO).run()
    assert any(m.startswith(f"Only 1 observation of {SOLO}") for m in texts(at.info))
    assert not at.exception


def test_pipeline_page_shows_recorded_checks_and_alerts(seeded, monkeypatch):
    url = seeded[0]
    at_time = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    evaluations = [
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey("raw_prices"),
            check_name="freshness_check",
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description="Late: newest data is 150 s old.",
            metadata={"newest": "2026-03-01T11:57:30+00:00", "age_seconds": 150.0},
        ),
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey("raw_prices"),
            check_name="rejects_recorded",
            passed=True,
            metadata={"rejected_rows": 3},
        ),
    ]
    assert record_check_evaluations(url, evaluations, at_time) == 2
    alert = SimpleNamespace(  # the fields of sensors.alerts.Alert
        key="raw_prices:freshness_check", previous="passed", state="WARN", text="WARN: late"
    )
    assert record_alerts(url, [alert], at_time) == 1
    failed_at = datetime.now(UTC) - timedelta(hours=1)
    run = ("0f1e2d3c-run", failed_at, "refresh_indicators_job", "schedule", "2026-03-01-11:00",
           "raw_prices unreadable: Permission denied\n  File ...")  # fmt: skip
    old_run = ("old-run", failed_at - timedelta(days=2), "x_job", "ui", None, "old")
    assert record_run_failures(url, [run, old_run]) == 2

    at = run_app(monkeypatch, url, page="Pipeline", MARKETFLOW_DAGSTER_UI_URL="http://ui:3001/")
    checks = at.dataframe[0].value
    assert checks["check"].to_list() == ["freshness_check", "rejects_recorded"]
    assert checks["status"].to_list() == ["failed (WARN)", "passed"]
    assert any("2026-03-01T11:57:30+00:00" in m for m in texts(at.markdown))
    counts = at.dataframe[1].value
    assert counts[["measure", "value"]].values.tolist() == [["rejected_rows", 3]]
    frames = [d.value for d in at.dataframe]
    assert any("message" in f and f["message"].to_list() == [alert.text] for f in frames)
    polls = sql(url, "SELECT count(DISTINCT ts) FROM price_indicators")[0][0]
    assert polls > 0 and len(at.get("plotly_chart")) == 1
    runs = next(f for f in frames if "launched by" in f)  # the last 24 hours only
    assert runs["job"].to_list() == ["refresh_indicators_job"]
    assert runs["error"].to_list() == ["raw_prices unreadable: Permission denied"]
    assert runs["run"].to_list() == ["http://ui:3001/runs/0f1e2d3c-run"]
    assert runs["launched by"].to_list() == ["schedule"]


def test_forecast_panels(seeded, monkeypatch):
    url, _raw, indicators, _movers = seeded
    coin = "coin-04"
    rows = indicators[indicators["coin_id"] == coin].sort_values("ts")
    create_forecast_tables(url)
    try:
        insert_forecasts(url, coin, rows, rows["ts"].iloc[-15:-10])
        at = run_app(monkeypatch, url)
        promoted = at.table[2].value  # after the gainers and losers
        assert promoted["promoted model"].to_list() == ["gbm"]
        assert promoted["MASE"].to_list() == ["0.800"]

        at.sidebar.radio(key="page").set_value("Coin").run()
        at.selectbox(key="coin").set_value(coin).run()
        assert "Forecasts against what then happened" in texts(at.subheader)
        (chart,) = at.get("plotly_chart")
        traces = json.loads(chart.proto.spec)["data"]
        candles = next(t for t in traces if t["type"] == "candlestick")
        cone = [t for t in traces if t.get("name", "").startswith(("forecast", "80%"))]
        # the newest origin's forecasts only, drawn from the last price onwards: never over history
        assert len(cone) == 2
        assert min(pd.to_datetime(cone[1]["x"][1:], utc=True)) > max(
            pd.to_datetime(candles["x"], utc=True)
        )
        outcomes = at.dataframe[0].value
        assert len(outcomes) == 5 and outcomes["model"].eq("naive").all()
        truth = sql(
            url,
            "SELECT count(*) FROM price_forecasts f WHERE coin_id = %s AND EXISTS ("
            " SELECT 1 FROM price_indicators p WHERE p.coin_id = f.coin_id"
            " AND date_trunc('minute', p.ts) = date_trunc('minute', f.target_ts)"
            " AND p.ts = (SELECT max(ts) FROM price_indicators q WHERE q.coin_id = f.coin_id"
            "   AND date_trunc('minute', q.ts) = date_trunc('minute', f.target_ts))"
            " AND p.price BETWEEN f.lower_80 AND f.upper_80)",
            (coin,),
        )[0][0]
        assert int(outcomes["inside_80"].sum()) == truth
    finally:
        drop_forecast_tables(url)


def test_the_first_minutes_are_a_warm_up_not_an_empty_page(empty_db, monkeypatch):
    """Issue 28: prices are in, the movers need five minutes of them; the page says so, and the
    forecast panel says how far the first model is."""
    from marketflow_assets.resources.postgres import PostgresResource

    PostgresResource(url=empty_db).ensure_tables()
    now = pd.Timestamp.now(tz="UTC").floor("s")
    for i in range(3):  # three polls, 30 s apart, the newest now
        sql(
            empty_db,
            "INSERT INTO price_indicators (coin_id, symbol, ts, price, source) "
            "VALUES ('bitcoin', 'btc', %s, 100, 'live')",
            ((now - pd.Timedelta(seconds=30 * (2 - i))).to_pydatetime(),),
        )
    at = run_app(monkeypatch, empty_db)
    info = texts(at.info)[0]
    assert info.startswith("Warming up: the movers compare prices five minutes apart; 3 polls")
    assert any(c.startswith("Forecasts warming up: 0 of 60") for c in texts(at.caption))


def test_the_market_table_is_coingeckos(seeded, monkeypatch):
    """Issue 28: rank, name, price, 1 min / 5 min / 1 h / 24 h change, market cap, volume,
    24 h high/low and a sparkline; searchable; the heat map sized by market cap; the coin
    picker in rank order, opening on the largest coin."""
    url, raw, indicators, _movers = seeded
    at = run_app(monkeypatch, url)
    market = next(d.value for d in at.dataframe if "24h volume" in d.value)
    newest = raw[raw["ts"] == raw["ts"].max()].sort_values("market_cap", ascending=False)
    assert market["coin"].to_list() == newest["name"].to_list()  # rank order
    assert market["#"].to_list() == list(range(1, len(newest) + 1))
    np.testing.assert_allclose(market["market cap"], newest["market_cap"].round(0))
    assert market["24h %"].to_list() == newest["price_change_percentage_24h"].to_list()
    now = indicators[indicators["ts"] == indicators["ts"].max()].set_index("coin_id")
    np.testing.assert_allclose(
        market["5m %"], now.loc[newest["id"], "change_5min"], rtol=1e-12, equal_nan=True
    )
    assert market["1h %"].isna().all()  # 20 minutes of history: no hour-old price yet
    assert all(len(s) > 10 for s in market["last hour"])  # sparklines of the seeded 20 minutes

    at.text_input(key="market_search").set_value("c03").run()
    market = next(d.value for d in at.dataframe if "24h volume" in d.value)
    assert market["symbol"].to_list() == ["C03"]

    treemap = next(c for c in at.get("plotly_chart") if '"type":"treemap"' in c.proto.spec)
    sizes = json.loads(treemap.proto.spec)["data"][0]["values"]
    assert max(sizes) == pytest.approx(newest["market_cap"].max())

    at = run_app(monkeypatch, url, page="Coin")
    assert at.selectbox(key="coin").value == newest["id"].iloc[0]  # the largest coin first


def test_price_alerts_are_on_the_market_page(seeded, monkeypatch):
    url = seeded[0]
    now = datetime.now(UTC)
    sql(
        url,
        "INSERT INTO price_alert_events (alerted_at, rule, coin_id, ts, value, message) "
        "VALUES (%s, 'coin-03 change_5min < -2', 'coin-03', %s, -2.5, 'PRICE ALERT coin-03')",
        (now, now - timedelta(seconds=2)),
    )
    at = run_app(monkeypatch, url)
    assert "Price alerts" in texts(at.subheader)
    alerts = next(d.value for d in at.dataframe if "rule" in d.value)
    assert alerts[["coin_id", "rule", "value"]].values.tolist() == [
        ["coin-03", "coin-03 change_5min < -2", -2.5]
    ]
