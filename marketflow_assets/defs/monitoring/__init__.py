"""Monitoring: freshness and stream checks, the sensors that keep them current, alerts, history."""
