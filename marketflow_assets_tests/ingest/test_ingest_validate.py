"""Validation and normalisation of CoinGecko market records (pure functions, real payloads)."""

from __future__ import annotations

import copy
import json
import math

import pytest

from marketflow_assets.ingest.validate import (
    InvalidRecord,
    coerce_number,
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


def test_numeric_strings_are_coerced(recorded_page):
    record = copy.deepcopy(recorded_page[0])
    record["current_price"] = "24660.5"
    record["market_cap"] = " 478363786702 "
    record["market_cap_rank"] = "1"
    value = normalise_record(record, TS)
    assert value["current_price"] == 24660.5
    assert value["market_cap"] == 478363786702.0
    assert value["market_cap_rank"] == 1 and isinstance(value["market_cap_rank"], int)
    # the original payload is not modified
    assert record["current_price"] == "24660.5"


@pytest.mark.parametrize(
    ("change", "reason_part"),
    [
        ({"id": None}, "id:"),
        ({"id": ""}, "id:"),
        ({"symbol": None}, "symbol:"),
        ({"current_price": None}, "current_price: missing"),
        ({"current_price": 0}, "current_price: must be positive"),
        ({"current_price": -3.5}, "current_price: must be positive"),
        ({"current_price": "n/a"}, "current_price: expected a number, got non-numeric string"),
        ({"current_price": True}, "current_price: expected a number, got boolean"),
        ({"current_price": float("nan")}, "current_price: expected a finite number"),
        ({"market_cap": "lots"}, "market_cap: expected a number"),
        ({"total_volume": {"usd": 1}}, "total_volume: expected a number, got dict"),
        ({"last_updated": "yesterday"}, "last_updated: not an ISO-8601 time"),
        ({"last_updated": None}, "last_updated: missing"),
        ({"ath": float("inf")}, "ath: NaN or Infinity"),
    ],
)
def test_invalid_records_are_rejected_with_a_reason(recorded_page, change, reason_part):
    record = copy.deepcopy(recorded_page[0])
    record.update(change)
    with pytest.raises(InvalidRecord) as info:
        normalise_record(record, TS)
    assert reason_part in str(info.value)


def test_missing_fields_are_rejected(recorded_page):
    for field in ("id", "symbol", "current_price", "last_updated"):
        record = copy.deepcopy(recorded_page[1])
        del record[field]
        with pytest.raises(InvalidRecord, match=field):
            normalise_record(record, TS)


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
    assert "duplicate" in poll.bad[3].value["reason"]


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


def test_coerce_number_keeps_ints_and_nulls():
    assert coerce_number("x", None) is None
    assert coerce_number("x", 24660) == 24660 and isinstance(coerce_number("x", 24660), int)
    assert coerce_number("x", "1e3") == 1000.0
    assert math.isclose(coerce_number("x", "0.999"), 0.999)
