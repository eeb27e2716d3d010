"""Code-location load errors, watched from outside Dagster's code server.

A code location that fails to load runs none of its sensors, so ``marketflow_alert_sensor``
cannot report it. :class:`LocationWatch` asks the Dagster webserver instead (its public GraphQL
API, ``workspaceOrError``) and alerts once when a location starts failing to load, and once when
it loads again, through :func:`marketflow_assets.monitoring.alerts.emit_alert`. Call
:meth:`LocationWatch.check` periodically from a process outside the code location (the
``marketflow up`` supervisor).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import requests

log = logging.getLogger(__name__)

QUERY = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name
        locationOrLoadError { __typename
            ... on PythonError { message causes { message } } } } }
    ... on PythonError { message } } }
"""
LOADED = "LOADED"
FAILED = "FAILURE"


def location_errors(ui_url: str, timeout: float = 5.0) -> dict[str, str | None]:
    """``{location name: load error message, or None when it loaded}`` from the webserver."""
    response = requests.post(
        f"{ui_url.rstrip('/')}/graphql", json={"query": QUERY}, timeout=timeout
    )
    response.raise_for_status()
    workspace = response.json()["data"]["workspaceOrError"]
    if workspace["__typename"] != "Workspace":
        return {"(workspace)": workspace.get("message") or workspace["__typename"]}
    out: dict[str, str | None] = {}
    for entry in workspace["locationEntries"]:
        loaded = entry.get("locationOrLoadError") or {}
        if loaded.get("__typename") == "PythonError":
            # the innermost cause says what went wrong (the outer one is Dagster's wrapper)
            messages = [loaded.get("message")] + [
                c.get("message") for c in loaded.get("causes") or []
            ]
            lines = [m.strip().splitlines()[0] for m in messages if m and m.strip()]
            out[entry["name"]] = lines[-1] if lines else "load error"
        elif loaded:
            out[entry["name"]] = None
    return out


class LocationWatch:
    """One alert per code location state change (failing to load / loaded again)."""

    def __init__(
        self,
        ui_url: str,
        emit: Callable[[str, str, str, str], object] | None = None,
        every_s: float = 30.0,
    ):
        self.ui_url = ui_url
        self.emit = emit or _emit_to_alert_path
        self.every_s = every_s
        self.known: dict[str, str] = {}
        self.next_check = 0.0

    def check(self, force: bool = False) -> list[str]:
        """Look now (or when due); returns the alert texts sent."""
        if not force and time.monotonic() < self.next_check:
            return []
        self.next_check = time.monotonic() + self.every_s
        try:
            errors = location_errors(self.ui_url)
        except (requests.RequestException, KeyError, ValueError) as exc:
            log.debug("code location status unavailable: %s", exc)  # UI not up (yet)
            return []
        sent = []
        for name, error in sorted(errors.items()):
            state = FAILED if error else LOADED
            previous = self.known.get(name, LOADED)
            if state == previous:
                continue
            self.known[name] = state
            if state == FAILED:
                text = f"FAILURE: Marketflow code location {name} failed to load: {error}"
            else:
                text = f"RESOLVED: Marketflow code location {name} loads again."
            self.emit(f"location:{name}", previous, state, text)
            sent.append(text)
        return sent


def _emit_to_alert_path(key: str, previous: str, state: str, text: str) -> bool:
    from marketflow_assets.monitoring.alerts import Alert, emit_alert
    from marketflow_assets.settings import load_monitoring_settings

    webhook = load_monitoring_settings().alert_webhook_url
    return emit_alert(Alert(key, previous, state, text), webhook)
