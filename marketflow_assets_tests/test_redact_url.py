"""``redact_url`` hides every password a PostgreSQL URL can carry (issue #20, part 6)."""

from __future__ import annotations

import pytest

from marketflow_assets.settings import redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", ""),
        (None, ""),
        ("postgresql://host:5432/db", "postgresql://host:5432/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("postgresql://user:s3cret@host:5432/db", "postgresql://user:***@host:5432/db"),
        ("postgresql://:s3cret@host/db", "postgresql://:***@host/db"),
        ("postgresql://user:p%40ss@host/db", "postgresql://user:***@host/db"),
        (
            "postgresql://user@host/db?password=s3cret",
            "postgresql://user@host/db?password=***",
        ),
        (
            "postgresql://host/db?user=u&passwd=s3cret&sslmode=require",
            "postgresql://host/db?user=u&passwd=***&sslmode=require",
        ),
        ("postgresql://host/db?PWD=s3cret", "postgresql://host/db?PWD=***"),
        (
            "postgresql://user:a@host/db?password=b&application_name=x",
            "postgresql://user:***@host/db?password=***&application_name=x",
        ),
        (
            "postgresql:///db?host=/tmp/sock&password=s%20ecret",
            "postgresql:///db?host=/tmp/sock&password=***",
        ),
        ("postgresql://host/db?sslmode=require", "postgresql://host/db?sslmode=require"),
        ("postgresql://host/db?pass%77ord=s3cret", "postgresql://host/db?pass%77ord=***"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://u:topsecret@h/d", "topsecret"),
        ("postgresql://h/d?password=topsecret", "topsecret"),
        ("postgresql://h/d?a=1&pwd=topsecret#frag", "topsecret"),
        ("postgresql://u:top@secret@h/d", "secret"),
        ("postgresql://h:notaport/d?password=topsecret", "topsecret"),
    ],
)
def test_redacted_url_never_contains_the_secret(url, secret):
    assert secret not in redact_url(url)
