"""Definition-level pieces the computed assets share: table metadata from ``schema.py``, the
retry policy for transient I/O, and the formula versions used as ``code_version``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg

from marketflow_assets.schema import RAW_COLUMNS, TABLES

#: Retries of a computed asset's step after a *transient* I/O error (PostgreSQL connection lost
#: or refused, a file vanishing under a read, a Spark Connect hiccup): 2 more attempts, 2 s then
#: 4 s apart (± jitter). Other errors are raised as ``dg.Failure(allow_retries=False)`` by
#: :func:`retry_transient_io_only`, so a bug or bad data fails at once instead of three times.
TRANSIENT_IO_RETRY = dg.RetryPolicy(
    max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def is_transient_io_error(exc: BaseException) -> bool:
    """Connection-level failures worth another attempt (not data or programming errors)."""
    import psycopg2

    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
        return True
    if isinstance(exc, OSError):  # ConnectionError, TimeoutError, FileNotFoundError, ...
        return True
    return type(exc).__name__ in {"Py4JNetworkError", "SparkConnectGrpcException"}


@contextmanager
def retry_transient_io_only() -> Iterator[None]:
    """Let transient I/O errors through to :data:`TRANSIENT_IO_RETRY`; turn every other error
    into a failure that is not retried."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as exc:
        if is_transient_io_error(exc):
            raise
        raise dg.Failure(
            description=f"{type(exc).__name__}: {exc} (not a transient I/O error: not retried)",
            allow_retries=False,
        ) from exc


_SQL_TYPES = {
    "text": "text",
    "double": "double precision",
    "timestamptz": "timestamptz",
    "int": "int",
}


def table_column_schema(table: str) -> dg.TableSchema:
    """``dagster/column_schema`` of a PostgreSQL table of ``schema.TABLES``."""
    columns, key = TABLES[table]
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name,
                type=_SQL_TYPES[kind.split()[0]],
                constraints=dg.TableColumnConstraints(
                    nullable="NOT NULL" not in kind,
                    other=[kind.split(" ", 1)[1]] if "CHECK" in kind else None,
                ),
            )
            for name, kind in columns
        ],
        constraints=dg.TableConstraints(other=[f"PRIMARY KEY ({', '.join(key)})"]),
    )


def table_metadata(table: str) -> dict[str, Any]:
    """Definition metadata of a table-backed asset: column schema and table name."""
    return {
        "dagster/column_schema": table_column_schema(table),
        "dagster/table_name": table,
    }


def raw_column_schema() -> dg.TableSchema:
    """``dagster/column_schema`` of the raw Parquet dataset (``schema.RAW_COLUMNS``)."""
    return dg.TableSchema(columns=[dg.TableColumn(name, type=kind) for name, kind in RAW_COLUMNS])


def row_count_metadata(partition_rows: int, table_rows: int) -> dict[str, Any]:
    """Standard row counts of a materialized partition."""
    return {
        "dagster/partition_row_count": dg.MetadataValue.int(partition_rows),
        "dagster/row_count": dg.MetadataValue.int(table_rows),
    }


def live_row_count_metadata(result, table_rows: int) -> dict[str, Any]:
    """Row counts of an incremental refresh: the table's (estimated) size, and the partition's
    when this run recomputed all of it (an incremental run recomputes only new rows, and
    counting the hour would cost what the incremental refresh saves)."""
    meta = {"dagster/row_count": dg.MetadataValue.int(table_rows)}
    if result.recomputed_from is not None and result.recomputed_from <= result.start:
        meta["dagster/partition_row_count"] = dg.MetadataValue.int(len(result.rows))
    return meta
