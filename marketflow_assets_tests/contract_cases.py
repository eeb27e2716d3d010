"""Kafka message values for the record-contract tests: valid ones and every kind of poison,
each with the reason code the contract must give (None = valid)."""

from __future__ import annotations

import json

from marketflow_assets import contract as c

TS = "2026-03-01T23:58:00.000Z"


def message(**change) -> dict:
    """A message as the ingest publishes it; ``change`` overrides fields (``...=DROP`` drops)."""
    value = {
        "id": "bitcoin",
        "symbol": "btc",
        "name": "Bitcoin",
        "current_price": 64250.5,
        "market_cap": 1.26e12,
        "market_cap_rank": 1,
        "total_volume": 3.1e10,
        "high_24h": 65000.0,
        "low_24h": 63000,
        "price_change_24h": -120.5,
        "price_change_percentage_24h": -0.19,
        "circulating_supply": 19_650_000.0,
        "total_supply": 21_000_000,
        "max_supply": None,
        "roi": None,
        "last_updated": "2026-03-01T23:57:53.250Z",
        "ts": TS,
        "schema_version": 1,
    }
    value.update(change)
    return {k: v for k, v in value.items() if v is not DROP}


DROP = object()


def encoded(**change) -> bytes:
    """:func:`message` as JSON bytes (Python's json: NaN/Infinity literals for non-finite)."""
    return json.dumps(message(**change)).encode()


def _raw(text: str) -> bytes:
    """A message with ``current_price`` replaced by the literal JSON ``text``."""
    return encoded(current_price="@@").replace(b'"@@"', text.encode())


#: (label, Kafka value, expected reason code or None)
CASES: list[tuple[str, bytes | None, str | None]] = [
    ("valid", encoded(), None),
    ("valid int price", encoded(current_price=3), None),
    ("valid minimal", json.dumps({"id": "x", "ts": TS, "current_price": 1e-9}).encode(), None),
    ("valid offset ts", encoded(id="eth", ts="2026-03-02T00:58:00+01:00"), None),
    ("valid nested roi", encoded(id="roi", roi={"times": 1.5, "currency": "usd"}), None),
    ("valid nulls", encoded(id="nulls", symbol=None, market_cap=None, last_updated=None), None),
    ("valid unicode id", encoded(id="ünïcode-€"), None),
    ("valid rank as 2.0", encoded(id="rank", market_cap_rank=2.0), None),
    ("none value", None, c.EMPTY_VALUE),
    ("empty value", b"", c.EMPTY_VALUE),
    ("blank value", b"  \n", c.EMPTY_VALUE),
    ("not json", b"this is not json", c.INVALID_JSON),
    ("truncated json", encoded()[:-5], c.INVALID_JSON),
    ("json array", b"[1, 2, 3]", c.INVALID_JSON),
    ("json string", b'"bitcoin"', c.INVALID_JSON),
    ("json number", b"42", c.INVALID_JSON),
    ("json null", b"null", c.INVALID_JSON),
    ("missing id", encoded(id=DROP), c.MISSING_ID),
    ("null id", encoded(id=None), c.MISSING_ID),
    ("empty id", encoded(id=""), c.MISSING_ID),
    ("blank id", encoded(id="  "), c.MISSING_ID),
    ("numeric id", encoded(id=5), c.INVALID_ID),
    ("boolean id", encoded(id=True), c.INVALID_ID),
    ("list id", encoded(id=["bitcoin"]), c.INVALID_ID),
    # JSON allows a lone surrogate escape; no UTF-8 table (Parquet, PostgreSQL) can hold it
    ("lone surrogate id", encoded(id="btc\ud800"), c.INVALID_ID),
    ("lone surrogate symbol", encoded(symbol="\udfff"), c.INVALID_FIELD),
    ("lone surrogate name", encoded(name="Bit\ud83dcoin"), c.INVALID_FIELD),
    ("surrogate pair name", encoded(id="pair", name="Bit \ud83d\ude00 coin"), None),
    ("missing ts", encoded(ts=DROP), c.MISSING_TS),
    ("null ts", encoded(ts=None), c.MISSING_TS),
    ("word ts", encoded(ts="yesterday"), c.INVALID_TS),
    ("empty ts", encoded(ts=""), c.INVALID_TS),
    ("epoch number ts", encoded(ts=1772409480), c.INVALID_TS),
    ("nested ts", encoded(ts={"iso": TS}), c.INVALID_TS),
    ("ts beyond int64 ns", encoded(ts="9999-12-31T00:00:00Z"), c.INVALID_TS),
    ("missing price", encoded(current_price=DROP), c.MISSING_PRICE),
    ("null price", encoded(current_price=None), c.MISSING_PRICE),
    ("numeric string price", encoded(current_price="5"), c.INVALID_PRICE),
    ("word price", encoded(current_price="cheap"), c.INVALID_PRICE),
    ("true price", encoded(current_price=True), c.INVALID_PRICE),
    ("false price", encoded(current_price=False), c.INVALID_PRICE),
    ("NaN price", _raw("NaN"), c.INVALID_PRICE),
    ("Infinity price", _raw("Infinity"), c.INVALID_PRICE),
    ("-Infinity price", _raw("-Infinity"), c.INVALID_PRICE),
    ("1e999 price", _raw("1e999"), c.INVALID_PRICE),
    ("huge int price", _raw("1" + "0" * 400), c.INVALID_PRICE),
    ("list price", encoded(current_price=[5]), c.INVALID_PRICE),
    ("object price", encoded(current_price={"usd": 5}), c.INVALID_PRICE),
    ("zero price", encoded(current_price=0), c.NON_POSITIVE_PRICE),
    ("negative zero price", _raw("-0.0"), c.NON_POSITIVE_PRICE),
    ("negative price", encoded(current_price=-5.5), c.NON_POSITIVE_PRICE),
    ("list symbol", encoded(symbol=["btc"]), c.INVALID_FIELD),
    ("object name", encoded(name={"en": "Bitcoin"}), c.INVALID_FIELD),
    ("numeric string market_cap", encoded(market_cap="1e12"), c.INVALID_FIELD),
    ("boolean total_volume", encoded(total_volume=True), c.INVALID_FIELD),
    ("1e999 high_24h", encoded(high_24h="@@").replace(b'"@@"', b"1e999"), c.INVALID_FIELD),
    ("fractional rank", encoded(market_cap_rank=1.5), c.INVALID_FIELD),
    # orjson reads it as the float -2**63, which is an int64; json.loads keeps it exact
    ("rank below int64", encoded(market_cap_rank=-(2**63) - 1), c.INVALID_FIELD),
    ("rank beyond uint64", encoded(market_cap_rank=2**64), c.INVALID_FIELD),
    ("rank at int64 min", encoded(id="rank-min", market_cap_rank=-(2**63)), None),
    # integers beyond 64 bits where both readings are the same double (or only the type counts)
    ("70-bit price", encoded(id="wide", current_price=2**70 + 1), None),
    ("70-bit market_cap", encoded(id="wide", market_cap=-(2**70) - 3), None),
    ("70-bit extra fields", encoded(id="wide", ath=2**70, roi={"n": [-(2**90)]}), None),
    ("70-bit negative price", encoded(current_price=-(2**70)), c.NON_POSITIVE_PRICE),
    ("numeric string max_supply", encoded(max_supply="21000000"), c.INVALID_FIELD),
    ("bad last_updated", encoded(last_updated="later"), c.INVALID_FIELD),
    ("NaN in an extra field", encoded(ath=float("nan")), c.INVALID_FIELD),
    ("Infinity nested", encoded(roi={"times": float("inf")}), c.INVALID_FIELD),
    # overflows a double (json.loads: -inf) deep in an extra field; orjson refuses it, so the
    # value is decoded by json.loads and the last check sees the infinity
    (
        "-1e999 nested in an extra field",
        encoded(roi={"times": [1, "@@"]}).replace(b'"@@"', b"-1e999"),
        c.INVALID_FIELD,
    ),
]
