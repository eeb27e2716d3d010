"""Pieces the domains share: partitions, definition policies, check outcomes, table helpers."""
