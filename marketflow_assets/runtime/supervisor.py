"""Child processes of ``marketflow up``: start, stop, and restart with backoff when they exit.

Each :class:`Child` runs in its own process group (session) with its output appended to its log,
so a terminal's Ctrl-C or SIGHUP reaches ``up`` only and ``up`` stops the children in order.
Stopping or reaping a child always ends its whole process group (Spark's JVM, Dagster's
webserver, daemon and run workers), so nothing of a dead child keeps running beside its
replacement.

:class:`Supervisor` watches the children: one that exits is restarted after an exponential
backoff (``backoff_s · 2^(n−1)``, at most ``max_backoff_s``, n = its restarts within the window),
with a log line and the last lines of its log. A child that would need more than
``max_restarts`` restarts within ``window_s`` seconds is crash-looping: :meth:`Supervisor.poll`
returns the reason and ``up`` stops everything with exit code 1. A child marked
``finished_on_success`` (a replay that reached the end of its file) is not restarted when it
exits 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from marketflow_assets.runtime.services import die_with_parent

logger = logging.getLogger("marketflow.up")


@dataclasses.dataclass
class Child:
    """A supervised process: ``argv`` run in ``cwd`` with the shared environment plus ``env``
    (a ``None`` value removes a variable), output appended to ``log_path``."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    ready: bool = False
    env: dict[str, str | None] = dataclasses.field(default_factory=dict)
    cwd: Path | None = None
    stop_signal: int = signal.SIGTERM  # first signal of a stop (dagster dev wants SIGINT)
    finished_on_success: bool = False  # exit 0 means "done" (a finite replay): not restarted
    started_at: float = 0.0
    restarts: list[float] = dataclasses.field(default_factory=list)  # monotonic restart times
    restart_at: float | None = None  # monotonic time of a pending restart
    finished: bool = False


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """Restart with exponential backoff; more than ``max_restarts`` within ``window_s`` = crash
    loop."""

    max_restarts: int = 5
    window_s: float = 300.0
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def delay(self, restarts: int) -> float:
        """Seconds before restart number ``restarts`` (1-based) of the current window."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** max(0, restarts - 1))


def start_child(child: Child, env: dict[str, str], cwd: Path | None = None) -> None:
    child.log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(env)
    for key, value in child.env.items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    with open(child.log_path, "ab") as log_file:
        child.proc = subprocess.Popen(
            child.argv,
            cwd=child.cwd or cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # signals of the terminal reach `up` only
            preexec_fn=die_with_parent,
        )
    child.started_at = time.monotonic()
    logger.info("%s: started (pid %s, log %s)", child.name, child.proc.pid, child.log_path)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def stop_child(child: Child, timeout: float = 20.0) -> None:
    """Stop a child's whole process group: its stop signal, then SIGKILL after ``timeout``."""
    child.restart_at = None
    proc = child.proc
    if proc is None:
        return
    pgid = proc.pid
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, child.stop_signal)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0f s; killing it", child.name, timeout)
    # Whatever is left in the group (JVMs, run workers, webserver) goes now.
    _kill_group(pgid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    child.proc = None
    logger.info("%s: stopped", child.name)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Starts ``children`` in order, restarts those that exit, stops them in reverse order."""

    def __init__(
        self,
        children: list[Child],
        env: dict[str, str],
        policy: RestartPolicy | None = None,
        cwd: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.children = children
        self.env = env
        self.policy = policy or RestartPolicy()
        self.cwd = cwd
        self.clock = clock

    def start(self, child: Child) -> None:
        if child not in self.children:
            self.children.append(child)
        start_child(child, self.env, self.cwd)

    def stop_all(self) -> None:
        """Stop every child, last started first."""
        for child in reversed(self.children):
            try:
                stop_child(child)
            except Exception:  # noqa: BLE001 - keep stopping the others
                logger.exception("%s: error while stopping", child.name)

    def restart_now(self, name: str, why: str) -> None:
        """Stop child ``name`` and start it again at once (not counted as a crash)."""
        for child in self.children:
            if child.name == name and not child.finished:
                logger.info("%s: restarting now (%s)", name, why)
                stop_child(child)
                start_child(child, self.env, self.cwd)

    def crash_loop(self, name: str, restarts: list[float], what: str, log_path: Path) -> str | None:
        """Count a restart of ``name`` in ``restarts`` (pruned to the window, appended to);
        the crash-loop reason when it exceeds the policy, else None."""
        now = self.clock()
        restarts[:] = [t for t in restarts if now - t < self.policy.window_s]
        if len(restarts) >= self.policy.max_restarts:
            return (
                f"{name} is crash-looping: it {what} after {len(restarts)} restart(s) within "
                f"{self.policy.window_s:.0f} s (limit {self.policy.max_restarts}); see {log_path}"
            )
        restarts.append(now)
        return None

    def poll(self) -> str | None:
        """Reap children that exited and schedule or perform their restarts.

        Returns None while all is well, else the one-line reason to stop the whole stack.
        """
        now = self.clock()
        for child in self.children:
            if child.finished:
                continue
            if child.proc is None:
                if child.restart_at is not None and now >= child.restart_at:
                    child.restart_at = None
                    restart = len(child.restarts)
                    logger.info("%s: restarting (restart %d)", child.name, restart)
                    start_child(child, self.env, self.cwd)
                continue
            code = child.proc.poll()
            if code is None:
                continue
            uptime = now - child.started_at
            _kill_group(child.proc.pid)  # its JVM / workers must not outlive it
            child.proc = None
            if code == 0 and child.finished_on_success:
                logger.info("%s: finished (exit code 0 after %.0f s)", child.name, uptime)
                child.finished = True
                continue
            window = self.policy.window_s
            reason = self.crash_loop(
                child.name, child.restarts, describe_exit(code), child.log_path
            )
            if reason is not None:
                logger.error("%s. Last lines of its log:\n%s", reason, tail(child.log_path))
                return reason
            delay = self.policy.delay(len(child.restarts))
            child.restart_at = now + delay
            logger.warning(
                "%s %s after %.0f s; restart %d of at most %d within %.0f s, in %.3g s. "
                "Last lines of %s:\n%s",
                child.name,
                describe_exit(code),
                uptime,
                len(child.restarts),
                self.policy.max_restarts,
                window,
                delay,
                child.log_path,
                tail(child.log_path, 8),
            )
        return None
