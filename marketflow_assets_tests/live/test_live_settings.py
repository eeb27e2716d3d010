"""Settings and command line of the live path (MARKETFLOW_LIVE, MARKETFLOW_LIVE_POLL_TIMEOUT,
MARKETFLOW_LIVE_MAX_BATCH; `marketflow live`; `marketflow up` starts it unless disabled)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from marketflow_assets.runtime import up
from marketflow_assets.settings import ConfigError, load_live_settings, load_settings


def test_defaults_and_values():
    assert load_live_settings({}) == load_live_settings({"MARKETFLOW_LIVE": "1"})
    live = load_live_settings({})
    assert (live.enabled, live.poll_timeout_s, live.max_batch_records) == (True, 0.1, 100_000)
    live = load_live_settings(
        {
            "MARKETFLOW_LIVE": "0",
            "MARKETFLOW_LIVE_POLL_TIMEOUT": "0.25",
            "MARKETFLOW_LIVE_MAX_BATCH": "2000",
        }
    )
    assert (live.enabled, live.poll_timeout_s, live.max_batch_records) == (False, 0.25, 2000)


@pytest.mark.parametrize(
    "env",
    [
        {"MARKETFLOW_LIVE": "maybe"},
        {"MARKETFLOW_LIVE_POLL_TIMEOUT": "0"},
        {"MARKETFLOW_LIVE_POLL_TIMEOUT": "soon"},
        {"MARKETFLOW_LIVE_MAX_BATCH": "0"},
    ],
)
def test_bad_values_are_config_errors(env):
    with pytest.raises(ConfigError):
        load_live_settings(env)


def test_up_starts_the_live_child_with_its_log(tmp_path):
    settings = load_settings({"MARKETFLOW_DATA_DIR": str(tmp_path)})
    child = up.live_child(settings)
    assert child.name == "live"
    assert child.argv[-2:] == ["marketflow_assets.cli", "live"]
    assert child.log_path == tmp_path / "logs" / "live.log"


def test_live_without_a_broker_is_a_usage_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MARKETFLOW_KAFKA_BOOTSTRAP"}
    env["MARKETFLOW_DATA_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "marketflow_assets.cli", "live"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "MARKETFLOW_KAFKA_BOOTSTRAP" in done.stderr
