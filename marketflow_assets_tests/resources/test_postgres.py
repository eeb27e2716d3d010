"""PostgresResource.replace_period against the real (pgserver) PostgreSQL."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg2
import pytest

from marketflow_assets.resources.postgres import PostgresResource
from marketflow_assets.schema import column_names

START = datetime(2024, 3, 10, 12, tzinfo=UTC)
END = START + timedelta(hours=1)
# values whose shortest decimal form needs all 17 digits, extremes, and NULLs (NaN / None)
AWKWARD = [0.1 + 0.2, 1 / 3, 5e-324, 1.7976931348623157e308, -2.5e-17, 123456789.12345679]


def indicator_frame(n: int = len(AWKWARD)) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    ts = pd.Series(
        [pd.Timestamp(START) + pd.Timedelta(microseconds=int(x)) for x in rng.integers(0, 3e9, n)]
    )
    return pd.DataFrame(
        {
            "coin_id": [f"coin-{i}" for i in range(n)],
            "symbol": ["", None, "btc", 'we"ird,sym', "x", "y"][:n],
            "ts": ts,
            "price": AWKWARD[:n],
            "change_1min": [np.nan, 1.5, -0.0, 2.0, np.nan, 3.0][:n],
            "change_5min": rng.normal(size=n),
            "sma_5min": rng.normal(size=n) * 1e6,
            "ema_3min": [None, 0.5, 0.25, 0.125, 0.0625, 0.03125][:n],
            "volatility_5min": np.nan,
        }
    )


def stored(url: str) -> list[tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        columns = ", ".join(column_names("price_indicators"))
        cur.execute(f"SELECT {columns} FROM price_indicators ORDER BY coin_id")
        return cur.fetchall()


@pytest.fixture
def postgres(pg_clean) -> PostgresResource:
    resource = PostgresResource(url=pg_clean)
    resource.ensure_tables()
    return resource


def test_values_survive_exactly(postgres, pg_clean):
    frame = indicator_frame()
    assert postgres.replace_period("price_indicators", frame, START, END) == len(frame)
    rows = stored(pg_clean)
    assert [r[0] for r in rows] == list(frame["coin_id"])
    for row, expected in zip(rows, frame.itertuples(index=False), strict=True):
        assert row[1] == expected.symbol  # '' stays '', None stays NULL, quotes/commas intact
        assert row[2] == expected.ts.to_pydatetime()  # microseconds exact
        assert row[3] == expected.price  # bit-exact doubles, no decimal rounding
        for got, want in zip(row[4:], expected[4:], strict=True):
            if want is None or (isinstance(want, float) and math.isnan(want)):
                assert got is None
            else:
                assert got == want


def test_replace_is_idempotent_and_exact_for_the_period(postgres, pg_clean):
    frame = indicator_frame()
    outside = frame.iloc[[0]].assign(coin_id="outside", ts=pd.Timestamp(END))
    postgres.replace_period("price_indicators", outside, END, END + timedelta(hours=1))
    postgres.replace_period("price_indicators", frame, START, END)
    before = stored(pg_clean)

    assert postgres.replace_period("price_indicators", frame, START, END) == 0  # nothing rewritten
    assert stored(pg_clean) == before

    changed = frame.drop(index=[4]).reset_index(drop=True)
    changed.loc[1, "sma_5min"] = 42.0
    assert postgres.replace_period("price_indicators", changed, START, END) == 1
    after = {r[0]: r for r in stored(pg_clean)}
    assert "coin-4" not in after  # vanished from the new result: deleted
    assert after["coin-1"][6] == 42.0
    assert after["outside"] == next(r for r in before if r[0] == "outside")  # other period kept
    assert len(after) == len(frame)


def test_rows_outside_the_period_are_refused(postgres, pg_clean):
    frame = indicator_frame()
    with pytest.raises(ValueError, match="outside"):
        postgres.replace_period("price_indicators", frame, START, START + timedelta(minutes=1))
    assert stored(pg_clean) == []  # nothing written


def test_copy_payload_times_are_instants_whatever_the_session_time_zone(pg_clean):
    """tz-aware times (UTC or another zone, ns precision, before 1970, missing) reach a
    ``timestamptz`` column as the same instants under a session time zone far from UTC; a
    missing one is NULL, strings beside them stay as they were."""
    from marketflow_assets.resources.postgres import csv_payload

    utc = pd.Series(
        pd.to_datetime(
            ["2026-12-06 10:00:30.123456", "1969-07-20 20:17:40.5", None, "2262-04-11 23:47:16.0"],
            utc=True,
        )
    )
    frame = pd.DataFrame(
        {
            "n": [1, 2, 3, 4],
            "utc": utc,
            "paris": utc.dt.tz_convert("Europe/Paris"),
            "label": ["a", "", None, 'q"z'],
        }
    )
    with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'Pacific/Chatham'")  # +12:45 / +13:45
        cur.execute(
            "CREATE TEMP TABLE times (n int, utc timestamptz, paris timestamptz, label text)"
        )
        cur.copy_expert("COPY times FROM STDIN WITH (FORMAT csv)", csv_payload(frame))
        cur.execute("SELECT utc, paris, label FROM times ORDER BY n")
        rows = cur.fetchall()
    for (got_utc, got_paris, label), want, want_label in zip(
        rows, utc, frame["label"], strict=True
    ):
        if pd.isna(want):
            assert got_utc is None and got_paris is None
        else:
            assert got_utc == want.to_pydatetime() == got_paris
        assert label == want_label


def test_a_binary_payload_stores_what_the_csv_payload_stores(pg_clean):
    """The live path's binary COPY (pgpq) and the CSV COPY store the same rows: doubles exactly
    (also integral ones, cast to the column's type), NaN as NULL, times (ns, another zone, before
    1970) as the same instants, text with quotes, commas, an empty string and non-ASCII; a
    column type it has no binary form for is refused by name."""
    from marketflow_assets.resources.postgres import binary_payload, csv_payload
    from marketflow_assets.schema import SOURCE_COLUMN, create_tables, stored_column_names

    ts = pd.Series(
        pd.to_datetime(
            [
                "2026-12-06 10:00:30.123456789",
                "1969-07-20 20:17:40.5",
                "2026-12-06 10:00:30.000000500",  # half a microsecond: to even (0)
                "2026-12-06 10:00:30.000001500",  # (2)
                "1969-12-31 23:59:59.9999995",  # (1970-01-01)
                "2026-12-06 10:00:30.000002500",  # (2)
            ]
        )
    )
    frame = pd.DataFrame(
        {
            "coin_id": ["bitcoin", 'q"z,1', "ünï-€", "", "a\nb", "x"],
            "symbol": ["btc", None, "ü", "", "s", "t"],
            "ts": ts.dt.tz_localize("UTC").dt.tz_convert("Europe/Paris"),
            "price": [1e-300, 123456789.123456789, 0.1 + 0.2, 3.0, 2.5e15, 7.0],
            "change_1min": [np.nan, -0.0, 1 / 3, np.nan, 1e300, -5.5],
            "change_5min": [1, 2, 3, 4, 5, 6],  # integers: cast to double precision
            "sma_5min": [np.nan] * 6,
            "ema_3min": [math.pi, math.e, 1.0, 2.0, 3.0, 4.0],
            "volatility_5min": [0.0, np.nan, 5e-324, 1.7976931348623157e308, 1.0, 2.0],
            SOURCE_COLUMN: ["live"] * 6,
        }
    )
    cols = ", ".join(stored_column_names("price_indicators"))
    with psycopg2.connect(pg_clean) as conn, conn.cursor() as cur:
        create_tables(cur)
        cur.execute("SET TIME ZONE 'Pacific/Chatham'")
        cur.execute("CREATE TEMP TABLE via_csv (LIKE price_indicators)")
        cur.copy_expert(f"COPY via_csv ({cols}) FROM STDIN WITH (FORMAT csv)", csv_payload(frame))
        cur.copy_expert(
            f"COPY price_indicators ({cols}) FROM STDIN WITH (FORMAT binary)",
            binary_payload(frame, "price_indicators"),
        )
        cur.execute(f"SELECT {cols} FROM via_csv ORDER BY coin_id")
        via_csv = cur.fetchall()
        cur.execute(f"SELECT {cols} FROM price_indicators ORDER BY coin_id")
        via_binary = cur.fetchall()
    assert via_binary == via_csv
    assert len(via_binary) == 6
    nulls = {row[0]: row[4] for row in via_binary}  # change_1min: NaN -> NULL
    assert nulls["bitcoin"] is None and nulls["x"] == -5.5
    with pytest.raises(ValueError, match="'jsonb'"):
        from marketflow_assets.resources import postgres

        postgres._binary_type("jsonb")
