"""Price alerts through the real live path (issue 28 item 7): a rules file, polls on a Tansu
topic, PostgreSQL; each crossing is posted once to a local webhook and recorded; a restart does
not send again what held before it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from marketflow_assets_tests.live.live_helpers import (
    consumed_all,
    publish,
    query,
    running_consumer,
    wait_for,
)

T0 = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
#: coin-a's price per poll: crosses 110 at poll 2, stays, falls back (re-armed), crosses again
PRICES_A = [100.0, 105.0, 111.0, 112.0, 100.0, 120.0]
#: coin-b: a 10 % drop in one poll (change_1min < -5 one minute later)
PRICES_B = [50.0, 50.0, 50.0, 45.0, 45.0, 45.0]


def _polls(first: int, last: int) -> list[tuple]:
    rows = []
    for k in range(first, last):
        ts = T0 + timedelta(seconds=30 * k)
        rows += [("coin-a", "a", ts, PRICES_A[k]), ("coin-b", "b", ts, PRICES_B[k])]
    return rows


def test_each_crossing_is_posted_once_and_recorded(
    kafka_bootstrap, new_topic, pg_clean, httpserver, tmp_path
):
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    rules = tmp_path / "price_alerts.txt"
    rules.write_text("coin-a price > 110   # above 110\nany change_1min < -5\n")
    topic = new_topic("alerts", partitions=1)
    options = {"alerts_file": rules, "webhook_url": httpserver.url_for("/hook")}
    sent = 0
    with running_consumer(kafka_bootstrap, topic, pg_clean, **options):
        for k in range(len(PRICES_A)):  # one poll per batch
            sent += publish(kafka_bootstrap, topic, _polls(k, k + 1))
            wait_for(lambda n=sent: consumed_all(pg_clean, topic, n), what=f"poll {k}")
    posts = [json.loads(request.get_data())["text"] for request, _ in httpserver.log]
    events = query(pg_clean, "SELECT rule, coin_id, ts FROM price_alert_events ORDER BY ts, rule")
    expected = [
        ("coin-a price > 110", "coin-a", T0 + timedelta(seconds=60)),
        ("any change_1min < -5", "coin-b", T0 + timedelta(seconds=90)),
        # coin-a's fall from 111 to 100 within a minute is a crossing of the second rule too
        ("any change_1min < -5", "coin-a", T0 + timedelta(seconds=120)),
        ("coin-a price > 110", "coin-a", T0 + timedelta(seconds=150)),
    ]
    assert [(r, c, ts.astimezone(UTC)) for r, c, ts in events] == expected
    assert len(posts) == 4 and all(p.startswith("PRICE ALERT ") for p in posts)
    assert "coin-a: price = 111 (> 110)" in posts[0]

    # a restart: coin-a is still above 110 at the newest snapshot; no second post for it
    with running_consumer(kafka_bootstrap, topic, pg_clean, **options):
        PRICES_A.append(125.0)
        PRICES_B.append(45.0)
        sent += publish(kafka_bootstrap, topic, _polls(6, 7))
        wait_for(lambda: consumed_all(pg_clean, topic, sent), what="the poll after the restart")
    assert len(httpserver.log) == 4
    assert query(pg_clean, "SELECT count(*) FROM price_alert_events") == [(4,)]
