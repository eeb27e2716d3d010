"""``price_indicators`` and ``market_movers``: assets, checks, jobs, automation, commands."""
