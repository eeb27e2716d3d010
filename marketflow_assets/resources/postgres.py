"""PostgreSQL resource: connections to the database that holds the indicator tables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from marketflow_assets.schema import create_all_sql


class PostgresResource(dg.ConfigurableResource):
    """Connections to the Marketflow PostgreSQL database (``MARKETFLOW_POSTGRES_URL``)."""

    url: str

    @contextmanager
    def get_connection(self) -> Iterator:
        """A psycopg2 connection; commits on success, rolls back on error, always closes."""
        import psycopg2

        conn = psycopg2.connect(self.url, connect_timeout=10)
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def ensure_tables(self) -> None:
        """Create the Marketflow tables and indexes if they do not exist (idempotent)."""
        with self.get_connection() as conn, conn.cursor() as cur:
            for statement in create_all_sql():
                cur.execute(statement)
