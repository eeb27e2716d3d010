"""The stream processes' garbage collector settings (``runtime/heap.py``), in a fresh
interpreter (a frozen heap would stay frozen in the test process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

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

    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
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
    out = subprocess.run(
        [sys.executable, "-c", ARROW],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no .env
        check=True,
        env={
            k: v for k, v in {**os.environ, "PYTHONPATH": str(REPO), **env}.items() if v is not None
        },
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


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
