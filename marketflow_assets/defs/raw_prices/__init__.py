"""``raw_prices``: the external raw Parquet dataset, its observation sensor and its checks."""
