"""The stream processes' garbage collector settings (``runtime/heap.py``), in a fresh
interpreter (a frozen heap would stay frozen in the test process)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from marketflow_assets.runtime.heap import KEEP_FREED

REPO = Path(__file__).resolve().parents[2]


def _script_answer(script: str, *args: str, **run) -> dict:
    """The JSON line a script prints last, run in a fresh interpreter (``run``: env, cwd)."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=True, **run
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


SCRIPT = """
import gc, json, weakref
import pandas, pyarrow.csv, kafka.consumer  # what a stream process loads
from marketflow_assets.runtime.heap import settle_startup_heap

class Node:
    pass

def cycle():
    node = Node()
    node.me = node  # freed by the collector only
    return weakref.ref(node)

tracked = len(gc.get_objects())
frozen = settle_startup_heap("test")
walked = len(gc.get_objects())  # what a full collection walks now
explicit = cycle()
gc.collect()
# no explicit collection: the cycle goes once enough new objects follow it
automatic = cycle()
keep = [[] for _ in range(200_000)]
print(json.dumps({
    "tracked": tracked, "frozen": frozen, "walked": walked,
    "explicit_freed": explicit() is None, "automatic_freed": automatic() is None,
    "threshold": gc.get_threshold(),
}))
"""


def test_start_up_objects_leave_the_collectors_view_and_new_cycles_are_still_collected():
    from marketflow_assets.runtime.heap import OLDER_THRESHOLD, YOUNG_THRESHOLD

    result = _script_answer(SCRIPT, cwd=REPO)
    # the imports' objects (tens of thousands) are set aside; a full collection walks only what
    # came after them
    assert result["tracked"] > 50_000
    assert result["frozen"] >= 0.9 * result["tracked"]
    assert result["walked"] < 0.02 * result["tracked"]
    assert result["explicit_freed"] and result["automatic_freed"]
    assert result["threshold"] == [YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD]


ARROW = """
import json
import pyarrow as pa
from marketflow_assets.runtime.heap import set_arrow_allocator
from marketflow_assets.settings import load_live_settings
backend = set_arrow_allocator("test", load_live_settings().arrow_memory_pool)
column = pa.array([float(i) for i in range(15_000)])  # allocated by the chosen pool
print(json.dumps({"backend": backend, "pool": pa.default_memory_pool().backend_name,
                  "column_pool_bytes": pa.default_memory_pool().bytes_allocated()}))
"""


def _arrow_pool(tmp_path, env: dict[str, str | None]) -> dict:
    return _script_answer(
        ARROW,
        cwd=tmp_path,  # no .env
        env={
            k: v for k, v in {**os.environ, "PYTHONPATH": str(REPO), **env}.items() if v is not None
        },
    )


def test_live_arrow_allocates_with_malloc_unless_the_environment_chooses(tmp_path):
    chosen = _arrow_pool(tmp_path, {"ARROW_DEFAULT_MEMORY_POOL": None})
    assert chosen["backend"] == chosen["pool"] == "system"
    assert chosen["column_pool_bytes"] >= 15_000 * 8  # the column lives in that pool
    # an operator's ARROW_DEFAULT_MEMORY_POOL stands
    kept = _arrow_pool(tmp_path, {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"})
    assert kept["backend"] == kept["pool"] == "jemalloc"


def test_an_unknown_arrow_pool_is_a_config_error():
    from marketflow_assets.settings import ConfigError, load_live_settings

    with pytest.raises(ConfigError, match="ARROW_DEFAULT_MEMORY_POOL='tcmalloc' must be one of"):
        load_live_settings({"ARROW_DEFAULT_MEMORY_POOL": "tcmalloc"})


KEEP_SCRIPT = """
import ctypes, json, platform, sys

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
from marketflow_assets.runtime.heap import keep_freed_memory
kept = keep_freed_memory("test") if sys.argv[1] == "keep" else None
before = libc.mallinfo2()
blocks = [libc.malloc(4 << 20) for _ in range(8)]  # 8 blocks of 4 MiB, as a poll's buffers
during = libc.mallinfo2()
for block in blocks:
    libc.free(block)
after = libc.mallinfo2()
print(json.dumps({"kept": kept, "mapped": during.hblks - before.hblks,
                  "heap_after_free": after.arena, "free_after_free": after.fordblks}))
"""


def _freed_memory(env_extra: dict[str, str], mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    for name in KEEP_FREED:  # the operator's settings are the test's own
        if name not in env_extra:
            env.pop(name, None)
    return _script_answer(KEEP_SCRIPT, mode, env=env)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_stream_processes_keep_freed_memory_for_the_next_poll():
    """By default glibc maps each 4 MiB block on its own and unmaps it when freed (the next
    poll faults those pages in again); with keep_freed_memory the blocks come from the heap and
    stay there, free, once released. An operator's MALLOC_* settings stand."""
    default = _freed_memory({}, "default")
    assert default["mapped"] == 8
    kept = _freed_memory({}, "keep")
    assert kept["kept"] is True
    assert kept["mapped"] == 0
    assert kept["free_after_free"] >= 8 * (4 << 20)  # freed, still the process's
    operator = _freed_memory({"MALLOC_MMAP_THRESHOLD_": "131072"}, "keep")
    assert operator["kept"] is False and operator["mapped"] == 8


WARM_SCRIPT = """
import json, resource, sys
from datetime import UTC, datetime
from marketflow_assets.ingest.command import encoded_sample_poll
from marketflow_assets.ingest.sources import simulate_polls
from marketflow_assets.ingest.validate import validate_poll
from marketflow_assets.runtime.heap import keep_freed_memory, warm_heap

coins = 3000
keep_freed_memory("test")
if sys.argv[1] == "warm":
    warm_heap("test", encoded_sample_poll(coins))
faults, held = [], None
for ts, records in simulate_polls(coins, 5, datetime(2026, 3, 2, tzinfo=UTC), 30, 4):
    messages = validate_poll(records, ts).good
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for message in messages:
        message.value_bytes()  # kept in the message, as ingest spools and sends it
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    held = messages  # as ingest: the previous poll is still held while the next is encoded
print(json.dumps({"faults": faults}))
"""


def _encoding_faults(mode: str) -> list[int]:
    return _script_answer(WARM_SCRIPT, mode, cwd=REPO)["faults"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_ingests_warm_up_leaves_its_first_polls_encoding_in_memory_already_faulted_in():
    """Encoding a poll's messages takes a fresh buffer per message and gives most of it back:
    without the warm-up each of the first two polls faults in about two pages a message; after
    it, the first polls fault in next to nothing, as every later poll does."""
    cold, warm = _encoding_faults("cold"), _encoding_faults("warm")
    assert min(cold[:2]) > 3000  # 3,000 messages a poll
    assert max(cold[2:]) < min(cold[:2]) / 10  # from the third poll on: the memory is there
    assert max(warm) < min(cold[:2]) / 10
