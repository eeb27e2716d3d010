"""``benchmarks/loadavg.py``: the 1-minute load average sampled in a thread during a measurement."""

from __future__ import annotations

import os
import time

from benchmarks.loadavg import LoadSampler


def test_samples_between_start_and_stop_only():
    sampler = LoadSampler(interval=0.05)
    assert sampler.stop().samples == []  # never started: nothing, and no error
    with sampler:
        time.sleep(0.5)
    count = len(sampler.samples)
    assert count >= 5  # one at start, one per interval, one at stop
    time.sleep(0.2)
    assert len(sampler.samples) == count  # the thread ended with the measurement
    assert min(sampler.samples) <= sampler.mean <= sampler.max == max(sampler.samples)
    now = os.getloadavg()[0]
    assert abs(sampler.max - now) < 5  # the 1-minute average of this machine, not another figure
    assert sampler.describe() == (f"load_avg_1m mean {sampler.mean:.1f} max {sampler.max:.1f}")
