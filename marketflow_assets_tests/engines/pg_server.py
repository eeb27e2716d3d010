"""A password-protected PostgreSQL server over TCP on 127.0.0.1, from the system's binaries.

Debian's PostgreSQL binaries (``/usr/lib/postgresql/<major>/bin/initdb``, ``pg_ctl``) refuse to
run as root, so when the tests run as root the server runs as ``nobody`` with a data directory
owned by ``nobody``. Authentication is ``scram-sha-256`` for every connection (TCP and socket);
the superuser password is a fresh random token handed to ``initdb`` through a file (never in a
command line) that is deleted right after.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

#: Where to look for ``initdb`` / ``pg_ctl`` (first hit wins): ``$MARKETFLOW_TEST_PG_BINDIR``,
#: then Debian's layout, newest major first.
PG_BINDIR_ENV = "MARKETFLOW_TEST_PG_BINDIR"
NOBODY = 65534


def find_pg_bindir() -> Path | None:
    candidates = []
    if os.environ.get(PG_BINDIR_ENV):
        candidates.append(Path(os.environ[PG_BINDIR_ENV]))
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += debian
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PasswordPostgres:
    """``with PasswordPostgres() as server:`` - ``server.url`` carries user and password.

    Attributes: ``url`` (``postgresql://marketflow:<password>@127.0.0.1:<port>/marketflow``),
    ``password``, ``port``, ``log_path`` (the server log), ``root`` (a temp dir removed on stop).
    """

    user = "marketflow"
    database = "marketflow"

    def __init__(self, bindir: Path, timeout: float = 60.0):
        self.bindir = Path(bindir)
        self.timeout = timeout
        self.password = "pw-" + secrets.token_urlsafe(18)
        self.as_nobody = os.geteuid() == 0
        self.root: Path | None = None
        self.port: int | None = None

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        kwargs = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if self.as_nobody else {}
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout or self.timeout,
            cwd=self.root,
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "TZ": "UTC"},
            check=False,
            **kwargs,
        )

    def _own(self, path: Path) -> None:
        if self.as_nobody:
            os.chown(path, NOBODY, NOBODY)

    def start(self) -> PasswordPostgres:
        # Not under pytest's tmp dir: /tmp/pytest-of-root is 0700, which nobody cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="marketflow-pg-"))
        self.root.chmod(0o755)
        self._own(self.root)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._own(pwfile)
        try:
            res = self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            self.stop()
            raise RuntimeError(f"initdb failed: {res.stderr.strip()[-500:]}")
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            conf.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "password_encryption = 'scram-sha-256'\n"
                "shared_buffers = 32MB\nmax_connections = 40\nfsync = off\n"
                "log_connections = on\nlog_statement = 'ddl'\n"
            )
        # initdb --auth already writes scram-sha-256 for every line; keep only TCP on loopback
        (self.pgdata / "pg_hba.conf").write_text(
            "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        self._own(self.pgdata / "pg_hba.conf")
        for _attempt in range(3):  # the free port can be taken between probe and bind
            self.port = _free_port()
            res = self._run(
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log_path),
                "-o",
                f"-p {self.port}",
                "-w",
                "-t",
                str(int(self.timeout)),
                "start",
            )
            if res.returncode == 0:
                break
        else:
            log = self.log_path.read_text(errors="replace")[-800:] if self.log_path.exists() else ""
            self.stop()
            raise RuntimeError(f"pg_ctl start failed: {res.stderr.strip()} {log}")
        self._create_database()
        return self

    def _create_database(self) -> None:
        import psycopg2

        deadline = time.monotonic() + self.timeout
        while True:
            try:
                conn = psycopg2.connect(
                    host="127.0.0.1",
                    port=self.port,
                    user=self.user,
                    password=self.password,
                    dbname="postgres",
                    connect_timeout=5,
                )
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {self.database}")
        finally:
            conn.close()

    def halt(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected), keeping its data; connections
        are refused until :meth:`resume`."""
        res = self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")
        if res.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {res.stderr.strip()}")

    def resume(self) -> None:
        """Start the halted server again on the same port."""
        res = self._run(
            "pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_path), "-o", f"-p {self.port}",
            "-w", "-t", str(int(self.timeout)), "start",
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {res.stderr.strip()}")

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.pgdata / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)
        self.root = None

    def __enter__(self) -> PasswordPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
