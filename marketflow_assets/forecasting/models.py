"""Forecast candidates. Each predicts the horizon log return ``r_hat`` of every origin row;
the price forecast is ``p_t * exp(r_hat)``.

* ``naive_last_price``: ``r_hat = 0`` (tomorrow equals today). Always evaluated; the fallback.
* ``drift``: ``r_hat = drift_ret`` (the coin's mean log return per second over the last hour,
  times H) - a trend-following baseline.
* ``ema_reversion``: ``r_hat = log(ema_3min / p)`` - the forecast is the smoothed level
  (simple exponential smoothing's forecast), a mean-reversion baseline.
* ``ridge`` (scikit-learn): standardized :data:`~.features.FEATURE_COLUMNS` -> ridge regression
  of ``z = y / sigma`` (clipped to +-8), ``r_hat = z_hat * sigma``. Linear in past returns,
  deviations from SMA/EMA, market and leader returns: captures momentum, mean reversion, trends
  and lead-lag.
* ``lightgbm``: gradient-boosted trees on the same features and target (1 thread, 150 trees of
  at most 15 leaves, deterministic): non-linear versions of the same effects.

Baselines are reference points; only learned models compete with the naive forecast for
promotion (see :mod:`.gate`). Fitting is seconds: training rows are capped at
:data:`MAX_TRAIN_ROWS` by a seeded sample.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from marketflow_assets.forecasting.features import FEATURE_COLUMNS

NAIVE = "naive_last_price"
MAX_TRAIN_ROWS = 150_000
TARGET_CLIP = 8.0
THREADS = 1  # <= 2 required; 2 OpenMP threads spin-wait badly on a shared 2-core machine


class Candidate:
    name = "candidate"
    learned = False

    def fit(self, train: pd.DataFrame, seed: int = 0) -> Candidate:
        return self

    def predict_ret(self, frame: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError


class NaiveLastPrice(Candidate):
    name = NAIVE

    def predict_ret(self, frame: pd.DataFrame) -> np.ndarray:
        return np.zeros(len(frame))


class Drift(Candidate):
    name = "drift"

    def predict_ret(self, frame: pd.DataFrame) -> np.ndarray:
        return frame["drift_ret"].to_numpy(np.float64)


class EmaReversion(Candidate):
    name = "ema_reversion"

    def predict_ret(self, frame: pd.DataFrame) -> np.ndarray:
        return frame["ema_ret"].to_numpy(np.float64)


def training_rows(train: pd.DataFrame, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(X, z)`` of the rows with a target and a scale, sampled down to MAX_TRAIN_ROWS."""
    usable = train[np.isfinite(train["z"]) & np.isfinite(train["sigma"])]
    if len(usable) > MAX_TRAIN_ROWS:
        usable = usable.sample(n=MAX_TRAIN_ROWS, random_state=seed).sort_index()
    x = usable.loc[:, list(FEATURE_COLUMNS)].to_numpy(np.float64)
    z = np.clip(usable["z"].to_numpy(np.float64), -TARGET_CLIP, TARGET_CLIP)
    return x, z


class _Learned(Candidate):
    learned = True
    estimator = None

    def _make(self, seed: int):
        raise NotImplementedError

    def fit(self, train: pd.DataFrame, seed: int = 0) -> Candidate:
        x, z = training_rows(train, seed)
        if len(z) < 50:
            raise ValueError(f"{self.name}: only {len(z)} training rows (need at least 50)")
        from threadpoolctl import threadpool_limits

        with threadpool_limits(THREADS):  # BLAS/OpenMP: no oversubscription of shared cores
            self.estimator = self._make(seed).fit(x, z)
        self.train_rows = len(z)
        return self

    def predict_ret(self, frame: pd.DataFrame) -> np.ndarray:
        x = frame.loc[:, list(FEATURE_COLUMNS)].to_numpy(np.float64)
        z_hat = np.asarray(self.estimator.predict(x), dtype=np.float64)
        return np.nan_to_num(z_hat * frame["sigma"].to_numpy(np.float64), nan=0.0)


class RidgeModel(_Learned):
    name = "ridge"

    def _make(self, seed: int):
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), Ridge(alpha=10.0))


class LightGBMModel(_Learned):
    name = "lightgbm"

    def _make(self, seed: int):
        from lightgbm import LGBMRegressor

        return LGBMRegressor(
            n_estimators=150,
            learning_rate=0.05,
            num_leaves=15,
            min_child_samples=100,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.8,
            reg_lambda=1.0,
            num_threads=THREADS,
            random_state=seed,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )


CANDIDATES: dict[str, type[Candidate]] = {
    c.name: c for c in (NaiveLastPrice, Drift, EmaReversion, RidgeModel, LightGBMModel)
}


def make_candidate(name: str) -> Candidate:
    try:
        return CANDIDATES[name]()
    except KeyError:
        known = ", ".join(CANDIDATES)
        raise ValueError(f"unknown forecast model {name!r} (known: {known})") from None
