"""The machine's 1-minute load average (``os.getloadavg``) sampled in a thread while a benchmark
measures: printed beside a latency figure so that a reader sees how busy the machine was."""

from __future__ import annotations

import os
import statistics
import threading


class LoadSampler:
    """Samples ``os.getloadavg()[0]`` every ``interval`` seconds between :meth:`start` and
    :meth:`stop` (also a context manager). One sample is taken at start and one at stop, so even a
    short measurement has two."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)

    def _sample(self) -> None:
        try:
            self.samples.append(os.getloadavg()[0])
        except OSError:  # not available on this platform
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> LoadSampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> LoadSampler:
        """Stop sampling (one last sample); a no-op when not started or already stopped."""
        if self._thread.ident is not None and not self._stop.is_set():
            self._stop.set()
            self._thread.join(self.interval + 5)
            self._sample()
        return self

    def __enter__(self) -> LoadSampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else float("nan")

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else float("nan")

    def describe(self) -> str:
        """``load_avg_1m mean M max X`` (the suffix of a latency line)."""
        return f"load_avg_1m mean {self.mean:.1f} max {self.max:.1f}"
