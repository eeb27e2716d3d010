"""Seeded synthetic price panels for the forecasting tests.

``raw_rows(kind, ...)`` returns raw observations ``(id, symbol, ts, current_price, last_updated)``
polled every ``step_s`` seconds; ``panel(raw)`` adds the SPEC indicators with the project's own
indicator function, as ``price_indicators`` would hold them. Kinds:

* ``random_walk`` - log prices are independent Gaussian random walks (nothing predictable);
* ``market_factor`` - random walks sharing one common factor: coins move together at the same
  time, so nothing is predictable from the past, but peeking at any other coin's *future* price
  would predict perfectly (the look-ahead trap);
* ``mean_reversion`` - log price minus its level is AR(1) per poll (phi = 0.9);
* ``momentum`` - returns are AR(1) per poll (rho = 0.85): moves persist;
* ``lead_lag`` - every coin follows ``bitcoin``'s return 4 polls earlier; ``lead_lag_hidden``:
  the same with another coin leading (bitcoin is an ordinary coin); ``lead_lag_5min``: every
  coin repeats a (non-bitcoin) leader's return 10 polls (5 minutes) later, plus noise;
* ``trend`` - a constant drift per coin plus small noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from marketflow_assets import indicators as ind

KINDS = (
    "random_walk",
    "market_factor",
    "mean_reversion",
    "momentum",
    "lead_lag",
    "lead_lag_hidden",
    "lead_lag_5min",
    "trend",
)
START = pd.Timestamp("2024-05-01T00:00:00Z")


def raw_rows(
    kind: str,
    coins: int = 20,
    hours: float = 3.0,
    step_s: int = 30,
    seed: int = 0,
    start: pd.Timestamp = START,
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = int(hours * 3600 / step_s)
    ids = ["bitcoin", *(f"coin{i:03d}" for i in range(1, coins))]
    base = np.exp(rng.uniform(np.log(0.01), np.log(50000.0), coins))
    vol = rng.uniform(0.0005, 0.003, coins)  # per-poll log-return std
    eps = rng.standard_normal((n, coins))
    if kind == "random_walk":
        logp = np.cumsum(eps * vol, axis=0)
    elif kind == "market_factor":
        common = rng.standard_normal((n, 1))
        logp = np.cumsum((0.9 * common + 0.1 * eps) * vol, axis=0)
    elif kind == "mean_reversion":
        x = np.zeros((n, coins))
        for t in range(1, n):
            x[t] = 0.9 * x[t - 1] + vol * eps[t]
        logp = x
    elif kind == "momentum":
        r = np.zeros((n, coins))
        for t in range(1, n):
            r[t] = 0.85 * r[t - 1] + vol * eps[t]
        logp = np.cumsum(r, axis=0)
    elif kind in ("lead_lag", "lead_lag_hidden"):
        li = 0 if kind == "lead_lag" else coins // 2  # hidden: the leader is not bitcoin
        lead = vol[li] * eps[:, li]
        r = 0.5 * vol * eps
        lagged = np.concatenate([np.zeros(4), lead[:-4]])
        r += lagged[:, None] * 1.5
        r[:, li] = lead
        logp = np.cumsum(r, axis=0)
    elif kind == "lead_lag_5min":
        li = coins // 2  # not bitcoin: the leader must be found in the data
        lead = vol[li] * eps[:, li]
        lagged = np.concatenate([np.zeros(10), lead[:-10]])
        r = 0.3 * vol * eps + lagged[:, None]
        r[:, li] = lead
        logp = np.cumsum(r, axis=0)
    elif kind == "trend":
        drift = rng.choice([-1.0, 1.0], coins) * vol * 0.5
        logp = np.cumsum(drift + 0.3 * vol * eps, axis=0)
    else:
        raise ValueError(kind)
    prices = base * np.exp(logp)
    ts = start + pd.to_timedelta(np.arange(n) * step_s, unit="s")
    frame = pd.DataFrame(
        {
            "id": np.tile(ids, n),
            "ts": np.repeat(ts, coins),
            "current_price": prices.reshape(-1),
        }
    )
    frame["symbol"] = frame["id"].str[:4]
    frame["last_updated"] = frame["ts"] - pd.Timedelta(seconds=5)
    return frame[["id", "symbol", "ts", "current_price", "last_updated"]]


def panel(raw: pd.DataFrame) -> pd.DataFrame:
    """``price_indicators`` rows of ``raw`` plus ``last_updated`` (the forecast panel)."""
    rows = ind.compute_indicators(raw[list(ind.RAW_INPUT_COLUMNS)])
    lu = raw[["id", "ts", "last_updated"]].rename(columns={"id": "coin_id"})
    return rows.merge(lu, on=["coin_id", "ts"], how="left")


def write_raw(raw_dir, raw: pd.DataFrame, name: str | None = None) -> None:
    """Append ``raw`` to the ``raw_prices`` Delta table (one commit; the SPEC columns)."""
    from pathlib import Path

    from marketflow_assets.raw_dataset import append_frame

    frame = raw.copy()
    frame["name"] = frame["id"].str.title()
    append_frame(Path(raw_dir), frame)
