"""The supervisor behind `marketflow up`, on real processes: restart with backoff, whole process
groups reaped, crash-loop detection, finished replays left alone, stop in reverse order."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import psutil

from marketflow_assets.runtime.supervisor import Child, RestartPolicy, Supervisor

PY = sys.executable


def _run_until(supervisor: Supervisor, predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reason = supervisor.poll()
        if reason is not None or predicate():
            return reason
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
        reason = _run_until(
            supervisor, lambda: child.proc is not None and child.proc.pid != first.pid
        )
        assert reason is None
        grandchild.wait(5)  # the orphaned grandchild went with its group
        assert "worker was killed by SIGKILL" in caplog.text
        assert "restart 1 of at most 5" in caplog.text
    finally:
        supervisor.stop_all()
    assert child.proc is None


def test_crash_loop_is_reported_after_max_restarts(tmp_path, caplog):
    child = Child("flaky", [PY, "-c", "print('boom'); raise SystemExit(3)"], tmp_path / "f.log")
    policy = RestartPolicy(max_restarts=2, window_s=60, backoff_s=0.3)
    supervisor = Supervisor([], dict(os.environ), policy)
    caplog.set_level(logging.INFO, logger="marketflow.up")
    supervisor.start(child)
    started = time.monotonic()
    reason = _run_until(supervisor, lambda: False)
    elapsed = time.monotonic() - started
    assert reason is not None and reason.startswith("flaky is crash-looping")
    assert "exited with code 3 after 2 restart(s) within 60 s" in reason
    assert elapsed >= 0.3 + 0.6  # backoff 0.3 s, then 0.6 s
    assert caplog.text.count("flaky: started") == 3
    assert "boom" in caplog.text  # the last lines of its log are shown
    supervisor.stop_all()


def test_finished_replay_is_not_restarted_and_stop_is_in_reverse_order(tmp_path, caplog):
    done = Child("replay", [PY, "-c", "pass"], tmp_path / "r.log", finished_on_success=True)
    a = Child("a", [PY, "-c", "import time; time.sleep(300)"], tmp_path / "a.log")
    b = Child("b", [PY, "-c", "import time; time.sleep(300)"], tmp_path / "b.log")
    supervisor = Supervisor([], dict(os.environ), RestartPolicy(backoff_s=0.1))
    for child in (done, a, b):
        supervisor.start(child)
    caplog.set_level(logging.INFO, logger="marketflow.up")
    assert _run_until(supervisor, lambda: done.finished) is None
    time.sleep(0.3)
    assert supervisor.poll() is None and done.proc is None  # not restarted
    pids = [a.proc.pid, b.proc.pid]
    supervisor.stop_all()
    stopped = [line for line in caplog.text.splitlines() if ": stopped" in line]
    assert [line.split()[-2].rstrip(":") for line in stopped] == ["b", "a"]
    assert not any(psutil.pid_exists(p) for p in pids)
