"""Watch running processes: command lines holding a secret, sockets listening beyond loopback."""

from __future__ import annotations

import threading
from pathlib import Path

import psutil

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


class ProcessWatch:
    """While active, every ``interval`` seconds:

    * scans the command line of every process on the machine for ``secret`` (``argv_hits``);
    * lists the TCP sockets the tree under ``root`` (set once the process exists) listens on,
      and keeps those not bound to loopback (``exposed``: ``"<ip>:<port> <process name>"``).
    """

    def __init__(self, secret: str | None = None, interval: float = 0.1):
        self.secret = secret.encode() if secret else None
        self.interval = interval
        self.root: int | None = None
        self.argv_hits: list[str] = []
        self.exposed: set[str] = set()
        self.listening: set[str] = set()
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _scan_argv(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if self.secret in argv:
                self.argv_hits.append(argv.replace(b"\0", b" ")[:300].decode(errors="replace"))

    def _scan_sockets(self) -> None:
        try:
            root = psutil.Process(self.root)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in tree:
            try:
                conns = proc.net_connections(kind="tcp")
                name = proc.name()
            except psutil.Error:
                continue
            for conn in conns:
                if conn.status != psutil.CONN_LISTEN:
                    continue
                where = f"{conn.laddr.ip}:{conn.laddr.port} {name}"
                self.listening.add(where)
                if conn.laddr.ip not in LOOPBACK:
                    self.exposed.add(where)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.secret:
                self._scan_argv()
            if self.root is not None:
                self._scan_sockets()
            self.scans += 1
            self._stop.wait(self.interval)

    def start(self) -> ProcessWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (idempotent); what was seen stays in the attributes."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def __enter__(self) -> ProcessWatch:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
