"""``market.py``: raw records -> ``coin_market`` rows, from a DataFrame (Dagster's raw reads) and
from an Arrow table (the live path's records) alike."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from marketflow_assets.market import COLUMNS, HISTORY_COLUMNS, market_history_rows, market_records
from marketflow_assets.schema import raw_arrow_schema

T0 = pd.Timestamp("2026-12-06T12:00:00Z")


def raw_frame() -> pd.DataFrame:
    """Raw records with a repeated (id, ts) - its first one counts -, a record without an id,
    a missing rank and coins out of order."""
    rows = [
        ("eth", "eth", "Ethereum", 2, 3000.5, T0),
        ("btc", "btc", "Bitcoin", 1, 90000.0, T0),
        ("btc", "btc", "Bitcoin (repeat)", 1, 1.0, T0),  # the same (id, ts): not this one
        (None, "x", "no id", 3, 1.0, T0),
        ("btc", "btc", "Bitcoin", 1, 90100.25, T0 + pd.Timedelta(seconds=30)),
        ("doge", "doge", "Dogecoin", None, 0.25, T0),
    ]
    frame = pd.DataFrame(
        rows, columns=["id", "symbol", "name", "market_cap_rank", "current_price", "ts"]
    )
    for i, column in enumerate(["market_cap", "total_volume", "high_24h", "low_24h"]):
        frame[column] = [1e9 * (i + 1) + n for n in range(len(frame))]
    frame["price_change_percentage_24h"] = [0.5, -1.25, 3.0, None, 2.0, float("nan")]
    frame["market_cap_rank"] = frame["market_cap_rank"].astype("Int64")
    return frame


def test_records_are_the_first_of_each_coin_and_ts_from_pandas_and_arrow_alike():
    frame = raw_frame()
    table = pa.Table.from_pandas(
        frame.assign(circulating_supply=1.0, last_updated=frame["ts"]),
        schema=raw_arrow_schema(),
        preserve_index=False,
    )
    from_pandas, from_arrow = market_records(frame), market_records(table)
    assert from_pandas.column_names == from_arrow.column_names == list(COLUMNS)
    assert from_pandas.to_pylist() == from_arrow.to_pylist()
    rows = from_pandas.to_pylist()
    assert [(r["coin_id"], r["ts"]) for r in rows] == [
        ("eth", T0),
        ("btc", T0),
        ("btc", T0 + pd.Timedelta(seconds=30)),
        ("doge", T0),
    ]  # in raw order, the record without an id left out
    assert rows[1]["name"] == "Bitcoin" and rows[1]["price"] == 90000.0  # the first of (btc, T0)
    assert rows[3]["market_cap_rank"] is None and rows[3]["change_24h"] is None  # NaN: unknown
    assert from_pandas.schema.field("market_cap_rank").type == pa.int64()

    history = market_history_rows(table)
    assert history.column_names == list(HISTORY_COLUMNS)
    assert [(r["coin_id"], r["ts"]) for r in history.to_pylist()] == sorted(
        (r["coin_id"], r["ts"]) for r in rows
    )
    assert history.to_pylist() == market_history_rows(frame).to_pylist()
