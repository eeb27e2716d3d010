"""Schedules of the market-data assets."""

from marketflow_assets.schedules.indicators import recent_indicators_schedule

__all__ = ["recent_indicators_schedule"]
