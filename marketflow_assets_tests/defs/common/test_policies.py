"""Retries of the computed assets: transient I/O errors are retried by the RetryPolicy, other
errors fail at once."""

from __future__ import annotations

import dagster as dg
import pytest

from marketflow_assets.definitions import build_resources
from marketflow_assets.defs.common.policies import is_transient_io_error, retry_transient_io_only
from marketflow_assets.defs.indicators.assets import price_indicators
from marketflow_assets.defs.raw_prices.assets import raw_prices
from marketflow_assets.runtime.services import free_port
from marketflow_assets_tests.helpers import irregular_rows, write_raw_parquet


def test_unreachable_postgres_is_retried_twice_then_fails(data_dir):
    write_raw_parquet(data_dir / "raw_prices", irregular_rows(seed=2, coins=3, polls=10))
    closed = f"postgresql://marketflow:pw@127.0.0.1:{free_port()}/marketflow"
    result = dg.materialize(
        [raw_prices, price_indicators],
        selection=["price_indicators"],
        partition_key="2024-03-09-22:00",
        resources=build_resources(closed, str(data_dir)),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    retries = [
        e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
    ]
    assert len(retries) == 2  # max_retries=2, then the step fails


def test_only_transient_io_errors_are_left_to_the_retry_policy():
    import psycopg2

    assert is_transient_io_error(psycopg2.OperationalError("connection refused"))
    assert is_transient_io_error(ConnectionResetError())
    assert not is_transient_io_error(ValueError("rows outside the period"))
    with pytest.raises(psycopg2.OperationalError), retry_transient_io_only():
        raise psycopg2.OperationalError("server closed the connection unexpectedly")
    with pytest.raises(dg.Failure) as failure, retry_transient_io_only():
        raise KeyError("current_price")
    assert failure.value.allow_retries is False
