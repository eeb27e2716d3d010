"""Quality checks on market_movers: pass on the pipeline's own output, fail on crafted rows."""

from datetime import timedelta

import dagster as dg

from marketflow_assets.defs.indicators import movers_checks as mm
from marketflow_assets_tests.defs.checks_data import (
    execute,
    insert,
    load_good_tables,
    make_raw,
    run_checks,
)

CHECKS = dg.AssetSelection.checks(*mm.CHECKS)


def test_pass_on_good_data(resources, pg_clean, now):
    _, movers = load_good_tables(pg_clean, make_raw(now, coins=12))
    evaluations = run_checks(resources, CHECKS)
    assert sorted(evaluations) == [
        "market_movers:at_most_five_per_direction",
        "market_movers:movers_sorted",
    ]
    assert all(e.passed for e in evaluations.values()), {
        k: e.description for k, e in evaluations.items()
    }
    shape = evaluations["market_movers:at_most_five_per_direction"]
    assert shape.metadata["rows"].value == len(movers) > 0
    assert shape.metadata["snapshots"].value == movers["snapshot_ts"].nunique()


def test_more_than_five_per_direction_fails(resources, pg_clean, now):
    _, movers = load_good_tables(pg_clean, make_raw(now, coins=12), relaxed=True)
    latest = movers[(movers["snapshot_ts"] == movers["snapshot_ts"].max())]
    sixth = latest[(latest["direction"] == "gainer") & (latest["rank"] == 5)].copy()
    sixth["rank"] = 6
    sixth["coin_id"] = "coin-extra"
    sixth["change_5min"] = sixth["change_5min"] - 0.001
    insert(pg_clean, "market_movers", sixth)
    evaluations = run_checks(resources, CHECKS)
    shape = evaluations["market_movers:at_most_five_per_direction"]
    assert not shape.passed
    assert shape.metadata["bad_groups"].value == 1
    assert evaluations["market_movers:movers_sorted"].passed  # still in order


def test_unsorted_gainers_fail(resources, pg_clean, now):
    load_good_tables(pg_clean, make_raw(now, coins=12))
    snapshot = now - timedelta(minutes=1)
    # swap the change of gainer ranks 1 and 2: rank 2 now beats rank 1
    execute(
        pg_clean,
        """
        UPDATE market_movers m SET change_5min = o.change_5min
        FROM market_movers o
        WHERE m.snapshot_ts = %(s)s AND o.snapshot_ts = %(s)s
          AND m.direction = 'gainer' AND o.direction = 'gainer'
          AND ((m.rank = 1 AND o.rank = 2) OR (m.rank = 2 AND o.rank = 1))
        """,
        {"s": snapshot},
    )
    evaluations = run_checks(resources, CHECKS)
    order = evaluations["market_movers:movers_sorted"]
    assert not order.passed
    assert order.metadata["bad_rows"].value == 1
    assert evaluations["market_movers:at_most_five_per_direction"].passed


def test_unsorted_losers_fail(resources, pg_clean, now):
    load_good_tables(pg_clean, make_raw(now, coins=12))
    execute(
        pg_clean,
        "UPDATE market_movers SET change_5min = 1000 WHERE direction = 'loser' AND rank = 3"
        " AND snapshot_ts = %s",
        (now,),
    )
    assert not run_checks(resources, CHECKS)["market_movers:movers_sorted"].passed
