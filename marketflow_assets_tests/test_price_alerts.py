"""Price alert rules (issue 28 item 7): parsing with clear errors, once per crossing."""

from __future__ import annotations

import pandas as pd
import pytest

from marketflow_assets.price_alerts import PriceAlerts, Rule, load_rules, parse_rules
from marketflow_assets.settings import ConfigError

T0 = pd.Timestamp("2026-12-05 10:00", tz="UTC")


def _rows(values: list[tuple[str, float | None]], step: int = 0) -> pd.DataFrame:
    """One poll (``step`` polls of 30 s after T0) of ``(coin, change_5min)``."""
    return pd.DataFrame(
        {
            "coin_id": [c for c, _ in values],
            "ts": [T0 + pd.Timedelta(seconds=30 * step)] * len(values),
            "change_5min": [v for _, v in values],
            "volatility_5min": [1.0] * len(values),
        }
    )


def test_rules_parse_and_bad_lines_are_named():
    rules = parse_rules(
        "# my alerts\nbitcoin change_5min < -2   # a dip\n\nANY volatility_5min >= 5\n"
    )
    assert rules == [
        Rule("bitcoin", "change_5min", "<", -2.0),
        Rule(None, "volatility_5min", ">=", 5),
    ]
    assert str(rules[1]) == "any volatility_5min >= 5"
    for line, reason in (
        ("bitcoin change_5min < ", "expected '<coin|any> <field> <operator> <number>'"),
        ("bitcoin volume > 3", "unknown field 'volume'"),
        ("bitcoin price => 3", "unknown operator '=>'"),
        ("bitcoin price > lots", "'lots' is not a number"),
        ("bitcoin price > nan", "finite"),
    ):
        with pytest.raises(ConfigError, match="line 2") as error:
            parse_rules(f"any price > 1\n{line}", source="alerts.txt")
        assert reason in str(error.value) and "alerts.txt" in str(error.value)


def test_missing_file_is_no_rules(tmp_path):
    assert load_rules(tmp_path / "nope.txt") == []
    (tmp_path / "a.txt").write_text("any change_5min > 1\n")
    assert load_rules(tmp_path / "a.txt") == [Rule(None, "change_5min", ">", 1.0)]


def test_an_alert_once_per_crossing_then_armed_again():
    alerts = PriceAlerts(parse_rules("bitcoin change_5min < -2\nany change_5min > 3"))
    alerts.prime(_rows([("bitcoin", -2.5), ("eth", 1.0)]))  # already below at start: no alert
    assert alerts.update(_rows([("bitcoin", -3.0), ("eth", 1.0)], 1)) == []
    assert alerts.update(_rows([("bitcoin", -1.0), ("eth", 3.5)], 2))[0].coin_id == "eth"
    fired = alerts.update(_rows([("bitcoin", -2.2), ("eth", 4.0)], 3))  # bitcoin crosses again
    assert [(a.coin_id, str(a.rule)) for a in fired] == [("bitcoin", "bitcoin change_5min < -2")]
    assert "bitcoin: change_5min = -2.2 (< -2)" in fired[0].message
    assert alerts.update(_rows([("bitcoin", None), ("eth", 4.0)], 4)) == []  # no value: no change
    assert alerts.update(_rows([("bitcoin", -2.3), ("eth", 4.0)], 5)) == []  # still below


def test_every_crossing_of_a_batch_counts_in_time_order():
    alerts = PriceAlerts(parse_rules("any change_5min > 3"))
    alerts.prime(_rows([("eth", 1.0)]))
    batch = pd.concat(
        [_rows([("eth", 5.0)], 2), _rows([("eth", 4.0)], 1), _rows([("eth", 1.0)], 3),
         _rows([("eth", 6.0)], 4)]
    )  # fmt: skip
    fired = alerts.update(batch)
    assert [a.ts for a in fired] == [T0 + pd.Timedelta(seconds=30), T0 + pd.Timedelta(seconds=120)]
