"""The supervisor behind `marketflow up`, on real processes: restart with backoff, whole process
groups reaped, a crash loop stops only that child (never an essential one), a child whose service
is down waits for it (alerted once each way), finished replays left alone, stop in reverse
order."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from marketflow_assets.runtime.services import free_port
from marketflow_assets.runtime.supervisor import (
    AUTOGROUP,
    Child,
    Dependencies,
    RestartPolicy,
    Supervisor,
)

PY = sys.executable


def _run_until(supervisor: Supervisor, predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        supervisor.poll()
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_backoff_doubles_up_to_the_cap():
    policy = RestartPolicy(backoff_s=1.0, max_backoff_s=5.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


def test_killed_child_is_restarted_with_its_whole_group_reaped(tmp_path, caplog):
    # the child starts a grandchild in its process group (as Spark's driver starts a JVM)
    script = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    child = Child("worker", [PY, "-c", script], tmp_path / "worker.log")
    supervisor = Supervisor([], dict(os.environ), RestartPolicy(backoff_s=0.2))
    supervisor.start(child)
    try:
        first = psutil.Process(child.proc.pid)
        deadline = time.monotonic() + 20
        while not first.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        (grandchild,) = first.children()
        caplog.set_level(logging.INFO, logger="marketflow.up")
        os.kill(first.pid, signal.SIGKILL)
        _run_until(supervisor, lambda: child.proc is not None and child.proc.pid != first.pid)
        grandchild.wait(5)  # the orphaned grandchild went with its group
        assert "worker was killed by SIGKILL" in caplog.text
        assert "restart 1 of at most 5" in caplog.text
    finally:
        supervisor.stop_all()
    assert child.proc is None


def test_crash_loop_stops_only_that_child_and_alerts(tmp_path, caplog):
    alerts = []
    flaky = Child("flaky", [PY, "-c", "print('boom'); raise SystemExit(3)"], tmp_path / "f.log")
    other = Child("other", [PY, "-c", "import time; time.sleep(300)"], tmp_path / "o.log")
    policy = RestartPolicy(max_restarts=2, window_s=60, backoff_s=0.3)
    supervisor = Supervisor([], dict(os.environ), policy, alert=lambda *a: alerts.append(a))
    caplog.set_level(logging.INFO, logger="marketflow.up")
    supervisor.start(other)
    supervisor.start(flaky)
    started = time.monotonic()
    try:
        _run_until(supervisor, lambda: flaky.finished)
        elapsed = time.monotonic() - started
        reason = supervisor.given_up["flaky"]
        assert reason.startswith("flaky is crash-looping")
        assert "exited with code 3 after 2 restart(s) within 60 s" in reason
        assert elapsed >= 0.3 + 0.6  # backoff 0.3 s, then 0.6 s
        assert caplog.text.count("flaky: started") == 3
        assert "boom" in caplog.text  # the last lines of its log are shown
        assert [(key, state) for key, _, state, _ in alerts] == [("component:flaky", "stopped")]
        assert "the other components keep running" in alerts[0][3]
        time.sleep(0.5)
        supervisor.poll()
        assert flaky.proc is None and caplog.text.count("flaky: started") == 3  # stays stopped
        assert other.proc.poll() is None  # the others run on
    finally:
        supervisor.stop_all()


def test_an_essential_child_is_never_stopped_for_a_crash_loop(tmp_path, caplog):
    """Ingest (the collection) crash-looping: one alert, then restarts every max_backoff_s."""
    alerts = []
    argv = [PY, "-c", "raise SystemExit(3)"]
    ingest = Child("ingest", argv, tmp_path / "i.log", essential=True)
    policy = RestartPolicy(max_restarts=1, window_s=60, backoff_s=0.1, max_backoff_s=0.3)
    supervisor = Supervisor([], dict(os.environ), policy, alert=lambda *a: alerts.append(a))
    caplog.set_level(logging.INFO, logger="marketflow.up")
    supervisor.start(ingest)
    try:
        _run_until(supervisor, lambda: caplog.text.count("ingest: started") >= 5)
        assert not ingest.finished and not supervisor.given_up
        assert [(key, state) for key, _, state, _ in alerts] == [
            ("component:ingest", "crash-looping")
        ]
        assert "it is never stopped: restarting it every 0 s" in caplog.text
    finally:
        supervisor.stop_all()


class _Service:
    """A real TCP service that can go away and come back on the same port."""

    def __init__(self):
        self.port = free_port()
        self.sock = None
        self.up()

    def up(self):
        self.sock = socket.create_server(("127.0.0.1", self.port))

    def down(self):
        self.sock.close()
        self.sock = None

    def probe(self) -> bool:
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        return True


def test_a_child_whose_dependency_is_down_waits_and_resumes(tmp_path, caplog):
    """The child exits because its service is gone: not a crash (even with --max-restarts 0),
    one alert when the service goes, one when it is back with the outage's length; the child
    starts again by itself."""
    service = _Service()
    # the child checks its service every 0.1 s and exits 3 when it is gone (like `live` did)
    script = (
        "import socket, sys, time\n"
        "while True:\n"
        f"    socket.create_connection(('127.0.0.1', {service.port}), timeout=1).close()\n"
        "    time.sleep(0.1)\n"
    )
    alerts = []
    deps = Dependencies({"db": service.probe}, lambda *a: alerts.append(a), every_s=0.2)
    child = Child("reader", [PY, "-c", script], tmp_path / "r.log", needs=("db",))
    policy = RestartPolicy(max_restarts=0, window_s=60, backoff_s=0.2, max_backoff_s=0.4)
    supervisor = Supervisor([], dict(os.environ), policy, dependencies=deps)
    caplog.set_level(logging.INFO, logger="marketflow.up")
    supervisor.start(child)
    try:
        first = child.proc.pid
        time.sleep(0.5)
        service.down()
        _run_until(supervisor, lambda: child.proc is None and child.waiting_for == "db")
        time.sleep(1.5)  # several backoff periods: it is not started while its service is gone
        supervisor.poll()
        assert child.proc is None and caplog.text.count("reader: started") == 1
        service.up()
        _run_until(supervisor, lambda: child.proc is not None and child.proc.pid != first)
        time.sleep(0.5)
        supervisor.poll()
        assert child.proc.poll() is None and not child.finished and not supervisor.given_up
        assert caplog.text.count("waiting for it (not a crash)") == 1
        assert "reader: db is available: starting it again" in caplog.text
        assert [(key, prev, state) for key, prev, state, _ in alerts] == [
            ("dependency:db", "up", "down"),
            ("dependency:db", "down", "up"),
        ]
        assert alerts[0][3].startswith("FAILURE: Marketflow dependency db is unavailable")
        assert re.fullmatch(r"RESOLVED: Marketflow dependency db is back after \d+ s", alerts[1][3])
    finally:
        supervisor.stop_all()
        if service.sock is not None:
            service.down()


def test_a_real_crash_while_the_dependency_is_up_still_counts(tmp_path):
    service = _Service()
    deps = Dependencies({"db": service.probe}, lambda *a: None, every_s=0.2)
    child = Child("broken", [PY, "-c", "raise SystemExit(3)"], tmp_path / "b.log", needs=("db",))
    policy = RestartPolicy(max_restarts=1, window_s=60, backoff_s=0.1)
    supervisor = Supervisor([], dict(os.environ), policy, dependencies=deps)
    supervisor.start(child)
    try:
        _run_until(supervisor, lambda: child.finished)
        assert "broken is crash-looping" in supervisor.given_up["broken"]
    finally:
        supervisor.stop_all()
        service.down()


def test_finished_replay_is_not_restarted_and_stop_is_in_reverse_order(tmp_path, caplog):
    done = Child("replay", [PY, "-c", "pass"], tmp_path / "r.log", finished_on_success=True)
    a = Child("a", [PY, "-c", "import time; time.sleep(300)"], tmp_path / "a.log")
    b = Child("b", [PY, "-c", "import time; time.sleep(300)"], tmp_path / "b.log")
    supervisor = Supervisor([], dict(os.environ), RestartPolicy(backoff_s=0.1))
    for child in (done, a, b):
        supervisor.start(child)
    caplog.set_level(logging.INFO, logger="marketflow.up")
    _run_until(supervisor, lambda: done.finished)
    time.sleep(0.3)
    supervisor.poll()
    assert done.proc is None  # not restarted
    pids = [a.proc.pid, b.proc.pid]
    supervisor.stop_all()
    stopped = [line for line in caplog.text.splitlines() if ": stopped" in line]
    assert [line.split()[-2].rstrip(":") for line in stopped] == ["b", "a"]
    assert not any(psutil.pid_exists(p) for p in pids)


def test_an_essential_child_is_restarted_even_while_its_dependency_is_down(tmp_path, caplog):
    """Ingest keeps collecting (into its spool) while the broker is away: restarted with backoff,
    never counted as crashing."""
    service = _Service()
    service.down()
    deps = Dependencies({"kafka": service.probe}, lambda *a: None, every_s=0.2)
    argv = [PY, "-c", "raise SystemExit(3)"]
    ingest = Child("ingest", argv, tmp_path / "i.log", needs=("kafka",), essential=True)
    policy = RestartPolicy(max_restarts=0, window_s=60, backoff_s=0.1, max_backoff_s=0.2)
    supervisor = Supervisor([], dict(os.environ), policy, dependencies=deps)
    caplog.set_level(logging.INFO, logger="marketflow.up")
    supervisor.start(ingest)
    try:
        _run_until(supervisor, lambda: caplog.text.count("ingest: started") >= 4)
        assert not ingest.restarts and not ingest.looping  # not one crash counted
        assert "ingest: starting it again (kafka still down)" in caplog.text
    finally:
        supervisor.stop_all()


def test_quiet_lines_are_left_out_of_a_childs_log_even_from_its_grandchild(tmp_path):
    """Issue 28 (quiet logs): the JVM's "Using incubator modules" line (printed by every JVM
    Spark starts, a grandchild of the supervised process) stays out of the log; every other line
    of child and grandchild arrives, in order."""
    from marketflow_assets.runtime.supervisor import JVM_NOISE

    noise = JVM_NOISE[0].decode()
    grandchild = f"import sys; print({noise!r}, file=sys.stderr); print('late')"
    script = (
        "import subprocess, sys; "
        f"print({noise!r}, file=sys.stderr, flush=True); print('first', flush=True); "
        "print('WARNING: a real one', flush=True); "
        f"subprocess.run([sys.executable, '-c', {grandchild!r}])"
    )
    log = tmp_path / "job.log"
    child = Child("job", [PY, "-c", script], log, quiet_lines=JVM_NOISE, finished_on_success=True)
    supervisor = Supervisor([], dict(os.environ), RestartPolicy(backoff_s=0.2))
    supervisor.start(child)
    try:
        _run_until(supervisor, lambda: "late" in log.read_text(), timeout=20)
    finally:
        supervisor.stop_all()
    assert log.read_text().splitlines() == ["first", "WARNING: a real one", "late"]


def test_a_child_gets_its_death_signal_when_its_parent_is_killed(tmp_path):
    """kill -9 of the supervising process: a child with ``death_signal=SIGKILL`` goes even when
    it ignores SIGTERM; one with the default SIGTERM that ignores it lives on."""
    ignoring = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    parent = (
        "import signal, sys, time\n"
        "from pathlib import Path\n"
        "from marketflow_assets.runtime.supervisor import Child, start_child\n"
        "log = Path(sys.argv[1])\n"
        "for name, sig in (('hard', signal.SIGKILL), ('soft', signal.SIGTERM)):\n"
        f"    child = Child(name, [sys.executable, '-c', {ignoring!r}], log, death_signal=sig)\n"
        "    start_child(child, {})\n"
        "    print(name, child.proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = psutil.Popen(
        [PY, "-c", parent, str(tmp_path / "child.log")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    pids = {}
    try:
        for _ in range(2):
            name, pid = proc.stdout.readline().split()
            pids[name] = int(pid)
        time.sleep(1.0)  # both have set their SIGTERM handler
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while psutil.pid_exists(pids["hard"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        hard_alive = psutil.pid_exists(pids["hard"]) and (
            psutil.Process(pids["hard"]).status() != psutil.STATUS_ZOMBIE
        )
        assert not hard_alive
        assert psutil.Process(pids["soft"]).is_running()  # SIGTERM ignored: it lives on
    finally:
        for pid in pids.values():
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        if proc.poll() is None:
            proc.kill()


def _niced_and_plain(argv: list[str], tmp_path, nice: int) -> None:
    """Run ``argv`` as two children of one supervisor until both end: ``niced`` with ``nice``
    (output in niced.log), ``plain`` without (plain.log)."""
    niced = Child("niced", argv, tmp_path / "niced.log", finished_on_success=True)
    niced.nice = nice
    plain = Child("plain", argv, tmp_path / "plain.log", finished_on_success=True)
    supervisor = Supervisor([], dict(os.environ), RestartPolicy(backoff_s=0.2))
    supervisor.start(niced)
    supervisor.start(plain)
    try:
        _run_until(supervisor, lambda: niced.finished and plain.finished, timeout=20)
    finally:
        supervisor.stop_all()


def test_a_child_and_what_it_starts_run_with_its_niceness(tmp_path):
    """``Child.nice`` (``marketflow up``'s batch children: MARKETFLOW_BATCH_NICE) is added to the
    child's niceness, inherited by the processes it starts; other children keep the default."""
    script = (
        "import os, subprocess, sys; print(os.nice(0), flush=True); "
        "subprocess.run([sys.executable, '-c', 'import os; print(os.nice(0))'])"
    )
    base = os.nice(0)
    _niced_and_plain([PY, "-c", script], tmp_path, nice=7)
    assert (tmp_path / "niced.log").read_text().split() == [str(min(base + 7, 19))] * 2
    assert (tmp_path / "plain.log").read_text().split() == [str(base)] * 2


def _autogroups_on() -> bool:
    flag = Path("/proc/sys/kernel/sched_autogroup_enabled")
    return flag.exists() and flag.read_text().strip() == "1" and AUTOGROUP.exists()


@pytest.mark.skipif(not _autogroups_on(), reason="the kernel does not group processes by session")
def test_a_niced_child_yields_the_cpu_to_children_of_other_sessions(tmp_path):
    """Each child runs in a session of its own, and with autogroups the kernel shares the CPU
    between sessions before it looks at a process's niceness: the niced child's session gets
    the niceness too, so two children spinning on one core share it about 3:1 (niceness 5), not
    50/50 as they did with ``os.nice`` alone."""
    script = (
        "import os, time; t = time.monotonic()\n"
        "while time.monotonic() - t < 2.0: pass\n"
        "print(os.times().user, open('/proc/self/autogroup').read().split()[-1], flush=True)"
    )
    # both on one core: they must share it
    _niced_and_plain(["taskset", "-c", "0", PY, "-c", script], tmp_path, nice=5)
    niced_cpu, niced_group = (tmp_path / "niced.log").read_text().split()
    plain_cpu, plain_group = (tmp_path / "plain.log").read_text().split()
    assert (niced_group, plain_group) == (str(min(os.nice(0) + 5, 19)), "0")
    assert float(plain_cpu) > 2 * float(niced_cpu), (plain_cpu, niced_cpu)
