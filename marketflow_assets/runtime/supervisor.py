"""Child processes of ``marketflow up``: start, stop, and restart with backoff when they exit.

Each :class:`Child` runs in its own process group (session) with its output appended to its log,
so a terminal's Ctrl-C or SIGHUP reaches ``up`` only and ``up`` stops the children in order.
Stopping or reaping a child always ends its whole process group (Spark's JVM, Dagster's
webserver, daemon and run workers), so nothing of a dead child keeps running beside its
replacement.

:class:`Supervisor` watches the children: one that exits is restarted after an exponential
backoff (``backoff_s · 2^(n−1)``, at most ``max_backoff_s``, n = its restarts within the window),
with a log line and the last lines of its log. A child marked ``finished_on_success`` (a replay
that reached the end of its file) is not restarted when it exits 0.

Waiting is not crashing. Each child names the services it ``needs`` (``kafka``, ``postgres``);
:class:`Dependencies` probes them (every few seconds, and whenever a child exits). A child that
exits while one of them is down, or was down since the child started, is *waiting*: restarted
with backoff once the service is back, never counted as a crash. A service going away and coming
back is one log line and one alert each way, the second with how long it was away.

A child that would need more than ``max_restarts`` restarts within ``window_s`` seconds while
its services are up is crash-looping: it alone is stopped (the others keep running) with one log
line and one alert, and ``up`` reports it when it stops. An ``essential`` child (ingest: the
collection) is never stopped: it is restarted every ``max_backoff_s`` seconds instead, and it is
restarted with backoff even while a service it needs is down (ingest spools meanwhile).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import subprocess
import threading
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
    needs: tuple[str, ...] = ()  # services it cannot work without: "kafka", "postgres"
    essential: bool = False  # never stopped by the supervisor (ingest: the collection)
    waiting_for: str | None = None  # a needed service that was down when it last exited
    waits: int = 0  # exits while waiting for a service, since it last ran with them up
    looping: bool = False  # an essential child past its crash-loop limit (alerted once)
    # output lines (exact, without the line end) left out of the log: what a child's tools print
    # on every start and that says nothing to a user (see JVM_NOISE)
    quiet_lines: tuple[bytes, ...] = ()
    output_pump: threading.Thread | None = None  # copies its output to the log (quiet_lines)
    # a port it serves on 127.0.0.1 that the children after it need: ``up`` starts them once it
    # listens (the Dagster code server, for the webserver and the daemon)
    listens_on: int | None = None
    # what it gets when `up` dies (kill -9): SIGTERM, or SIGKILL for a child that must go even
    # when a SIGTERM reaches it at a moment it does not act on (the Dagster webserver and daemon
    # were seen to live on: their state is in PostgreSQL, nothing to finish)
    death_signal: int = signal.SIGTERM
    # added to its scheduling niceness (os.nice): the batch work (the streaming job, Dagster)
    # yields the cores to the latency-critical live path and ingest when they compete
    nice: int = 0


#: What every JVM Spark starts prints first: Spark's launcher always adds the incubating Vector
#: API module (``--add-modules=jdk.incubator.vector``; only MLlib's BLAS uses it, with a fallback)
#: and Java warns about incubator modules on stderr, with no option to turn that off.
JVM_NOISE = (b"WARNING: Using incubator modules: jdk.incubator.vector",)


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


Alert = Callable[[str, str, str, str], object]  # (key, previous state, state, text)


def log_alert(key: str, previous: str, state: str, text: str) -> bool:
    """The alert sink when none is handed in: a log line."""
    logger.warning("ALERT %s", text)
    return True


class Dependencies:
    """Whether the services children need are up: ``probes`` maps a name (``kafka``,
    ``postgres``) to a cheap check (True = up; an exception = down). Looks every ``every_s``
    seconds (:meth:`refresh`), or at once (:meth:`probe`); a watcher that knows better (``up``
    restarting an embedded service) sets the state with :meth:`mark`. Each change of state is
    one log line and one ``alert``; the way back says how long the service was away."""

    def __init__(
        self,
        probes: dict[str, Callable[[], bool]],
        alert: Alert = log_alert,
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.probes = probes
        self.alert = alert
        self.every_s = every_s
        self.clock = clock
        self.down_since: dict[str, float] = {}  # services down now: since when
        self.back_at: dict[str, float] = {}  # when each came back last
        self.next_refresh = 0.0

    def is_up(self, name: str) -> bool:
        return name not in self.down_since

    def down_during(self, name: str, since: float) -> bool:
        """True when ``name`` is down now or was down at some time after ``since``."""
        return name in self.down_since or self.back_at.get(name, float("-inf")) > since

    def probe(self, name: str) -> bool:
        """Look at ``name`` now (an unknown name is up); records and returns its state."""
        check = self.probes.get(name)
        if check is None:
            return True
        try:
            up, why = bool(check()), ""
        except Exception as exc:  # noqa: BLE001 - any failure of the check means down
            up, why = False, " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        self.mark(name, up, why)
        return up

    def refresh(self, force: bool = False) -> None:
        """Probe every service when due (every ``every_s`` s)."""
        now = self.clock()
        if not force and now < self.next_refresh:
            return
        self.next_refresh = now + self.every_s
        for name in self.probes:
            self.probe(name)

    def mark(self, name: str, up: bool, why: str = "") -> None:
        """Record the state of ``name``; one log line and one alert when it changed."""
        now = self.clock()
        if not up and name not in self.down_since:
            self.down_since[name] = now
            text = (
                f"FAILURE: Marketflow dependency {name} is unavailable"
                + (f" ({why})" if why else "")
                + "; the components that need it wait for it"
            )
            logger.warning(
                "%s: unavailable%s; components that need it wait for it",
                name,
                f" ({why})" if why else "",
            )
            self.alert(f"dependency:{name}", "up", "down", text)
        elif up and name in self.down_since:
            away = now - self.down_since.pop(name)
            self.back_at[name] = now
            logger.info("%s: available again after %.0f s", name, away)
            self.alert(
                f"dependency:{name}",
                "down",
                "up",
                f"RESOLVED: Marketflow dependency {name} is back after {away:.0f} s",
            )


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
            stdout=subprocess.PIPE if child.quiet_lines else log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # signals of the terminal reach `up` only
            preexec_fn=functools.partial(_prepare_child, child.death_signal, child.nice),
        )
    if child.quiet_lines:
        child.output_pump = threading.Thread(
            target=_copy_output,
            args=(child.proc.stdout, child.log_path, child.quiet_lines),
            name=f"{child.name}-output",
            daemon=True,
        )
        child.output_pump.start()
    child.started_at = time.monotonic()
    logger.info("%s: started (pid %s, log %s)", child.name, child.proc.pid, child.log_path)


#: The scheduling group of the calling process's session, where the kernel groups processes by
#: session (``CONFIG_SCHED_AUTOGROUP``, on unless ``/proc/sys/kernel/sched_autogroup_enabled`` is
#: 0): the CPU is shared between the groups first, each weighted by this file's niceness, so a
#: process's own niceness counts only against processes of its session.
AUTOGROUP = Path("/proc/self/autogroup")


def _prepare_child(death_signal: int, nice: int) -> None:
    """``preexec_fn`` of a child: its death signal (:func:`die_with_parent`) and niceness. A
    child starts a session of its own (``start_new_session``, before this runs), so with
    autogroups on, ``os.nice`` alone would not make it yield to the other children (measured:
    two spinning processes on one core shared it 50/50 with one at niceness 5); its session's
    group gets the same niceness (``/proc/self/autogroup``; raising it needs no privilege)."""
    die_with_parent(death_signal)
    if nice:
        niceness = os.nice(nice)
        with contextlib.suppress(OSError):  # no autogroups here: os.nice is what counts
            AUTOGROUP.write_text(str(niceness))


def _copy_output(pipe, log_path: Path, quiet: tuple[bytes, ...]) -> None:
    """Append what a child writes to ``pipe`` to ``log_path`` line by line, leaving out the
    ``quiet`` lines, until every process holding the pipe (the child and what it started, such
    as a JVM) has closed it."""
    with pipe, open(log_path, "ab") as log:
        for line in pipe:
            if line.rstrip(b"\r\n") not in quiet:
                try:
                    log.write(line)
                    log.flush()
                except OSError:  # disk full: the line is lost, the child is not blocked
                    pass


def drain_output(child: Child, timeout: float = 2.0) -> None:
    """Wait (at most ``timeout``) until the output of a child that exited is in its log, so
    its last lines can be read from there."""
    if child.output_pump is not None:
        child.output_pump.join(timeout)


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
    drain_output(child)
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
        dependencies: Dependencies | None = None,
        alert: Alert | None = None,
    ):
        self.children = children
        self.env = env
        self.policy = policy or RestartPolicy()
        self.cwd = cwd
        self.clock = clock
        self.dependencies = dependencies or Dependencies({}, clock=clock)
        self.alert = alert or self.dependencies.alert
        self.given_up: dict[str, str] = {}  # child name -> why it was stopped (a crash loop)

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

    def _missing(self, child: Child) -> list[str]:
        """The services ``child`` needs that are down now or went down since it started."""
        deps = self.dependencies
        return [
            name
            for name in child.needs
            if not deps.probe(name) or deps.down_during(name, child.started_at)
        ]

    def _wait(self, child: Child, missing: list[str], what: str, uptime: float) -> None:
        """``child`` exited for want of a service: restart it with backoff once it is back."""
        if uptime > self.policy.max_backoff_s:  # it ran a while: a new outage
            child.waits = 0
        child.waits += 1
        delay = self.policy.delay(child.waits)
        child.restart_at = self.clock() + delay
        if child.waits == 1:  # once per outage; the service's own lines say the rest
            logger.warning(
                "%s %s after %.0f s; %s went away meanwhile: waiting for it (not a crash)",
                child.name,
                what,
                uptime,
                " and ".join(missing),
            )
        child.waiting_for = missing[0]

    def _crashed(self, child: Child, what: str, uptime: float) -> None:
        """``child`` exited while its services were up: restart it, or stop it when it is
        crash-looping (an essential one is restarted every ``max_backoff_s`` instead)."""
        now = self.clock()
        child.waiting_for, child.waits = None, 0
        reason = self.crash_loop(child.name, child.restarts, what, child.log_path)
        if reason is not None and child.essential:
            if child.restarts:
                child.restarts.pop(0)  # keep counting within the window
            child.restarts.append(now)
            child.restart_at = now + self.policy.max_backoff_s
            if not child.looping:
                child.looping = True
                logger.error(
                    "%s; it is never stopped: restarting it every %.0f s. Last lines of its "
                    "log:\n%s",
                    reason,
                    self.policy.max_backoff_s,
                    tail(child.log_path),
                )
                self.alert(
                    f"component:{child.name}",
                    "running",
                    "crash-looping",
                    f"FAILURE: Marketflow {reason}; restarted every "
                    f"{self.policy.max_backoff_s:.0f} s",
                )
            return
        if reason is not None:
            child.finished = True
            self.given_up[child.name] = reason
            logger.error(
                "%s: stopped (the other components keep running). Last lines of its log:\n%s",
                reason,
                tail(child.log_path),
            )
            self.alert(
                f"component:{child.name}",
                "running",
                "stopped",
                f"FAILURE: Marketflow {reason}; it is stopped, the other components keep running",
            )
            return
        child.looping = False
        delay = self.policy.delay(len(child.restarts))
        child.restart_at = now + delay
        logger.warning(
            "%s %s after %.0f s; restart %d of at most %d within %.0f s, in %.3g s. "
            "Last lines of %s:\n%s",
            child.name,
            what,
            uptime,
            len(child.restarts),
            self.policy.max_restarts,
            self.policy.window_s,
            delay,
            child.log_path,
            tail(child.log_path, 8),
        )

    def poll(self) -> None:
        """Reap children that exited and schedule or perform their restarts; a child waiting
        for a service starts again as soon as the service is back."""
        self.dependencies.refresh()
        now = self.clock()
        for child in self.children:
            if child.finished:
                continue
            if child.proc is None:
                waiting = child.waiting_for
                if waiting is not None and child.restart_at is not None:
                    if self.dependencies.is_up(waiting):
                        child.restart_at = min(child.restart_at, now)  # it is back: go now
                    elif now >= child.restart_at and not child.essential:  # look again, later
                        if not self.dependencies.probe(waiting):
                            child.restart_at = now + self.policy.delay(child.waits)
                            continue
                if child.restart_at is not None and now >= child.restart_at:
                    child.restart_at = None
                    if waiting is not None and self.dependencies.is_up(waiting):
                        logger.info("%s: %s is available: starting it again", child.name, waiting)
                        child.waiting_for = None
                    elif waiting is not None:  # essential: it collects (spools) meanwhile
                        logger.info("%s: starting it again (%s still down)", child.name, waiting)
                    else:
                        logger.info("%s: restarting (restart %d)", child.name, len(child.restarts))
                    start_child(child, self.env, self.cwd)
                continue
            code = child.proc.poll()
            if code is None:
                continue
            uptime = now - child.started_at
            _kill_group(child.proc.pid)  # its JVM / workers must not outlive it
            drain_output(child)  # its last lines are in its log before they are quoted
            child.proc = None
            if code == 0 and child.finished_on_success:
                logger.info("%s: finished (exit code 0 after %.0f s)", child.name, uptime)
                child.finished = True
                continue
            missing = self._missing(child)
            if missing:
                self._wait(child, missing, describe_exit(code), uptime)
            else:
                self._crashed(child, describe_exit(code), uptime)
