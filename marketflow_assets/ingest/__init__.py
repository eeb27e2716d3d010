"""Ingest stage: CoinGecko / replay / simulator polls -> validation -> Kafka (+ dead letters).

``command.add_arguments`` / ``command.run`` implement ``marketflow ingest``;
``sources.simulate_polls`` is the fast, seeded simulator for benchmarks and tests;
``coingecko.coingecko_reachable`` tells ``marketflow up --source auto`` whether to go live.
"""
