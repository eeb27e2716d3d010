"""Price alerts for analysts: rules over the indicators, evaluated by the live path.

A rules file (``MARKETFLOW_PRICE_ALERTS_FILE``, default ``$MARKETFLOW_DATA_DIR/price_alerts.txt``)
holds one rule per line; ``#`` starts a comment::

    bitcoin change_5min < -2        # bitcoin fell more than 2 % in five minutes
    any volatility_5min > 5         # any coin whose 5-minute volatility exceeds 5
    ethereum price >= 4000

``<coin id | any> <field> <operator> <number>``: fields are the ``price_indicators`` columns
``price``, ``change_1min``, ``change_5min``, ``sma_5min``, ``ema_3min``, ``volatility_5min``;
operators ``<``, ``<=``, ``>``, ``>=``.

**Once per crossing.** :class:`PriceAlerts` keeps, per rule and coin, whether the condition held
at the coin's last evaluated row. An alert is raised when it starts to hold (false, or not known
yet, then true); while it keeps holding nothing more is sent; when it stops holding the rule is
armed again. The state starts from the table's newest rows (:meth:`PriceAlerts.prime`) without
alerting, so a restart of the live path does not send again what it sent before. A row with no
value for the field (too little history) neither fires nor re-arms.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from marketflow_assets.settings import ConfigError

FIELDS = ("price", "change_1min", "change_5min", "sma_5min", "ema_3min", "volatility_5min")
OPERATORS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
ANY = "any"


@dataclass(frozen=True)
class Rule:
    coin: str | None  # None: any coin
    field: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.coin or ANY} {self.field} {self.op} {self.threshold:g}"

    def holds(self, value) -> bool | None:
        """Whether ``value`` satisfies the rule; None when there is no value."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return bool(OPERATORS[self.op](float(value), self.threshold))


def parse_rules(text: str, source: str = "price alerts") -> list[Rule]:
    """The rules of ``text``; :class:`ConfigError` naming the line of the first bad one."""
    rules = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{source}, line {number} ({line.strip()!r})"
        if len(words) != 4:
            raise ConfigError(f"{where}: expected '<coin|any> <field> <operator> <number>'")
        coin, name, op, number_text = words
        if name not in FIELDS:
            raise ConfigError(f"{where}: unknown field {name!r} (one of {', '.join(FIELDS)})")
        if op not in OPERATORS:
            raise ConfigError(f"{where}: unknown operator {op!r} (one of {', '.join(OPERATORS)})")
        try:
            threshold = float(number_text)
        except ValueError:
            raise ConfigError(f"{where}: {number_text!r} is not a number") from None
        if not math.isfinite(threshold):
            raise ConfigError(f"{where}: the threshold must be a finite number")
        rules.append(Rule(None if coin.lower() == ANY else coin, name, op, threshold))
    return rules


def load_rules(path: Path | None) -> list[Rule]:
    """The rules of the file at ``path``; none when it does not exist."""
    if path is None or not Path(path).is_file():
        return []
    return parse_rules(Path(path).read_text(), source=str(path))


@dataclass(frozen=True)
class PriceAlert:
    rule: Rule
    coin_id: str
    ts: datetime
    value: float

    @property
    def message(self) -> str:
        return (
            f"PRICE ALERT {self.coin_id}: {self.rule.field} = {self.value:.6g} "
            f"({self.rule.op} {self.rule.threshold:g}) at {pd.Timestamp(self.ts).isoformat()} "
            f"[rule: {self.rule}]"
        )


@dataclass
class PriceAlerts:
    """The rules and, per (rule, coin), whether the condition held at the last row seen."""

    rules: list[Rule]
    holding: dict[tuple[Rule, str], bool] = field(default_factory=dict)

    def _evaluate(self, rows: pd.DataFrame, alert: bool) -> list[PriceAlert]:
        if not self.rules or rows.empty:
            return []
        ordered = rows.sort_values("ts", kind="stable")  # every row in time order: each crossing
        fired = []
        for rule in self.rules:
            chosen = ordered if rule.coin is None else ordered[ordered["coin_id"] == rule.coin]
            for coin, ts, value in zip(
                chosen["coin_id"], chosen["ts"], chosen[rule.field], strict=True
            ):
                now = rule.holds(value)
                if now is None:
                    continue
                before = self.holding.get((rule, coin))
                self.holding[(rule, coin)] = now
                if alert and now and not before:
                    fired.append(PriceAlert(rule, coin, ts, float(value)))
        return fired

    def prime(self, rows: pd.DataFrame) -> None:
        """Take ``rows`` (the coins' newest rows) as the starting state, without alerting."""
        self._evaluate(rows, alert=False)

    def update(self, rows: pd.DataFrame) -> list[PriceAlert]:
        """The alerts of the crossings in ``rows`` (indicator rows: ``coin_id``, ``ts`` and the
        fields), in time order."""
        return self._evaluate(rows, alert=True)
