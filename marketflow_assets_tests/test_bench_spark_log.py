"""``benchmarks/latency.py``: the streaming job's micro-batches and "falling behind" warnings of
one phase, counted in its log from the phase's start on."""

from __future__ import annotations

from benchmarks.latency import spark_log_counts, spark_phase_log

BEHIND = (
    "26/12/06 02:06:43 WARN ProcessingTimeExecutor: Current batch is falling behind. The trigger "
    "interval is 2000 milliseconds, but spent 4086 milliseconds\n"
)


def batch(n: int) -> str:
    return f'2026-12-06 02:03:18,281 INFO kafka_streaming: micro-batch {{"batch_id": {n}}}\n'


def test_counts_only_what_the_phase_logged(tmp_path):
    log = tmp_path / "spark_streaming.log"
    assert spark_log_counts(spark_phase_log(log, 0)) == (0, 0)  # no log (yet): nothing
    log.write_text(batch(0) + BEHIND + batch(1) + BEHIND)  # start-up, before the phase
    start = log.stat().st_size
    with log.open("a") as f:
        f.write(batch(2) + batch(3) + BEHIND + batch(4))
    assert spark_log_counts(spark_phase_log(log, start)) == (3, 1)
    assert spark_log_counts(spark_phase_log(log, 0)) == (5, 3)
