"""Quality checks on the raw Parquet dataset, written like the Spark job writes it."""

from datetime import timedelta

import dagster as dg

from marketflow_assets.defs.common.outcome import Window
from marketflow_assets.defs.raw_prices import checks as rc
from marketflow_assets_tests.defs.checks_data import make_raw, run_checks, write_raw

CHECKS = dg.AssetSelection.checks(*rc.CHECKS)
NAMES = ["raw_prices:prices_positive", "raw_prices:rows_per_poll_stable", "raw_prices:unique_id_ts"]


def test_pass_on_good_data(resources, data_dir, now):
    write_raw(data_dir, make_raw(now))
    evaluations = run_checks(resources, CHECKS)
    assert sorted(evaluations) == NAMES
    assert all(e.passed for e in evaluations.values()), {
        k: e.description for k, e in evaluations.items()
    }
    assert evaluations["raw_prices:prices_positive"].metadata["rows"].value == 8 * 24
    assert evaluations["raw_prices:rows_per_poll_stable"].metadata["polls"].value == 24


def test_non_positive_and_null_prices_fail(resources, data_dir, now):
    raw = make_raw(now)
    raw.loc[raw.index[-1], "current_price"] = 0.0
    raw.loc[raw.index[-2], "current_price"] = None
    raw.loc[raw.index[5], "current_price"] = -1.0
    write_raw(data_dir, raw)
    evaluation = run_checks(resources, CHECKS)["raw_prices:prices_positive"]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["bad_rows"].value == 3


def test_duplicate_id_ts_fails(resources, data_dir, now):
    raw = make_raw(now)
    write_raw(data_dir, raw)
    # another writer appending to the table without Marketflow's (id, ts) dedup
    from deltalake import write_deltalake

    from marketflow_assets.raw_dataset import raw_table_from_frame

    again = raw[raw["ts"] == now].head(2)
    write_deltalake(str(data_dir / "raw_prices"), raw_table_from_frame(again), mode="append")
    evaluations = run_checks(resources, CHECKS)
    dup = evaluations["raw_prices:unique_id_ts"]
    assert not dup.passed
    assert dup.metadata["duplicate_keys"].value == 2


def test_collapsed_poll_flags(resources, data_dir, now):
    raw = make_raw(now, coins=10)
    collapsed_ts = now - timedelta(minutes=3)
    drop = raw[(raw["ts"] == collapsed_ts) & (raw["id"] >= "coin-04")].index  # 4 of 10 remain
    write_raw(data_dir, raw.drop(drop))
    evaluation = run_checks(resources, CHECKS)["raw_prices:rows_per_poll_stable"]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["collapsed_polls"].value == 1
    assert evaluation.metadata["min_poll_rows"].value == 4


def test_drop_to_exactly_half_does_not_flag(data_dir, now):
    raw = make_raw(now, coins=10)
    half = raw[(raw["ts"] == now) & (raw["id"] >= "coin-05")].index
    write_raw(data_dir, raw.drop(half))
    outcomes = rc.evaluate(data_dir / "raw_prices")
    assert outcomes["rows_per_poll_stable"][0].passed
    # one more coin missing is more than half gone
    df = rc.read_window(data_dir / "raw_prices", now - timedelta(hours=1), now + timedelta(1))
    df = df.drop(df[(df["ts"] == now) & (df["id"] == "coin-00")].index)
    window = Window(now - timedelta(hours=1), now + timedelta(seconds=1), "partition")
    assert not rc.rows_per_poll_outcome(df, window).passed


def test_window_spans_date_partitions(data_dir, now):
    midnight = now.replace(hour=0, minute=0, second=0)
    raw = make_raw(midnight + timedelta(minutes=2), polls=20)  # crosses midnight
    write_raw(data_dir, raw, streaming_names=False)  # written by another tool: names say nothing
    assert len(list((data_dir / "raw_prices").glob("date=*"))) == 2
    assert rc.newest_raw_ts(data_dir / "raw_prices") == midnight + timedelta(minutes=2)
    outcomes = rc.evaluate(data_dir / "raw_prices")
    assert outcomes["prices_positive"][0].metadata["rows"] == 8 * 20


def test_empty_dataset_passes_quality_with_no_rows(data_dir):
    outcomes = rc.evaluate(data_dir / "raw_prices")
    assert all(o.passed for o, _ in outcomes.values())
