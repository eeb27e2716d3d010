"""The password-protected PostgreSQL server really demands the password, over TCP, and Marketflow
names it without revealing a (wrong) password when it is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

pytestmark = [pytest.mark.engines, pytest.mark.postgres_tcp, pytest.mark.timeout(120)]

MARKETFLOW = Path(sys.executable).parent / "marketflow"


def test_server_is_tcp_with_scram_password_auth(password_postgres):
    with psycopg2.connect(password_postgres.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT inet_server_addr()::text, current_setting('password_encryption')")
        assert cur.fetchone() == ("127.0.0.1/32", "scram-sha-256")
    conn.close()
    wrong = password_postgres.url.replace(password_postgres.password, "not-the-password")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(wrong, connect_timeout=10)


def test_refused_password_is_a_one_line_config_error_without_the_password(
    password_postgres, tmp_path
):
    wrong_secret = "wrong-" + password_postgres.password[::-1]
    wrong = password_postgres.url.replace(password_postgres.password, wrong_secret)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETFLOW_")}
    env.update(MARKETFLOW_POSTGRES_URL=wrong, MARKETFLOW_DATA_DIR=str(tmp_path / "data"))
    res = subprocess.run(
        [str(MARKETFLOW), "refresh"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    # a refused password is a configuration problem said at once, not an outage waited for
    assert len(lines) == 1 and "the server refused the password" in lines[0], res.stderr
    assert "marketflow:***@127.0.0.1" in lines[0] and "password authentication failed" in lines[0]
    assert wrong_secret not in res.stdout + res.stderr
    assert password_postgres.password not in res.stdout + res.stderr
