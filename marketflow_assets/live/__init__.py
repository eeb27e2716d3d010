"""The live path: Kafka topic -> ``price_indicators`` / ``market_movers`` within seconds.

``marketflow live`` (:mod:`.command`, started by ``marketflow up`` unless ``MARKETFLOW_LIVE=0``)
reads the price topic with manually assigned partitions (no consumer group), computes each
coin's new rows from a small per-coin state with the pure functions of
:mod:`marketflow_assets.indicators` (:func:`~marketflow_assets.indicators.advance_indicators`),
and writes them with ``source = 'live'`` in one transaction together with the recomputed movers
of the snapshots it touched, then the records' market data and the next Kafka offsets in a second
one (:mod:`.store`: both idempotent, offsets last). A crash (even ``kill -9``) therefore loses or
duplicates nothing: the restart rebuilds the state from ``price_indicators``, resumes from the
stored offsets and skips the rows already written.

Spark still writes the raw Parquet and Dagster still owns the exact recompute: its writes
(``source = 'dagster'``) replace the live rows of the periods it recomputes, after comparing
them (asset check ``price_indicators_live_matches``).
"""
