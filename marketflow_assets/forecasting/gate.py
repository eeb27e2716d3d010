"""Promotion gate: a learned model serves only if it beats the naive forecast, significantly.

Diebold-Mariano test (one-sided, absolute-error loss) of a model against the naive forecast on the
same backtest origins:

* loss differential per forecast ``d = |e_naive| - |e_model|`` (errors in % of the origin price),
  averaged over the coins of each origin time: ``d_t`` (this absorbs the cross-coin correlation of
  one snapshot);
* ``d_bar = mean(d_t)`` over the ``T`` origin times, long-run variance by Newey-West (Bartlett
  weights ``1 - l / (L + 1)``, ``L = 2 h``, ``h`` = horizon in polls) because forecasts ``h`` polls
  ahead overlap and their errors are autocorrelated;
* ``DM = d_bar / sqrt(lrv / T)`` with the Harvey-Leybourne-Newbold small-sample factor
  ``sqrt((T + 1 - 2h + h (h - 1) / T) / T)`` when positive; ``p = 1 - F_t(T - 1)(DM)``.

Rule (:func:`choose`): among learned candidates with ``MASE < 1`` and ``p < alpha / m`` (``m`` =
number of learned candidates: Bonferroni, so trying two models does not double the false
promotion rate), the lowest MASE serves; otherwise the naive forecast serves and the reason says
why. At least :data:`MIN_TEST_ORIGINS` origin times are required for any promotion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
MIN_TEST_ORIGINS = 30


@dataclass(frozen=True)
class DMResult:
    statistic: float
    p_value: float
    origins: int
    lag: int


def newey_west_variance(d: np.ndarray, lag: int) -> float:
    """Long-run variance of ``d`` with Bartlett weights up to ``lag``."""
    d = np.asarray(d, dtype=np.float64)
    t = len(d)
    dev = d - d.mean()
    lrv = float(dev @ dev) / t
    for lag_l in range(1, min(lag, t - 1) + 1):
        gamma = float(dev[lag_l:] @ dev[:-lag_l]) / t
        lrv += 2.0 * (1.0 - lag_l / (lag + 1.0)) * gamma
    return max(lrv, 0.0)


def diebold_mariano(
    loss_naive: np.ndarray, loss_model: np.ndarray, groups: np.ndarray, horizon_steps: int
) -> DMResult:
    """One-sided DM test that ``loss_model`` is smaller than ``loss_naive``.

    ``groups``: the origin time of each forecast (sortable); losses are averaged per group first.
    """
    from scipy import stats

    diff = np.asarray(loss_naive, dtype=np.float64) - np.asarray(loss_model, dtype=np.float64)
    groups = np.asarray(groups)
    order = np.argsort(groups, kind="stable")
    keys, start = np.unique(groups[order], return_index=True)
    sums = np.add.reduceat(diff[order], start) if len(diff) else np.array([])
    counts = np.diff(np.append(start, len(diff)))
    d = sums / counts if len(diff) else np.array([])
    t = len(d)
    h = max(int(horizon_steps), 1)
    lag = 2 * h
    if t < 3:
        return DMResult(float("nan"), 1.0, t, lag)
    mean = float(d.mean())
    lrv = newey_west_variance(d, lag)
    if lrv <= 0.0:
        return DMResult(math.inf if mean > 0 else -math.inf, 0.0 if mean > 0 else 1.0, t, lag)
    stat = mean / math.sqrt(lrv / t)
    hln = (t + 1 - 2 * h + h * (h - 1) / t) / t
    if hln > 0:
        stat *= math.sqrt(hln)
    p_value = float(stats.t.sf(stat, df=t - 1))
    return DMResult(stat, p_value, t, lag)


@dataclass(frozen=True)
class Decision:
    promoted: str
    reason: str


def choose(
    naive: str,
    learned: dict[str, tuple[float, DMResult]],
    alpha: float = ALPHA,
    min_origins: int = MIN_TEST_ORIGINS,
) -> Decision:
    """The serving model: ``learned`` maps name -> (MASE, DM result vs naive)."""
    if not learned:
        return Decision(naive, "no learned model could be evaluated")
    level = alpha / len(learned)
    passing, notes = [], []
    for name, (mase, dm) in sorted(learned.items()):
        if dm.origins < min_origins:
            notes.append(f"{name}: only {dm.origins} backtest origin times (< {min_origins})")
        elif not (mase < 1.0):
            notes.append(f"{name}: MASE {mase:.3f} >= 1 (no better than naive)")
        elif not (dm.p_value < level):
            notes.append(
                f"{name}: MASE {mase:.3f} but DM p = {dm.p_value:.3g} >= {level:.3g} "
                "(not significant)"
            )
        else:
            passing.append((mase, name))
    if not passing:
        return Decision(naive, "naive serves: " + "; ".join(notes))
    mase, name = min(passing)
    dm = learned[name][1]
    return Decision(
        name, f"{name} serves: MASE {mase:.3f} < 1, DM p = {dm.p_value:.3g} < {level:.3g}"
    )
