"""Schedules of the market-data assets (assembled in ``definitions.py``)."""
