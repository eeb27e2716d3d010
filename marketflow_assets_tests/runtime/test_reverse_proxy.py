"""deploy/nginx: Debian's nginx puts both UIs behind TLS and HTTP basic auth. A real
``dagster-webserver`` and the real Streamlit dashboard run on 127.0.0.1; nginx, rendered from the
template by ``render.py``, serves them on two TLS ports with a certificate of a test CA. Checked:
no or a wrong password is 401 (WebSocket upgrades too), the right one reaches each backend, both
WebSockets (Dagster's ``/graphql`` subscriptions, Streamlit's ``/_stcore/stream`` with a
same-origin ``Origin`` of another name than localhost) upgrade through the proxy, and TLS 1.1 and
plain HTTP on a TLS port are refused.

The webserver serves an empty workspace: what nginx proxies (the UI, ``/graphql`` over HTTP and
WebSocket) does not depend on the code location, whose load would double the start-up (~40 s on
2 busy cores; test_up.py serves the Marketflow one)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

from marketflow_assets.dashboard.command import streamlit_argv
from marketflow_assets.runtime.services import die_with_parent, free_port, stop_process
from marketflow_assets_tests.helpers import unavailable
from marketflow_assets_tests.tls_servers import make_pki

pytestmark = pytest.mark.stack

NGINX = Path("/usr/sbin/nginx")
REPO = Path(__file__).resolve().parents[2]
RENDER = REPO / "deploy" / "nginx" / "render.py"
WEBSERVER = str(Path(sys.executable).with_name("dagster-webserver"))
USER, PASSWORD = "analyst", "s3cret horse"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The name in Host and Origin of the WebSocket requests (TLS still verifies ``localhost``): not
#: localhost, which Streamlit accepts as an Origin whatever the Host.
SITE = "marketflow.test"
#: Start-up of dagster-webserver and Streamlit: 5-20 s, a minute on 2 cores under a full suite.
BACKEND_TIMEOUT = 120.0


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _render(tmp: Path, cert: Path, key: Path, htpasswd: Path, *extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(RENDER), "--cert", str(cert), "--key", str(key)]
        + ["--htpasswd", str(htpasswd), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _get(url: str, *, auth: str | None = None, context: ssl.SSLContext | None = None):
    """(status, headers, body) of a GET; an HTTP error status is an answer, not an exception."""
    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _wait(ready, proc: subprocess.Popen, log: Path, what: str, timeout: float) -> None:
    """Poll ``ready()`` until true; fail at once with the log when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"{what} not ready after {timeout:.0f} s:\n{_tail(log)}")


def _http_ok(url: str) -> bool:
    return _get(url)[0] == 200


def _listens(port: int) -> bool:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return True


def _tls11_refused(port: int) -> None:
    """A client offering TLS 1.1 at most (at OpenSSL's lowest security level, where it can: an
    ``openssl s_server -tls1_1`` accepts it) fails its handshake."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="localhost")


class _WebSocket:
    """Just enough of RFC 6455 over TLS: the handshake, masked text frames out, frames in."""

    def __init__(self, context: ssl.SSLContext, port: int):
        raw = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.port = port
        self.buffer = b""

    def handshake(self, path: str, auth: str | None, protocol: str) -> tuple[str, dict[str, str]]:
        """Send an HTTP/1.1 Upgrade request; return the status line and response headers."""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {SITE}:{self.port}",
            f"Origin: https://{SITE}:{self.port}",  # what a browser sends: same origin
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Protocol: {protocol}",
        ]
        if auth:
            lines.append(f"Authorization: {auth}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status, *fields = head.decode("latin-1").split("\r\n")
        headers = {}
        for field in fields:
            name, _, value = field.partition(":")
            headers[name.strip().lower()] = value.strip()
        if " 101 " in f"{status} ":
            expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            assert headers.get("sec-websocket-accept") == expected, headers
        return status, headers

    def send_text(self, text: str) -> None:
        payload = text.encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def _exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("WebSocket closed by the proxy")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def receive(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame."""
        first, second = self._exact(2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack(">H", self._exact(2))[0]
        elif size == 127:
            size = struct.unpack(">Q", self._exact(8))[0]
        mask = self._exact(4) if second & 0x80 else None
        data = self._exact(size)
        if mask:
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        return first & 0x0F, data

    def close(self) -> None:
        self.sock.close()


def _nginx_conf(tmp: Path, site: Path) -> Path:
    """A minimal main config: everything nginx writes stays under ``tmp``."""
    temp = {name: tmp / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    # Running as root, the workers would be `nobody`, who cannot read the password file under
    # pytest's 0700 temp dir; as another user `user` is ignored (with a warning): leave it out.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\n"
        f"error_log {tmp / 'error.log'} notice;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        f"    access_log {tmp / 'access.log'};\n"
        f"    client_body_temp_path {temp['body']};\n"
        f"    proxy_temp_path {temp['proxy']};\n"
        f"    fastcgi_temp_path {temp['fastcgi']};\n"
        f"    uwsgi_temp_path {temp['uwsgi']};\n"
        f"    scgi_temp_path {temp['scgi']};\n"
        f"    include {site};\n"
        "}\n"
    )
    return conf


def _start(argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads of ours at this point
            **kwargs,
        )


def test_nginx_puts_both_uis_behind_tls_and_a_password(tmp_path):
    if not NGINX.exists():
        unavailable(f"{NGINX} is absent (Debian: apt-get install nginx-light)")
    tmp = tmp_path
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MARKETFLOW_", "COINGECKO_", "DAGSTER_"))
    }
    home, data = tmp / "dagster_home", tmp / "data"
    home.mkdir()
    data.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env.update(
        MARKETFLOW_DOTENV="",
        MARKETFLOW_DATA_DIR=str(data),
        DAGSTER_HOME=str(home),
        PYTHONUNBUFFERED="1",
    )
    dagster_backend, dashboard_backend = free_port(), free_port()
    dagster_tls, dashboard_tls = free_port(), free_port()
    logs = {name: tmp / f"{name}.log" for name in ("dagster", "dashboard", "nginx")}
    procs: dict[str, subprocess.Popen] = {}
    try:
        # The slow starters first: they load while the certificates and nginx are made.
        procs["dagster"] = _start(
            [WEBSERVER, "-h", "127.0.0.1", "-p", str(dagster_backend), "--empty-workspace"],
            logs["dagster"],
            cwd=tmp,
            env=env,
        )
        procs["dashboard"] = _start(
            streamlit_argv(dashboard_backend), logs["dashboard"], cwd=tmp, env=env
        )

        pki = make_pki(tmp / "pki")
        hashed = subprocess.run(
            ["openssl", "passwd", "-apr1", "-stdin"],
            input=PASSWORD,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert hashed.startswith("$apr1$"), hashed
        htpasswd = tmp / "htpasswd"
        htpasswd.write_text(f"{USER}:{hashed}\n")
        site = tmp / "marketflow.conf"
        site.write_text(
            _render(
                tmp,
                pki.server_cert,
                pki.server_key,
                htpasswd,
                *("--listen", "127.0.0.1"),
                *("--dagster-port", str(dagster_tls), "--dashboard-port", str(dashboard_tls)),
                *("--dagster-upstream", f"127.0.0.1:{dagster_backend}"),
                *("--dashboard-upstream", f"127.0.0.1:{dashboard_backend}"),
            )
        )
        conf = _nginx_conf(tmp, site)
        procs["nginx"] = _start(
            [str(NGINX), "-p", str(tmp), "-c", str(conf)]
            + ["-g", f"daemon off; pid {tmp / 'nginx.pid'};"],
            logs["nginx"],
            cwd=tmp,
        )
        for port in (dagster_tls, dashboard_tls):
            _wait(lambda p=port: _listens(p), procs["nginx"], logs["nginx"], "nginx", 15)
        _wait(
            lambda: _http_ok(f"http://127.0.0.1:{dashboard_backend}/_stcore/health"),
            procs["dashboard"],
            logs["dashboard"],
            "the Streamlit dashboard",
            BACKEND_TIMEOUT,
        )
        _wait(
            lambda: _http_ok(f"http://127.0.0.1:{dagster_backend}/server_info"),
            procs["dagster"],
            logs["dagster"],
            "dagster-webserver",
            BACKEND_TIMEOUT,
        )

        tls = ssl.create_default_context(cafile=str(pki.ca))
        right, wrong = _basic(USER, PASSWORD), _basic(USER, "not " + PASSWORD)
        dagster = f"https://localhost:{dagster_tls}/server_info"
        dashboard = f"https://localhost:{dashboard_tls}/_stcore/health"

        # No password, a wrong one: 401 with a Basic challenge, from nginx (not the backend).
        for url in (dagster, dashboard):
            for auth in (None, wrong):
                status, headers, _ = _get(url, auth=auth, context=tls)
                assert status == 401, (url, auth, status)
                assert headers.get("WWW-Authenticate", "").startswith("Basic realm="), headers
        # The right one reaches each backend over TLS 1.2+ with the test CA's certificate.
        status, _, body = _get(dagster, auth=right, context=tls)
        assert status == 200, body[:500]
        assert "dagster_webserver_version" in json.loads(body)
        status, _, body = _get(dashboard, auth=right, context=tls)
        assert (status, body.strip()) == (200, b"ok")
        status, _, body = _get(f"https://localhost:{dashboard_tls}/", auth=right, context=tls)
        assert status == 200 and b"<html" in body.lower()  # the Streamlit page itself

        # WebSockets through the proxy. Streamlit refuses (403) an Origin that does not match
        # Host (but for localhost): its 101 shows nginx forwards the host:port the browser used.
        ws = _WebSocket(tls, dashboard_tls)
        try:
            status, headers = ws.handshake("/_stcore/stream", None, "streamlit")
            assert " 401 " in f"{status} ", status  # the upgrade needs the password too
        finally:
            ws.close()
        ws = _WebSocket(tls, dashboard_tls)
        try:
            status, headers = ws.handshake("/_stcore/stream", right, "streamlit")
            assert " 101 " in f"{status} ", (status, headers, _tail(logs["dashboard"]))
            assert headers.get("sec-websocket-protocol") == "streamlit", headers
        finally:
            ws.close()
        ws = _WebSocket(tls, dagster_tls)
        try:
            status, headers = ws.handshake("/graphql", right, "graphql-ws")
            assert " 101 " in f"{status} ", (status, headers, _tail(logs["dagster"]))
            ws.send_text(json.dumps({"type": "connection_init", "payload": {}}))
            opcode, payload = ws.receive()  # a round trip through the proxy, both ways
            assert (opcode, json.loads(payload)["type"]) == (1, "connection_ack"), payload
        finally:
            ws.close()

        # TLS 1.1 is refused; plain HTTP on a TLS port is nginx's 400, nothing from a backend.
        for port in (dagster_tls, dashboard_tls):
            _tls11_refused(port)
        for port, path in ((dagster_tls, "/server_info"), (dashboard_tls, "/_stcore/health")):
            status, _, body = _get(f"http://127.0.0.1:{port}{path}", auth=right)
            assert status == 400 and b"plain HTTP request" in body, (status, body[:300])
            assert b"dagster_webserver_version" not in body
    finally:
        for proc in procs.values():  # all at once: Dagster takes seconds to stop
            if proc.poll() is None:
                proc.terminate()
        for name, proc in procs.items():
            stop_process(proc, name, timeout=20)
        for name, log in logs.items():  # shown by pytest when the test failed
            print(f"----- {name} log -----\n{_tail(log, 2000)}")
        print(f"----- nginx error.log -----\n{_tail(tmp / 'error.log', 2000)}")


def test_render_refuses_a_missing_file_in_one_line(tmp_path):
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    proc = subprocess.run(
        [sys.executable, str(RENDER), "--cert", "cert.pem", "--key", "key.pem"]
        + ["--htpasswd", "missing.htpasswd"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "render.py: --htpasswd missing.htpasswd: no such file"
    ]
