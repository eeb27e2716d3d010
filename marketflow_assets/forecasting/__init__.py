"""Short-horizon price forecasting: pure functions, no I/O, no Dagster.

* :mod:`.features` - per (coin, origin) features computed only from observations at or before the
  origin, and the horizon target;
* :mod:`.models` - the candidates: naive last price, drift and EMA baselines, learned models
  (ridge regression, LightGBM);
* :mod:`.backtest` - rolling-origin backtest (gap of one horizon), MAE / MASE / directional
  accuracy, 80 % intervals from out-of-sample residual quantiles and their coverage;
* :mod:`.gate` - Diebold-Mariano test (HAC variance) and the promotion rule;
* :mod:`.live` - live error of served forecasts (retraining trigger).

The Dagster assets in :mod:`marketflow_assets.defs.forecasts.assets` are thin wrappers over these.
"""
