"""Validation and normalisation of CoinGecko market records (pure functions, real payloads)."""

from __future__ import annotations

import copy
import json

import pytest

from marketflow_assets import contract
from marketflow_assets.ingest.validate import (
    InvalidRecord,
    format_ts,
    normalise_record,
    parse_time,
    validate_poll,
)
from marketflow_assets.schema import DLQ_FIELDS, SCHEMA_VERSION

TS = "2023-03-15T09:50:00.000Z"


def test_recorded_real_page_is_all_valid_and_kept_verbatim(recorded_page):
    poll = validate_poll(recorded_page, TS)
    assert [m.key for m in poll.good] == [r["id"] for r in recorded_page]
    assert poll.bad == []
    for message, original in zip(poll.good, recorded_page, strict=True):
        value = json.loads(message.value_bytes())
        # every field CoinGecko sent is there, unchanged, nulls and roi objects included
        assert {k: value[k] for k in original} == original
        assert value["ts"] == TS
        assert value["schema_version"] == SCHEMA_VERSION


def test_real_page_contains_the_quirks_the_validator_must_tolerate(recorded_page):
    # the recorded page really has nulls, roi objects and int prices: the test above is not vacuous
    assert any(r["max_supply"] is None for r in recorded_page)
    assert any(isinstance(r["roi"], dict) for r in recorded_page)
    assert any(r["roi"] is None for r in recorded_page)
    assert any(isinstance(r["current_price"], int) for r in recorded_page)
    assert len({r["last_updated"] for r in recorded_page}) > 1


def test_numeric_strings_are_not_coerced(recorded_page):
    # the record contract reads numbers only from JSON numbers (Spark and the live path too)
    for field in ("current_price", "market_cap", "market_cap_rank"):
        record = dict(copy.deepcopy(recorded_page[0]), **{field: "1"})
        with pytest.raises(InvalidRecord) as info:
            normalise_record(record, TS)
        assert info.value.reason in (contract.INVALID_PRICE, contract.INVALID_FIELD)
        assert field in info.value.detail


@pytest.mark.parametrize(
    ("change", "reason", "detail_part"),
    [
        ({"id": None}, contract.MISSING_ID, "id:"),
        ({"id": ""}, contract.MISSING_ID, "id:"),
        ({"id": "  "}, contract.MISSING_ID, "id:"),
        ({"id": 7}, contract.INVALID_ID, "id:"),
        ({"symbol": 5}, contract.INVALID_FIELD, "symbol:"),
        ({"current_price": None}, contract.MISSING_PRICE, "current_price: missing"),
        ({"current_price": 0}, contract.NON_POSITIVE_PRICE, "current_price: must be positive"),
        ({"current_price": -3.5}, contract.NON_POSITIVE_PRICE, "current_price: must be positive"),
        ({"current_price": "n/a"}, contract.INVALID_PRICE, "current_price: expected a number"),
        ({"current_price": True}, contract.INVALID_PRICE, "current_price: expected a number"),
        ({"current_price": float("nan")}, contract.INVALID_PRICE, "current_price: not finite"),
        ({"market_cap": "lots"}, contract.INVALID_FIELD, "market_cap: expected a number"),
        ({"total_volume": {"usd": 1}}, contract.INVALID_FIELD, "total_volume: expected a number"),
        ({"last_updated": "yesterday"}, contract.INVALID_FIELD, "last_updated: not an ISO-8601"),
        ({"ath": float("inf")}, contract.INVALID_FIELD, "ath: holds NaN or an infinity"),
    ],
)
def test_invalid_records_are_rejected_with_a_reason(recorded_page, change, reason, detail_part):
    record = copy.deepcopy(recorded_page[0])
    record.update(change)
    with pytest.raises(InvalidRecord) as info:
        normalise_record(record, TS)
    assert info.value.reason == reason
    assert detail_part in info.value.detail


def test_missing_required_fields_are_rejected_optional_ones_are_not(recorded_page):
    for field, reason in (("id", contract.MISSING_ID), ("current_price", contract.MISSING_PRICE)):
        record = copy.deepcopy(recorded_page[1])
        del record[field]
        with pytest.raises(InvalidRecord) as info:
            normalise_record(record, TS)
        assert info.value.reason == reason
    with pytest.raises(InvalidRecord) as info:
        normalise_record(recorded_page[1], None)
    assert info.value.reason == contract.MISSING_TS
    for field in ("symbol", "name", "last_updated", "market_cap"):
        record = {k: v for k, v in recorded_page[1].items() if k != field}
        assert normalise_record(record, TS)["id"] == record["id"]


def test_validate_poll_splits_good_and_dead_letters(recorded_page):
    bad_price = dict(recorded_page[2], current_price=-1)
    no_id = {k: v for k, v in recorded_page[3].items() if k != "id"}
    records = [*recorded_page[:2], bad_price, no_id, "not-an-object", dict(recorded_page[0])]
    poll = validate_poll(records, TS)
    assert [m.key for m in poll.good] == [recorded_page[0]["id"], recorded_page[1]["id"]]
    assert len(poll.bad) == 4
    keys = [m.key for m in poll.bad]
    assert keys == [recorded_page[2]["id"], None, None, recorded_page[0]["id"]]
    for message in poll.bad:
        assert tuple(message.value) == DLQ_FIELDS
        assert message.value["ts"] == TS
        json.loads(message.value_bytes())  # strict JSON
    assert poll.bad[0].value["payload"] == bad_price
    assert poll.bad[1].value["payload"] == no_id
    assert poll.bad[2].value["payload"] == "not-an-object"
    assert [m.value["reason"] for m in poll.bad] == [
        contract.NON_POSITIVE_PRICE,
        contract.MISSING_ID,
        contract.INVALID_JSON,
        contract.DUPLICATE_IN_POLL,
    ]
    assert "duplicate" in poll.bad[3].value["detail"]


def test_validate_poll_of_good_records_keeps_each_coin_once(recorded_page):
    """Every record valid: each becomes its message, in order; a coin's second record (valid
    too) is still a dead letter and the first one is kept."""
    records = [dict(r) for r in recorded_page[:5]]
    poll = validate_poll(records, TS)
    assert poll.bad == []
    assert [m.key for m in poll.good] == [r["id"] for r in records]
    for message, record in zip(poll.good, records, strict=True):
        assert message.raw is record
        assert message.value == {**record, "ts": TS, "schema_version": SCHEMA_VERSION}
        assert json.loads(message.value_bytes()) == message.value

    again = dict(records[1], current_price=records[1]["current_price"] * 2)
    poll = validate_poll([*records, again], TS)
    assert [m.key for m in poll.good] == [r["id"] for r in records]
    assert poll.good[1].raw is records[1]
    assert [(m.key, m.value["reason"]) for m in poll.bad] == [
        (records[1]["id"], contract.DUPLICATE_IN_POLL)
    ]
    assert poll.bad[0].value["payload"] == again


def test_dead_letter_of_nan_payload_is_still_strict_json(recorded_page):
    record = dict(recorded_page[0], current_price=float("nan"))
    poll = validate_poll([record], TS)
    assert len(poll.bad) == 1
    text = poll.bad[0].value_bytes().decode()
    payload = json.loads(text)["payload"]  # parses as strict JSON
    assert payload["current_price"] == "NaN"
    assert payload["id"] == "bitcoin"


def test_time_parsing_and_formatting():
    assert parse_time("2023-03-15T09:49:56.713Z").isoformat() == "2023-03-15T09:49:56.713000+00:00"
    assert parse_time("2023-03-15T10:49:56+01:00") == parse_time("2023-03-15T09:49:56Z")
    assert parse_time("2023-03-15T09:49:56") == parse_time("2023-03-15T09:49:56Z")
    assert format_ts(parse_time("2023-03-15T09:49:56.713999Z")) == "2023-03-15T09:49:56.713Z"
    with pytest.raises(ValueError):
        parse_time("15/03/2023")


def test_the_first_polls_validation_imports_nothing_left_after_start_up():
    """What validating a poll imports on first use, ingest imports at start-up
    (``INGEST_PRELOAD``), so its first poll is not late by the imports: checked in a fresh
    interpreter, with the start-up's preload."""
    import subprocess
    import sys

    script = """
import sys
from datetime import UTC, datetime
from marketflow_assets.ingest.command import INGEST_PRELOAD
from marketflow_assets.ingest.sources import MarketSimulator
from marketflow_assets.ingest.validate import format_ts, validate_poll
from marketflow_assets.runtime.heap import settle_startup_heap
settle_startup_heap("test", preload=INGEST_PRELOAD)
now = datetime.now(UTC)
records = MarketSimulator(300, 1, 30.0).step(now)
before = set(sys.modules)
validated = validate_poll(records, format_ts(now))
[message.value_bytes() for message in validated.good]
assert len(validated.good) == 300, len(validated.good)
print(sorted(name for name in set(sys.modules) - before if "." not in name))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
