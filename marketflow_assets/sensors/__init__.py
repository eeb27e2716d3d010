"""Sensors: raw_prices observation, indicator automation, freshness monitoring, alerts."""
