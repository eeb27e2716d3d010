"""``benchmarks/latency.py``'s scale curve (``--full``): the p95 of each path by coins per poll,
as a table and as a PNG drawn by the system Chromium."""

from __future__ import annotations

import shutil
import struct
from datetime import UTC, datetime, timedelta

import pytest

from benchmarks import latency


def _phase(coins: int, live: list[float], exact: list[float], quix: list[float] | None):
    since = datetime(2026, 12, 5, 12, tzinfo=UTC)
    phase = latency.Phase(coins, len(live), 30.0)

    def watcher(delays):
        w = latency.Watcher(None, "postgresql://unused", coins, since)
        w.pg_seen = {since + timedelta(seconds=30 * i): 0.0 for i in range(len(delays))}
        return w

    phase.watcher, phase.exact = watcher(live), watcher(exact)
    phase.samples = {"total": live, "exact total": exact}
    if quix is not None:
        phase.baselines["quix"] = watcher(quix)
        phase.samples["quix total"] = quix
    return phase


@pytest.mark.browser
def test_the_scale_curve_prints_each_paths_p95_and_draws_it(tmp_path, capsys):
    if shutil.which("chromium") is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    phases = [
        _phase(250, [0.2, 0.4, 0.3], [3.0, 4.0, 5.0], [1.0, 1.2, 1.1]),
        _phase(1000, [0.5, 0.6, 0.7], [6.0, 6.5, 7.0], [1.5, 1.6, 1.7]),
        _phase(15000, [2.0, 2.5, 3.0], [12.0, 13.0, 20.0], None),  # the baseline did not run
    ]
    png = tmp_path / "curve.png"
    latency.scale_curve(phases, png)
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.count("|") > 4}
    cells = {coins: [c.strip() for c in row.split("|")[2:-1]] for coins, row in rows.items()}
    # columns: marketflow live, marketflow exact, quix, pathway
    assert cells["250"][:3] == [
        f"{latency._stats(v)[1]:.2f}" for v in ([0.2, 0.4, 0.3], [3.0, 4.0, 5.0], [1.0, 1.2, 1.1])
    ]
    assert cells["15,000"][2:] == ["n/a", "n/a"]  # no baseline figure where none ran
    assert f"scale curve: {png}" in out
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24])[0] >= 900  # the whole figure
