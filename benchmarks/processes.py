"""Child processes of the end-to-end benchmarks (``latency``, ``soak``): ``marketflow up``'s own
children (:mod:`marketflow_assets.runtime.up`) started by the benchmark, waited for, and always
stopped, with the logs of the last run kept under the scratch folder."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks import data


def scratch_run(name: str) -> tuple[Path, Path]:
    """``(scratch, work)``: the benchmark's scratch folder and a fresh run folder inside it."""
    scratch = data.bench_dir() / name
    scratch.mkdir(parents=True, exist_ok=True)
    return scratch, Path(tempfile.mkdtemp(prefix="run-", dir=scratch))


def create_topics(settings) -> None:
    """The price topic and its dead-letter twin (3 partitions each), unless they exist."""
    from kafka.admin import NewTopic

    from marketflow_assets import kafka_client

    admin = kafka_client.admin(settings.kafka_bootstrap, settings.kafka_security)
    with contextlib.suppress(Exception):
        admin.create_topics(
            [NewTopic(settings.kafka_topic, 3, 1), NewTopic(settings.dlq_topic, 3, 1)]
        )
    admin.close()


def wait_for(predicate, timeout: float, what: str, children) -> None:
    """Until ``predicate()`` holds (errors count as not yet); fails at once when a child exits,
    with the tail of its log."""
    from marketflow_assets.runtime.up import tail

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if child.proc is not None and child.proc.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with code {child.proc.returncode} while waiting for "
                    f"{what}:\n{tail(child.log_path)}"
                )
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop_children(children: list) -> None:
    """Stop the started children, last started first."""
    from marketflow_assets.runtime import up

    for child in reversed(children):
        up.stop_child(child)
    children.clear()


def clean_up(children: list, work: Path, scratch: Path) -> None:
    """Whatever happened: stop the children still running, keep the run's logs as
    ``scratch/last-logs`` and delete the run folder."""
    from marketflow_assets.runtime import up

    for child in reversed(children):
        with contextlib.suppress(Exception):
            up.stop_child(child)
    logs = work / "logs"
    if logs.is_dir():
        keep = scratch / "last-logs"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(logs, keep)
    shutil.rmtree(work, ignore_errors=True)
