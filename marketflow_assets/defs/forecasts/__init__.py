"""Forecasts: ``forecast_evaluation`` -> ``forecast_model`` -> ``price_forecasts``, checks,
automation."""
