"""Memory management in the long-running stream processes: Python's cyclic garbage collector
(:func:`settle_startup_heap`), Arrow's allocator (:func:`set_arrow_allocator`), the C
library's return of freed memory (:func:`keep_freed_memory`) and the memory of the first rounds
of work, faulted in at start-up (:func:`warm_heap`).

A ``marketflow live`` process holds about 190,000 objects the collector tracks once its modules
are imported (pandas, pyarrow, kafka-python, psycopg2: functions, classes, their dicts), and
every whole-market poll creates tens of thousands more that live through a batch (the fetched
records, the decoded messages, the rows). With the default thresholds (700, 10, 10) those
survivors set off a full collection on most 15,000-coin polls, and a full collection walks all
of them: 66-89 ms of the poll's critical path each time, plus about 100 young collections
(8-15 ms), measured in the process with ``gc.callbacks``.

:func:`settle_startup_heap` takes what is alive at the end of start-up out of the collector's
view (:func:`gc.freeze`: those objects stay as long as the process, so walking them finds
nothing) and collects the young generation after 50,000 new objects instead of 700. Garbage
cycles created afterwards are still collected (tested); only their collection comes later, by
at most that many objects.
"""

from __future__ import annotations

import gc
import importlib
import logging
import time
from collections.abc import Callable, Iterable

from marketflow_assets.settings import ARROW_POOLS, malloc_set_by_environment

logger = logging.getLogger("marketflow.heap")

#: Young objects (allocations minus deallocations of tracked objects) between two collections
#: of the youngest generation; Python's default is 700.
YOUNG_THRESHOLD = 50_000
#: Collections of a generation before the next older one is collected (Python's default: 10).
OLDER_THRESHOLD = 20


def settle_startup_heap(process: str, preload: Iterable[str] = ()) -> int:
    """Collect once, then leave every object alive now out of future collections and collect
    less often (see the module docstring). Call it once per process, when ``process`` has
    imported what it runs with (``preload``: modules it imports only on first use, imported
    here first) and before its steady work; returns how many objects were set aside. Not for
    code that runs inside another program (a test process): its objects would stay too."""
    for name in preload:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)
    frozen = gc.get_freeze_count()
    logger.info(
        "%s: %d start-up objects left out of garbage collection (young generation collected "
        "every %d objects)",
        process,
        frozen,
        YOUNG_THRESHOLD,
    )
    return frozen


#: What :func:`keep_freed_memory` sets, by the environment variable an operator would set it
#: with: glibc's ``mallopt`` parameter (malloc.h) and its value. No trim of the heap's free top
#: below 256 MiB, and blocks below 32 MiB (glibc's upper limit for it) from the heap rather than
#: from a mapping of their own, which ``free`` unmaps at once.
KEEP_FREED = {
    "MALLOC_TRIM_THRESHOLD_": (-1, 256 * 1024 * 1024),  # M_TRIM_THRESHOLD
    "MALLOC_MMAP_THRESHOLD_": (-3, 32 * 1024 * 1024),  # M_MMAP_THRESHOLD
}


def keep_freed_memory(process: str) -> bool:
    """Let glibc's malloc keep the memory a poll frees for the next poll (:data:`KEEP_FREED`);
    True when set. By default it gives the free top of its heap back to the system, and every
    block of 128 KiB or more is a mapping of its own, unmapped when freed: the next poll faults
    the same pages in again, one by one. Measured in ingest (``orjson.dumps`` of a 15,000-coin
    poll's messages, in process): 0.08 s on every other poll instead of 0.02 s; with the memory
    kept, 0.02 s on every poll after the first two. The process keeps its largest poll's worth
    of heap (it would fault it in again anyway). An operator's ``MALLOC_TRIM_THRESHOLD_`` /
    ``MALLOC_MMAP_THRESHOLD_`` stand; elsewhere than on glibc nothing changes."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        logger.info("%s: not on glibc; the C library's defaults for freed memory stand", process)
        return False
    if malloc_set_by_environment(KEEP_FREED):
        logger.info("%s: the C library's freed-memory settings from the environment stand", process)
        return False
    libc = ctypes.CDLL(None)
    done = all(libc.mallopt(param, value) == 1 for param, value in KEEP_FREED.values())
    logger.info(
        "%s: freed memory kept for reuse (%s)",
        process,
        ", ".join(f"{name}={value}" for name, (_, value) in KEEP_FREED.items()),
    )
    return done


def warm_heap(process: str, make: Callable[[], object], rounds: int = 2) -> float:
    """Call ``make`` ``rounds`` times, holding every result until the last one is made, then free
    them all; returns the seconds it took. Call it after :func:`keep_freed_memory`: the pages
    those allocations faulted in stay in the heap, and the steady work that allocates the same way
    reuses them instead of faulting them in on its first ``rounds`` rounds.

    Measured in ingest (``orjson.dumps`` of a 15,000-coin poll's messages, in process): each
    call takes a fresh buffer of several KiB and gives most of it back, so the first two polls
    (the previous poll's messages are still held while the next one is encoded) faulted in
    ~29,000 pages each and took 90-110 ms instead of 25-30; after this warm-up with a sample
    message, 25-26 ms from the first poll on. The process ends with the same heap either way."""
    started = time.perf_counter()
    held = [make() for _ in range(rounds)]
    del held
    took = time.perf_counter() - started
    logger.info(
        "%s: memory for its first %d rounds of work made ready in %.2f s", process, rounds, took
    )
    return took


def set_arrow_allocator(process: str, backend: str = "system") -> str:
    """Arrow's buffers from ``backend`` (``system``: the C library's malloc; ``mimalloc``,
    Arrow's default; ``jemalloc``); returns the backend in use. ``marketflow live`` passes
    ``system`` unless ``ARROW_DEFAULT_MEMORY_POOL`` names another (settings.LiveSettings).

    Measured in ``marketflow live`` (docs/PERFORMANCE.md, eighth round): with mimalloc, on
    about one poll in two, building a 15,000-value column took 26-68 ms of CPU instead of 1.5;
    not with ``MIMALLOC_PURGE_DELAY=-1`` (mimalloc then keeps freed memory instead of returning
    it to the system 10 ms after a batch and faulting it back in for the next), and not with
    malloc, which keeps it too (``up`` runs its children with ``MALLOC_ARENA_MAX=2``).
    """
    import pyarrow as pa

    if backend not in ARROW_POOLS:
        raise ValueError(f"Arrow memory pool {backend!r}: one of {', '.join(ARROW_POOLS)}")
    pa.set_memory_pool(getattr(pa, f"{backend}_memory_pool")())  # pa.system_memory_pool, ...
    in_use = pa.default_memory_pool().backend_name
    logger.info("%s: Arrow allocates with %s", process, in_use)
    return in_use
