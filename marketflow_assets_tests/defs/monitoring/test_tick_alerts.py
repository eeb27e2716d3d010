"""Sensor tick failures alert once, and their recovery once: a real ``dagster-daemon`` ticks a
sensor that raises while a flag file exists, on a real (SQLite) instance."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from marketflow_assets.defs.monitoring import alerts
from marketflow_assets_tests.monitoring.monitoring_helpers import wait_for

DAEMON = str(Path(sys.executable).with_name("dagster-daemon"))


@pytest.mark.slow  # over 10 s: left out of `make test-fast`
def test_a_failing_sensor_tick_alerts_once_then_resolves(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    flag = tmp_path / "broken"
    flag.touch()
    code = tmp_path / "flaky_defs.py"
    code.write_text(
        textwrap.dedent(
            f"""
            import os
            import dagster as dg

            @dg.sensor(minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.RUNNING)
            def flaky_sensor(context):
                if os.path.exists({str(flag)!r}):
                    raise RuntimeError("the upstream API said no")
                return dg.SkipReason("fine")

            defs = dg.Definitions(sensors=[flaky_sensor])
            """
        )
    )
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    log = open(tmp_path / "daemon.log", "w")  # noqa: SIM115
    daemon = subprocess.Popen(
        [DAEMON, "run", "-f", str(code), "--working-directory", str(tmp_path)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    try:
        instance = dg.DagsterInstance.get()
        known: dict[str, str] = {}

        def new_alerts():
            return alerts.tick_alerts(instance, known)

        failed = wait_for(new_alerts, timeout=180, interval=1, what="a failed tick")
        assert [a.key for a in failed] == ["sensor:flaky_sensor"]
        assert failed[0].text.startswith("FAILURE: Marketflow sensor:flaky_sensor tick failed")
        assert "the upstream API said no" in failed[0].text
        assert new_alerts() == []  # still failing: said already
        flag.unlink()
        resolved = wait_for(new_alerts, timeout=60, interval=1, what="a good tick")
        assert [a.text for a in resolved] == [
            "RESOLVED: Marketflow sensor:flaky_sensor ticks succeed again."
        ]
    finally:
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        print((tmp_path / "daemon.log").read_text()[-3000:])
