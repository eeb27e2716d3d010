"""A code location that fails to load is alerted once (from outside Dagster's code server), and
once more when it loads again: a real ``dagster-webserver`` serving a broken module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from marketflow_assets.monitoring.location_health import LocationWatch, location_errors
from marketflow_assets.runtime.services import free_port
from marketflow_assets_tests.monitoring.monitoring_helpers import wait_for

WEBSERVER = str(Path(sys.executable).with_name("dagster-webserver"))
GOOD = "import dagster as dg\n\ndefs = dg.Definitions()\n"


@pytest.mark.slow  # over 10 s: left out of `make test-fast`
def test_location_load_error_alerts_then_resolves(tmp_path):
    code = tmp_path / "location_defs.py"
    code.write_text("import dagster as dg\n\nraise RuntimeError('bad deploy: missing module')\n")
    (tmp_path / "workspace.yaml").write_text(
        f"load_from:\n  - python_file:\n      relative_path: {code.name}\n"
        "      location_name: flaky_location\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "webserver.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [WEBSERVER, "-w", str(tmp_path / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path,
        env={**os.environ, "DAGSTER_HOME": str(home)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        sent: list[tuple[str, str]] = []
        watch = LocationWatch(url, emit=lambda key, prev, state, text: sent.append((key, text)))
        errors = wait_for(lambda: location_errors(url), timeout=180, what="the webserver")
        assert "bad deploy" in (errors["flaky_location"] or "")
        assert watch.check(force=True)[0].startswith(
            "FAILURE: Marketflow code location flaky_location failed to load"
        )
        assert watch.check(force=True) == []  # still broken: said already
        code.write_text(GOOD)
        reload = (
            'mutation { reloadRepositoryLocation(repositoryLocationName: "flaky_location") '
            "{ __typename } }"
        )
        import requests

        requests.post(f"{url}/graphql", json={"query": reload}, timeout=60).raise_for_status()
        resolved = wait_for(lambda: watch.check(force=True), timeout=60, what="the reload")
        assert resolved == ["RESOLVED: Marketflow code location flaky_location loads again."]
        assert [key for key, _ in sent] == ["location:flaky_location"] * 2
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
