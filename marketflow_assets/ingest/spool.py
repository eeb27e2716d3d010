"""Write-ahead spool of the ingest service: no poll is lost with an in-memory broker.

The embedded Kafka broker (Tansu) keeps its topics in memory only, so a crash of the broker (or of
``marketflow up``) loses every record the Spark job had not yet read. Ingest therefore writes each
poll to disk *before* sending it and keeps it until the record is in raw Parquet:

``<spool dir>/polls-<topic>.jsonl``
    one line per poll sent to ``<topic>``, in the replay-file format plus a record count,
    ``{"ts": ..., "n": ..., "coins": [...]}``, where ``coins`` are the validated Kafka message
    values (so the file can also be replayed with ``marketflow ingest --source replay``).
    Appended and fsynced before the poll is sent: a poll counts as delivered once it is on disk.
``<spool dir>/acks-<topic>.jsonl``
    ack markers ``{"ts": ..., "ids": [...], "topic_id": ...}``: the records of a poll the broker
    acknowledged, and the id of the topic incarnation that took them (Kafka topic ids; an
    in-memory broker's restart re-creates the topic under a new id). A record acknowledged by the
    topic as it is now is not resent; one acknowledged by a topic that has since been re-created
    is. An acknowledgement is *not* a reason to drop a record: the broker can still lose it.
``<spool dir>/dead_letters.jsonl``
    every dead letter (validation failure) as sent to the DLQ topic, kept for good.

Records leave the spool only once their (``id``, ``ts``) is in the raw Parquet dataset
(:func:`prune_polls`, run every ``MARKETFLOW_SPOOL_RECONCILE_SECONDS``). Spooled records the topic
as it is now has not acknowledged are resent when ingest starts, at once when the topic is found
re-created after a broker restart, and at every reconcile; ``marketflow ingest --replay-spool``
resends every spooled record. The Spark job keeps one row per (``id``, ``ts``), so a resend never
duplicates a row. A torn last line (the process died while writing it) is ignored and cut off
by the next write.

Bounds (issue #27): the polls and ack markers together stay under ``max_bytes``
(``MARKETFLOW_SPOOL_MAX_MB``). Crossing 80 % raises one alert; at the cap the *oldest* polls are
dropped to make room for the new one, first those the topic as it is now acknowledged (the
broker still holds them, only Spark has not written them yet), then the oldest never-acknowledged
ones; every drop is logged as an ERROR and alerted once. The newest data is what the pipeline is
for, and refusing new polls would stop collection for a downstream fault. Before every write,
``shutil.disk_usage`` must show ``min_free_bytes`` free after it, else :class:`SpoolFull` is
raised and nothing is written (the caller holds the poll and does not send it). The dead-letter
file is kept whole and not counted against the cap.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from marketflow_assets.ingest.validate import Message, parse_time

log = logging.getLogger(__name__)

DEAD_LETTERS_FILE = "dead_letters.jsonl"


def polls_file(topic: str) -> str:
    """Name of the spool file of the polls sent to ``topic`` (one spool per topic: records are
    only ever resent to the topic they were meant for)."""
    return f"polls-{topic}.jsonl"


def acks_file(topic: str) -> str:
    return f"acks-{topic}.jsonl"


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Key = tuple[str, int]  # (coin id, ts in µs since the epoch): the raw dataset's key


# --------------------------------------------------------------------------------------------
# Pure functions: the file format and the pruning
# --------------------------------------------------------------------------------------------
@dataclass
class SpooledPoll:
    """One spooled poll: its ``ts`` and the Kafka message values of its good records."""

    ts: str
    values: list[dict[str, Any]] = field(default_factory=list)

    def messages(self) -> list[Message]:
        """The Kafka messages to (re)send: key = coin id, value as spooled."""
        return [Message(key=v["id"], value=v) for v in self.values]

    def keys(self) -> list[Key]:
        return [record_key(v["id"], self.ts) for v in self.values]


@functools.lru_cache(maxsize=4096)  # one poll's records share their ts
def ts_micros(ts: str) -> int:
    """µs since the epoch of an ISO-8601 ``ts`` (the raw dataset stores µs timestamps)."""
    return (parse_time(ts) - EPOCH) // timedelta(microseconds=1)  # exact integer arithmetic


def record_key(coin_id: str, ts: str) -> Key:
    """The (``id``, ``ts`` µs) key of one record, comparable with :func:`raw_keys`."""
    return (coin_id, ts_micros(ts))


def poll_line(ts: str, values: list[dict[str, Any]]) -> str:
    """One line of the polls file, newline included: the replay-file format plus ``n``, the
    number of records (``{"ts":...,"n":...,"coins":[...]}``, read back by :func:`line_head`)."""
    poll = {"ts": ts, "n": len(values), "coins": values}
    return json.dumps(poll, separators=(",", ":"), allow_nan=False) + "\n"


def encoded_poll_line(ts: str, values: list[bytes]) -> bytes:
    """:func:`poll_line` (encoded) from the values already encoded as compact JSON (the bytes
    the producer sends): the same bytes, without encoding every record a second time."""
    head = json.dumps({"ts": ts, "n": len(values)}, separators=(",", ":"))[:-1]
    return head.encode("utf-8") + b',"coins":[' + b",".join(values) + b"]}\n"


_HEAD = re.compile(r'^\{"ts":"([^"\\]+)","n":(\d+),')


def line_head(line: str) -> tuple[str | None, int | None]:
    """``(ts, n)`` from the head of a line written by :func:`poll_line`, without parsing the
    rest; ``(None, None)`` for any other line."""
    match = _HEAD.match(line)
    return (match.group(1), int(match.group(2))) if match else (None, None)


def ack_line(ts: str, ids: Iterable[str], topic_id: str | None) -> str:
    """One ack marker line: the ids of poll ``ts`` that topic ``topic_id`` acknowledged."""
    return (
        json.dumps({"ts": ts, "ids": list(ids), "topic_id": topic_id}, separators=(",", ":")) + "\n"
    )


def _json_lines(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Objects of complete JSON lines; a torn or foreign line is skipped (logged)."""
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not line.endswith("\n"):
            log.warning("spool: ignoring a torn last line (%d bytes)", len(line))
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            log.warning("spool: ignoring unreadable line %d", n)
            continue
        if isinstance(obj, dict):
            yield obj


def parse_polls(lines: Iterable[str]) -> list[SpooledPoll]:
    """The polls of ``polls.jsonl`` lines, in file order (torn/unreadable lines skipped)."""
    polls = []
    for obj in _json_lines(lines):
        ts, coins = obj.get("ts"), obj.get("coins")
        if not isinstance(ts, str) or not isinstance(coins, list):
            continue
        values = [c for c in coins if isinstance(c, dict) and isinstance(c.get("id"), str)]
        polls.append(SpooledPoll(ts, values))
    return polls


def parse_acks(lines: Iterable[str]) -> list[tuple[str, str, str | None]]:
    """The ack markers of ``acks-<topic>.jsonl`` lines as ``(ts, id, topic_id)``."""
    acks = []
    for obj in _json_lines(lines):
        ts, ids, topic_id = obj.get("ts"), obj.get("ids"), obj.get("topic_id")
        if not isinstance(ts, str) or not isinstance(ids, list):
            continue
        topic_id = topic_id if isinstance(topic_id, str) else None
        acks.extend((ts, i, topic_id) for i in ids if isinstance(i, str))
    return acks


def acked_keys(acks: Iterable[tuple[str, str, str | None]], topic_id: str | None) -> set[Key]:
    """Keys acknowledged by the topic incarnation ``topic_id`` (None: a broker without topic
    ids, whose acknowledgements all count)."""
    return {(i, ts_micros(ts)) for ts, i, tid in acks if tid == topic_id}


def prune_polls(polls: list[SpooledPoll], written: set[Key]) -> list[SpooledPoll]:
    """``polls`` without the records whose (id, ts) is in ``written``; emptied polls dropped."""
    kept = []
    for poll in polls:
        micros = ts_micros(poll.ts)
        values = [v for v in poll.values if (v["id"], micros) not in written]
        if values:
            kept.append(SpooledPoll(poll.ts, values))
    return kept


def count_records(polls: list[SpooledPoll]) -> int:
    return sum(len(p.values) for p in polls)


def ts_bounds(polls: list[SpooledPoll]) -> tuple[int, int] | None:
    """(min, max) ``ts`` in µs of ``polls``; None when there is none."""
    values = [ts_micros(p.ts) for p in polls]
    return (min(values), max(values)) if values else None


def stop_line(count: int, spool_dir: Path) -> str:
    """The one line ``marketflow up`` prints when it stops with records not yet in raw Parquet."""
    return (
        f"{count} record(s) not yet written to raw Parquet are kept in the spool {spool_dir}; "
        "replay them with `marketflow ingest --replay-spool`"
    )


# --------------------------------------------------------------------------------------------
# I/O: the raw dataset's keys, and the spool directory
# --------------------------------------------------------------------------------------------
def raw_keys(raw_dir: Path, start_us: int, end_us: int) -> set[Key]:
    """(id, ts µs) of the rows of the newest *committed* version of the ``raw_prices`` table
    with ``ts`` in ``[start_us, end_us]``, made durable first.

    A row is in a committed version only once its data file and its commit are written; before
    answering, ``os.sync()`` flushes them (and everything else written so far) to disk, so a
    record the spool drops on this answer survives a power loss in the table.
    """
    from marketflow_assets.raw_dataset import read_window

    start = EPOCH + timedelta(microseconds=start_us)
    end = EPOCH + timedelta(microseconds=end_us + 1)
    df = read_window(raw_dir, start, end, ("id", "ts"))
    os.sync()
    if not len(df):
        return set()
    df = df[df["ts"].notna() & df["id"].notna()]
    micros = (df["ts"] - EPOCH) // timedelta(microseconds=1)
    return set(zip(df["id"].astype(str), micros.astype("int64").tolist(), strict=True))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_durably(path: Path, text: str | bytes) -> None:
    """Append ``text`` to ``path`` and fsync it (a torn tail of an earlier crash is cut first)."""
    with path.open("ab+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":  # torn last line: cut back to the last complete one
                from marketflow_assets.ingest.sources import last_newline

                fh.truncate(last_newline(fh, size) + 1)
                fh.seek(0, os.SEEK_END)
        fh.write(text.encode("utf-8") if isinstance(text, str) else text)
        fh.flush()
        os.fsync(fh.fileno())


def _rewrite(path: Path, lines: Iterable[str]) -> None:
    """Replace ``path`` atomically (temp file, fsync, rename, fsync of the directory)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read_lines(path: Path) -> list[str]:
    try:
        with path.open(encoding="utf-8", errors="replace", newline="") as fh:
            return list(fh)
    except FileNotFoundError:
        return []


def _read_bytes(path: Path, start: int = 0, end: int | None = None) -> bytes:
    """Bytes ``[start, end)`` of ``path`` (b"" when it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            return fh.read() if end is None else fh.read(max(0, end - start))
    except FileNotFoundError:
        return b""


def _lines_of(data: bytes) -> list[str]:
    return data.decode("utf-8", errors="replace").splitlines(keepends=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class SpoolFull(OSError):
    """Too little free disk space for a spool write (nothing was written)."""


class _NoAlert:
    """Stand-in for an edge alert (``start(text)`` / ``end(text)``) when none is wired."""

    def start(self, text: str) -> bool:
        return False

    def end(self, text: str) -> bool:
        return False


#: share of the cap at which the usage alert starts; it ends below USAGE_CLEAR
USAGE_ALERT = 0.8
USAGE_CLEAR = 0.7
MB = 1024 * 1024


class SpoolBusy(RuntimeError):
    """Another process holds the spool (a running ingest)."""


class Spool:
    """The spool of the polls sent to ``topic``, in ``directory`` (exclusively locked by the one
    ingest process that writes it)."""

    def __init__(
        self,
        directory: str | Path,
        topic: str,
        *,
        lock: bool = True,
        max_bytes: int | None = None,
        min_free_bytes: int = 0,
        usage_alert=None,
        cap_alert=None,
        disk_usage=None,
    ):
        self.dir = Path(directory)
        self.topic = topic
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.usage_alert = usage_alert or _NoAlert()  # 80 % of the cap (start/end)
        self.cap_alert = cap_alert or _NoAlert()  # the cap reached: polls dropped (start/end)
        self._disk_usage = disk_usage  # None: shutil.disk_usage, looked up at each write
        #: the topic incarnation whose acknowledgements count when choosing polls to drop
        self.topic_id: str | None = None
        # The poll loop appends while the sender thread acks and prunes: file changes are made
        # under this mutex, and a rewrite bumps the generation (a prune computed on an older
        # generation is abandoned).
        self._mutex = threading.RLock()
        self._generation = 0
        self.dropped_polls = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fh = None
        if lock:
            self._lock_fh = (self.dir / f".lock-{topic}").open("a")
            try:
                fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock_fh.close()
                self._lock_fh = None
                raise SpoolBusy(
                    f"spool {self.dir} is in use by a running ingest (it resends the spool itself)"
                ) from None

    @property
    def polls_path(self) -> Path:
        return self.dir / polls_file(self.topic)

    @property
    def acks_path(self) -> Path:
        return self.dir / acks_file(self.topic)

    @property
    def dead_letters_path(self) -> Path:
        return self.dir / DEAD_LETTERS_FILE

    # ----------------------------------------------------------------------------------------
    def used_bytes(self) -> int:
        """Bytes counted against the cap: the polls file and the ack markers."""
        return _size(self.polls_path) + _size(self.acks_path)

    def _check_disk(self, nbytes: int) -> None:
        """Raise :class:`SpoolFull` when writing ``nbytes`` would leave less than
        ``min_free_bytes`` free on the spool's file system."""
        free = (self._disk_usage or shutil.disk_usage)(self.dir).free
        if free - nbytes < self.min_free_bytes:
            raise SpoolFull(
                f"{free / MB:.0f} MB free on the file system of {self.dir}, a write of "
                f"{nbytes / MB:.1f} MB must leave {self.min_free_bytes / MB:.0f} MB "
                "(MARKETFLOW_SPOOL_MIN_FREE_MB)"
            )

    def _append(self, path: Path, text: str | bytes) -> None:
        self._check_disk(len(text.encode("utf-8") if isinstance(text, str) else text))
        _append_durably(path, text)

    def append_poll(self, ts: str, good: list[Message], bad: list[Message]) -> None:
        """Write one poll (and its dead letters) to disk and fsync it; call BEFORE sending.

        Raises :class:`SpoolFull` (nothing written) when the disk lacks the room; makes room
        under the cap by dropping the oldest polls (logged, alerted once)."""
        line = encoded_poll_line(ts, [m.value_bytes() for m in good]) if good else b""
        letters = b"".join(m.value_bytes() + b"\n" for m in bad)  # the bytes sent, encoded once
        with self._mutex:
            self._check_disk(len(line) + len(letters))
            if line:
                self._make_room(len(line), ts)
                self._append(self.polls_path, line)
            if letters:
                self._append(self.dead_letters_path, letters)
            self._note_usage()

    def ack(self, ts: str, acked: list[Message], topic_id: str | None) -> None:
        """Record that topic ``topic_id`` acknowledged ``acked`` (good messages of poll ``ts``)."""
        if acked:
            with self._mutex:
                self._append(self.acks_path, ack_line(ts, [m.key for m in acked], topic_id))

    def _note_usage(self) -> None:
        """One alert when the spool passes 80 % of its cap; its end once below 70 %."""
        if not self.max_bytes:
            return
        used = self.used_bytes()
        share = used / self.max_bytes
        text = (
            f"Marketflow ingest spool {self.dir} at {share:.0%} of its cap "
            f"({used / MB:.1f} of {self.max_bytes / MB:.0f} MB, MARKETFLOW_SPOOL_MAX_MB)"
        )
        if share >= USAGE_ALERT:
            if self.usage_alert.start(
                text + ": records wait for the raw_prices table (is the Spark job writing?); "
                "at the cap the oldest polls are dropped"
            ):
                log.warning("spool: %s", text)
        elif share < USAGE_CLEAR:
            if self.usage_alert.end(text):
                log.info("spool: %s", text)
            if self.cap_alert.end(text + "; no poll is dropped any more"):
                log.info("spool: below its cap again; %d poll(s) were dropped", self.dropped_polls)

    def _make_room(self, nbytes: int, ts: str) -> None:
        """Drop the oldest polls until ``nbytes`` more fit under the cap: the polls the topic as
        it is now acknowledged first, then the others (logged as an ERROR, alerted once)."""
        if not self.max_bytes:
            return
        excess = self.used_bytes() + nbytes - self.max_bytes
        if excess <= 0:
            return
        heads = self._heads()
        acked: dict[int, int] = {}
        for coin_ts, _, tid in self.acks():
            if tid == self.topic_id:
                us = ts_micros(coin_ts)
                acked[us] = acked.get(us, 0) + 1
        done = {
            k for k, (_, t, n) in enumerate(heads) if t and n and acked.get(ts_micros(t), 0) >= n
        }
        order = sorted(done) + [k for k in range(len(heads)) if k not in done]
        drop: set[int] = set()
        freed = 0
        for k in order:
            if freed >= excess:
                break
            drop.add(k)
            freed += len(heads[k][0].encode("utf-8"))
        if not drop:
            return
        gone = [heads[k] for k in sorted(drop)]
        n_acked = len(drop & done)
        records = sum(n or 0 for _, _, n in gone)
        stamps = sorted((t for _, t, _ in gone if t), key=ts_micros)
        _rewrite(self.polls_path, (line for k, (line, _, _) in enumerate(heads) if k not in drop))
        dropped_us = {ts_micros(t) for t in stamps}
        groups: dict[tuple[str, str | None], list[str]] = {}
        for t, coin_id, tid in self.acks():
            if ts_micros(t) not in dropped_us:
                groups.setdefault((t, tid), []).append(coin_id)
        _rewrite(self.acks_path, (ack_line(t, ids, tid) for (t, tid), ids in groups.items()))
        self._generation += 1
        self.dropped_polls += len(gone)
        detail = (
            f"dropped the {len(gone)} oldest poll(s) ({records} records, ts "
            f"{stamps[0] if stamps else '?'} .. {stamps[-1] if stamps else '?'}; {n_acked} of "
            f"them acknowledged by the broker, {len(gone) - n_acked} never acknowledged and "
            "lost) to keep the newest"
        )
        log.error(
            "spool %s reached its cap of %.0f MB (MARKETFLOW_SPOOL_MAX_MB) with poll %s: %s",
            self.dir,
            self.max_bytes / MB,
            ts,
            detail,
        )
        self.cap_alert.start(
            f"Marketflow ingest spool {self.dir} is full ({self.max_bytes / MB:.0f} MB, "
            f"MARKETFLOW_SPOOL_MAX_MB): {detail}; further drops are logged, not alerted"
        )

    def polls(self) -> list[SpooledPoll]:
        return parse_polls(_read_lines(self.polls_path))

    def acks(self) -> list[tuple[str, str, str | None]]:
        return parse_acks(_read_lines(self.acks_path))

    def dead_letters(self) -> list[dict[str, Any]]:
        return list(_json_lines(_read_lines(self.dead_letters_path)))

    # ----------------------------------------------------------------------------------------
    def _heads(self, end: int | None = None) -> list[tuple[str, str | None, int | None]]:
        """Complete lines of the polls file (its first ``end`` bytes) with their ``ts`` and
        record count, read from the line's head without parsing its coins (None when the head
        is not ours)."""
        out = []
        for line in _lines_of(_read_bytes(self.polls_path, 0, end)):
            if line.endswith("\n") and line.strip():
                ts, n = line_head(line)
                out.append((line, ts, n))
        return out

    def prune(self, raw_dir: Path, *, dry_run: bool = False) -> tuple[int, int]:
        """Drop the records found in raw Parquet; returns (records removed, records kept).

        Only the lines of polls whose ``ts`` occurs in raw Parquet are parsed, and the files are
        rewritten only when a record goes, so a spool that grows while the Spark job is down
        costs a scan of line heads per reconcile. ``dry_run`` counts without rewriting.
        """
        with self._mutex:  # appends are whole lines under the mutex: a line boundary
            generation, end = self._generation, _size(self.polls_path)
        heads = self._heads(end)
        stamps = [ts_micros(ts) for _, ts, _ in heads if ts is not None]
        if not heads:
            return 0, 0
        if len(stamps) < len(heads):  # a line without our head: parse them all
            stamps = [ts_micros(p.ts) for p in parse_polls(line for line, _, _ in heads)]
        written = raw_keys(raw_dir, min(stamps), max(stamps)) if stamps else set()
        written_ts = {us for _, us in written}
        lines: list[str] = []
        removed = kept = 0
        for line, ts, n in heads:
            if ts is not None and n is not None and ts_micros(ts) not in written_ts:
                lines.append(line)  # nothing of this poll is in raw Parquet yet
                kept += n
                continue
            polls = parse_polls([line])
            left = prune_polls(polls, written)
            removed += count_records(polls) - count_records(left)
            kept += count_records(left)
            lines.extend(poll_line(p.ts, p.values) for p in left)
        if removed and not dry_run:
            with self._mutex:
                if generation != self._generation:  # polls were dropped meanwhile: next time
                    return 0, kept + removed
                # the polls appended since the read are kept as they are
                tail = _lines_of(_read_bytes(self.polls_path, end))
                _rewrite(self.polls_path, [*lines, *tail])
                groups: dict[tuple[str, str | None], list[str]] = {}
                for ts, coin_id, topic_id in self.acks():
                    if record_key(coin_id, ts) not in written:
                        groups.setdefault((ts, topic_id), []).append(coin_id)
                _rewrite(
                    self.acks_path, (ack_line(t, ids, tid) for (t, tid), ids in groups.items())
                )
                self._generation += 1
                self._note_usage()
        return removed, kept

    def unacked(self, topic_id: str | None) -> list[SpooledPoll]:
        """The spooled records that topic incarnation ``topic_id`` never acknowledged (only
        the lines of polls with such records are parsed)."""
        acked = acked_keys(self.acks(), topic_id)
        acked_ids: dict[int, set[str]] = {}
        for coin_id, us in acked:
            acked_ids.setdefault(us, set()).add(coin_id)
        polls = []
        for line, ts, n in self._heads():
            if ts is not None and n is not None and len(acked_ids.get(ts_micros(ts), ())) >= n:
                continue  # every record of this poll was acknowledged by this topic
            polls.extend(prune_polls(parse_polls([line]), acked))
        return polls

    def close(self) -> None:
        if self._lock_fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def unwritten_count(spool_dir: Path | None, topic: str, raw_dir: Path) -> int:
    """Records spooled for ``topic`` in ``spool_dir`` that are not in the raw Parquet under
    ``raw_dir`` (0 when there is no spool); reads without taking the lock."""
    if spool_dir is None or not (Path(spool_dir) / polls_file(topic)).exists():
        return 0
    return Spool(spool_dir, topic, lock=False).prune(raw_dir, dry_run=True)[1]
