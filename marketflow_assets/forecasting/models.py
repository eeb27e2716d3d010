"""Forecast candidates. Each predicts the horizon log return ``r_hat`` of every origin row;
the price forecast is ``p_t * exp(r_hat)``.

* ``naive_last_price``: ``r_hat = 0`` (tomorrow equals today). Always evaluated; the fallback.
* ``drift``: ``r_hat = drift_ret`` (the coin's mean log return per second over the last hour,
  times H) - a trend-following baseline.
* ``ema_reversion``: ``r_hat = log(ema_3min / p)`` - the forecast is the smoothed level
  (simple exponential smoothing's forecast), a mean-reversion baseline.
* ``ridge`` (scikit-learn): standardized :data:`~.features.FEATURE_COLUMNS` -> ridge regression
  of ``z = y / sigma`` (clipped to +-8), ``r_hat = z_hat * sigma``. Linear in past returns,
  deviations from SMA/EMA/means, market and leader returns: captures momentum, mean reversion,
  trends and lead-lag.
* ``lightgbm``: gradient-boosted trees on the same features and target (1 thread, at most 300
  trees of at most 15 leaves, deterministic): non-linear versions of the same effects.

Both choose their capacity on the newest quarter of their training window (ridge penalty in
:data:`RIDGE_ALPHAS`, number of trees by early stopping; "predict no change" when nothing helps
there), then refit on the whole window.

Baselines are reference points; only learned models compete with the naive forecast for
promotion (see :mod:`.gate`). Fitting is seconds: training rows are capped at
:data:`MAX_TRAIN_ROWS` by a seeded sample.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from marketflow_assets.forecasting.features import FEATURE_COLUMNS

NAIVE = "naive_last_price"
MAX_TRAIN_ROWS = 150_000
VALIDATION_FRACTION = 0.25
RIDGE_ALPHAS = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
MAX_TREES = 300
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


def training_rows(train: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Rows with a target and a scale, sampled down to MAX_TRAIN_ROWS, in time order."""
    usable = train[np.isfinite(train["z"]) & np.isfinite(train["sigma"])]
    if len(usable) > MAX_TRAIN_ROWS:
        usable = usable.sample(n=MAX_TRAIN_ROWS, random_state=seed)
    return usable.sort_values("ts", kind="mergesort")


def _xz(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    x = rows.loc[:, list(FEATURE_COLUMNS)].to_numpy(np.float64)
    z = np.clip(rows["z"].to_numpy(np.float64), -TARGET_CLIP, TARGET_CLIP)
    return x, z


def time_split(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Inner validation split of training rows (time-ordered): validate on the newest
    :data:`VALIDATION_FRACTION` of origin times, fit on the rows whose target was observed
    before the first validation origin (a gap of one horizon, as in the backtest)."""
    times = np.sort(rows["ts"].unique())
    cut = pd.Timestamp(times[int(len(times) * (1 - VALIDATION_FRACTION))])
    fit = rows[rows["target_obs_ts"] <= cut]
    return fit, rows[rows["ts"] >= cut]


def _abs_error(rows: pd.DataFrame, z_hat: np.ndarray) -> float:
    """Mean |y - r_hat| of validation rows (the backtest's loss, in log-return units)."""
    r_hat = z_hat * rows["sigma"].to_numpy(np.float64)
    return float(np.mean(np.abs(rows["y"].to_numpy(np.float64) - r_hat)))


class _Learned(Candidate):
    """Fits on standardized features -> z; its capacity (ridge penalty, number of trees) is
    chosen on a time-ordered inner validation split of the training window (cross-coin
    correlation leaves far fewer independent samples than rows, so a fixed setting overfits),
    then it is refitted on the whole window."""

    learned = True
    estimator = None
    chosen: dict

    def fit(self, train: pd.DataFrame, seed: int = 0) -> Candidate:
        rows = training_rows(train, seed)
        if len(rows) < 50:
            raise ValueError(f"{self.name}: only {len(rows)} training rows (need at least 50)")
        from threadpoolctl import threadpool_limits

        with threadpool_limits(THREADS):  # BLAS/OpenMP: no oversubscription of shared cores
            self.estimator, self.chosen = self._fit(rows, seed)
        self.train_rows = len(rows)
        return self

    def _fit(self, rows: pd.DataFrame, seed: int):
        raise NotImplementedError

    def predict_ret(self, frame: pd.DataFrame) -> np.ndarray:
        if self.estimator is None:  # validation chose "predict no change"
            return np.zeros(len(frame))
        x = frame.loc[:, list(FEATURE_COLUMNS)].to_numpy(np.float64)
        z_hat = np.asarray(self.estimator.predict(x), dtype=np.float64)
        return np.nan_to_num(z_hat * frame["sigma"].to_numpy(np.float64), nan=0.0)


class RidgeModel(_Learned):
    """Ridge regression; penalty from :data:`RIDGE_ALPHAS` by inner validation (an infinite
    penalty - predicting no change - is one of the choices)."""

    name = "ridge"

    def _fit(self, rows: pd.DataFrame, seed: int):
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        def make(alpha):
            return make_pipeline(StandardScaler(), Ridge(alpha=alpha))

        fit_rows, val_rows = time_split(rows)
        best_alpha, best_err = None, _abs_error(val_rows, np.zeros(len(val_rows)))
        if len(fit_rows) >= 50 and len(val_rows):
            x_fit, z_fit = _xz(fit_rows)
            x_val = val_rows.loc[:, list(FEATURE_COLUMNS)].to_numpy(np.float64)
            for alpha in RIDGE_ALPHAS:
                err = _abs_error(val_rows, make(alpha).fit(x_fit, z_fit).predict(x_val))
                if err < best_err:
                    best_alpha, best_err = alpha, err
        if best_alpha is None:
            return None, {"alpha": "inf"}
        return make(best_alpha).fit(*_xz(rows)), {"alpha": best_alpha}


class LightGBMModel(_Learned):
    """Gradient-boosted trees; the number of trees by early stopping (L1) on the inner
    validation split, then refitted on the whole window with that many trees."""

    name = "lightgbm"

    @staticmethod
    def _make(seed: int, n_estimators: int):
        from lightgbm import LGBMRegressor

        return LGBMRegressor(
            n_estimators=n_estimators,
            learning_rate=0.05,
            num_leaves=15,
            min_child_samples=200,
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

    def _fit(self, rows: pd.DataFrame, seed: int):
        import lightgbm

        fit_rows, val_rows = time_split(rows)
        trees = 0
        if len(fit_rows) >= 50 and len(val_rows):
            x_val, z_val = _xz(val_rows)
            with warnings.catch_warnings():  # eval_set: deprecated in 4.7, the only way < 4.6
                warnings.simplefilter("ignore", category=FutureWarning)
                warnings.simplefilter("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", message=".*eval_set.*")
                probe = self._make(seed, MAX_TREES).fit(
                    *_xz(fit_rows),
                    eval_set=[(x_val, z_val)],
                    eval_metric="l1",
                    callbacks=[lightgbm.early_stopping(20, verbose=False)],
                )
            trees = int(probe.best_iteration_ or 0)
            z_hat = probe.predict(x_val, num_iteration=trees) if trees else np.zeros(len(z_val))
            if _abs_error(val_rows, z_hat) >= _abs_error(val_rows, np.zeros(len(val_rows))):
                trees = 0
        if trees == 0:
            return None, {"trees": 0}
        return self._make(seed, trees).fit(*_xz(rows)), {"trees": trees}


CANDIDATES: dict[str, type[Candidate]] = {
    c.name: c for c in (NaiveLastPrice, Drift, EmaReversion, RidgeModel, LightGBMModel)
}


def make_candidate(name: str) -> Candidate:
    try:
        return CANDIDATES[name]()
    except KeyError:
        known = ", ".join(CANDIDATES)
        raise ValueError(f"unknown forecast model {name!r} (known: {known})") from None
