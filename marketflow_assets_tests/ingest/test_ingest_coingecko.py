"""The CoinGecko client against a real local HTTP server replaying recorded responses."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from marketflow_assets.ingest.coingecko import (
    CoinGeckoClient,
    CoinGeckoError,
    cache_note,
    coingecko_reachable,
    pages_for,
    quota_warnings,
)
from marketflow_assets.settings import ConfigError, load_settings

MARKETS = "/coins/markets"
SECRET = "CG-sekret-KEY-4f9a1c"


@pytest.fixture
def threaded_httpserver():
    """A server that answers concurrently, so a slow (timed-out) answer does not block retries."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


def make_client(base_url: str, **kwargs) -> CoinGeckoClient:
    """A client with test-sized timing; ``sleeps`` records the waits it asked for."""
    kwargs.setdefault("backoff_base", 0.01)
    kwargs.setdefault("backoff_max", 0.05)
    kwargs.setdefault("read_timeout", 2.0)
    return CoinGeckoClient(base_url, **kwargs)


def synthetic_market(n_total: int):
    """Handler serving ``n_total`` ranked coins, honouring per_page/page like CoinGecko."""

    def handler(request: Request) -> Response:
        per_page = int(request.args["per_page"])
        page = int(request.args["page"])
        start = (page - 1) * per_page
        rows = [
            {
                "id": f"coin-{rank}",
                "symbol": f"c{rank}",
                "name": f"Coin {rank}",
                "current_price": 1000.0 / rank,
                "market_cap_rank": rank,
                "last_updated": "2024-01-01T00:00:00.000Z",
            }
            for rank in range(start + 1, min(n_total, start + per_page) + 1)
        ]
        return Response(json.dumps(rows), content_type="application/json")

    return handler


def test_recorded_page_is_fetched_with_the_expected_query(httpserver, recorded_page):
    httpserver.expect_request(MARKETS).respond_with_json(recorded_page)
    client = make_client(httpserver.url_for(""))
    records = client.fetch_markets(100)
    assert records == recorded_page
    ((request, _),) = httpserver.log
    assert request.args["vs_currency"] == "usd"
    assert request.args["order"] == "market_cap_desc"
    assert request.args["per_page"] == "100"
    assert request.args["page"] == "1"
    assert client.requests_made == 1


@pytest.mark.parametrize(
    ("n_coins", "expected_pages", "expected_per_page"),
    [(250, 1, 250), (300, 2, 150), (501, 3, 167), (7, 1, 7)],
)
def test_pagination_fetches_top_n_in_rank_order(
    httpserver, n_coins, expected_pages, expected_per_page
):
    assert pages_for(n_coins) == (expected_pages, expected_per_page)
    httpserver.expect_request(MARKETS).respond_with_handler(synthetic_market(2000))
    records = make_client(httpserver.url_for("")).fetch_markets(n_coins)
    assert [r["market_cap_rank"] for r in records] == list(range(1, n_coins + 1))
    pages = [(int(r.args["page"]), int(r.args["per_page"])) for r, _ in httpserver.log]
    assert pages == [(p, expected_per_page) for p in range(1, expected_pages + 1)]


def test_pagination_stops_at_a_short_page(httpserver):
    httpserver.expect_request(MARKETS).respond_with_handler(synthetic_market(260))
    records = make_client(httpserver.url_for("")).fetch_markets(1000)
    assert len(records) == 260
    assert len(httpserver.log) == 2  # 250 + 10 (short) -> no third request


def test_pagination_drops_a_coin_repeated_on_a_later_page(httpserver):
    # ranks shift between two page requests: c150 is last on page 1 and first on page 2
    page1 = [{"id": f"c{i}", "market_cap_rank": i} for i in range(1, 151)]
    page2 = [{"id": "c150", "market_cap_rank": 151}] + [
        {"id": f"c{i}", "market_cap_rank": i} for i in range(152, 301)
    ]
    httpserver.expect_ordered_request(MARKETS).respond_with_json(page1)
    httpserver.expect_ordered_request(MARKETS).respond_with_json(page2)
    records = make_client(httpserver.url_for("")).fetch_markets(300)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 299
    assert ids.count("c150") == 1


def test_429_with_retry_after_is_honoured(httpserver, recorded_page):
    httpserver.expect_oneshot_request(MARKETS).respond_with_data(
        "rate limited", status=429, headers={"Retry-After": "1"}
    )
    httpserver.expect_request(MARKETS).respond_with_json(recorded_page)
    client = make_client(httpserver.url_for(""))
    started = time.monotonic()
    assert client.fetch_markets(9) == recorded_page
    assert time.monotonic() - started >= 1.0  # waited what the server asked for
    assert len(httpserver.log) == 2


def test_429_retry_after_value_and_http_date(httpserver, recorded_page):
    sleeps: list[float] = []
    httpserver.expect_ordered_request(MARKETS).respond_with_data(
        "", status=429, headers={"Retry-After": "7"}
    )
    httpserver.expect_ordered_request(MARKETS).respond_with_data(
        "",
        status=429,
        headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},  # in the past
    )
    httpserver.expect_ordered_request(MARKETS).respond_with_json(recorded_page)
    client = make_client(httpserver.url_for(""), sleep=sleeps.append)
    assert client.fetch_markets(9) == recorded_page
    assert sleeps == [7.0, 0.0]


def test_429_without_retry_after_backs_off_exponentially_with_jitter(httpserver, recorded_page):
    sleeps: list[float] = []
    for _ in range(3):
        httpserver.expect_ordered_request(MARKETS).respond_with_data("", status=429)
    httpserver.expect_ordered_request(MARKETS).respond_with_json(recorded_page)
    client = make_client(
        httpserver.url_for(""), backoff_base=1.0, backoff_max=30.0, sleep=sleeps.append
    )
    assert client.fetch_markets(9) == recorded_page
    assert len(sleeps) == 3
    for attempt, slept in enumerate(sleeps, start=1):
        ceiling = 2 ** (attempt - 1)
        assert ceiling / 2 <= slept <= ceiling  # equal jitter within the exponential step


def test_retry_after_longer_than_allowed_gives_up(httpserver):
    httpserver.expect_request(MARKETS).respond_with_data(
        "", status=429, headers={"Retry-After": "3600"}
    )
    client = make_client(httpserver.url_for(""), max_retry_after=60, sleep=lambda s: None)
    with pytest.raises(CoinGeckoError, match="Retry-After 3600"):
        client.fetch_markets(9)
    assert len(httpserver.log) == 1


def test_500s_are_retried_then_succeed(httpserver, recorded_page):
    httpserver.expect_ordered_request(MARKETS).respond_with_data("oops", status=500)
    httpserver.expect_ordered_request(MARKETS).respond_with_data("bad gateway", status=502)
    httpserver.expect_ordered_request(MARKETS).respond_with_json(recorded_page)
    client = make_client(httpserver.url_for(""))
    assert client.fetch_markets(9) == recorded_page
    assert client.requests_made == 3


def test_persistent_500s_exhaust_the_bounded_budget(httpserver, caplog):
    httpserver.expect_request(MARKETS).respond_with_data("oops", status=503)
    client = make_client(httpserver.url_for(""), max_attempts=4)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(CoinGeckoError) as info:
        client.fetch_markets(9)
    assert time.monotonic() - started < 3
    assert "gave up after 4 attempts" in str(info.value)
    assert "HTTP 503" in str(info.value)
    assert len(httpserver.log) == 4
    assert caplog.text.count("retrying in") == 3


def test_deadline_stops_retries(httpserver):
    httpserver.expect_request(MARKETS).respond_with_data("", status=500)
    client = make_client(httpserver.url_for(""), backoff_base=5.0, backoff_max=5.0)
    with pytest.raises(CoinGeckoError, match="deadline"):
        client.fetch_markets(9, deadline=time.monotonic() + 1.0)
    assert len(httpserver.log) == 1


def test_read_timeout_is_retried(threaded_httpserver, recorded_page):
    httpserver = threaded_httpserver

    def slow(request: Request) -> Response:
        time.sleep(0.6)
        return Response(json.dumps(recorded_page), content_type="application/json")

    httpserver.expect_ordered_request(MARKETS).respond_with_handler(slow)
    httpserver.expect_ordered_request(MARKETS).respond_with_json(recorded_page)
    client = make_client(httpserver.url_for(""), read_timeout=0.2)
    assert client.fetch_markets(9) == recorded_page
    assert client.requests_made == 2


def test_timeouts_every_time_fail_the_poll(threaded_httpserver):
    httpserver = threaded_httpserver

    def slow(request: Request) -> Response:
        time.sleep(0.4)
        return Response("[]", content_type="application/json")

    httpserver.expect_request(MARKETS).respond_with_handler(slow)
    client = make_client(httpserver.url_for(""), read_timeout=0.1, max_attempts=2)
    with pytest.raises(CoinGeckoError, match="timed out"):
        client.fetch_markets(9)


def test_connection_refused_is_retried_then_fails():
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}/api/v3", max_attempts=3)
    with pytest.raises(CoinGeckoError, match="connection failed"):
        client.fetch_markets(9)
    assert client.requests_made == 3


def test_malformed_json_is_retried_then_fails(httpserver, recorded_page):
    truncated = json.dumps(recorded_page)[:500]
    httpserver.expect_ordered_request(MARKETS).respond_with_data(
        truncated, content_type="application/json"
    )
    httpserver.expect_ordered_request(MARKETS).respond_with_json(recorded_page)
    client = make_client(httpserver.url_for(""))
    assert client.fetch_markets(9) == recorded_page  # a truncated body is transient

    httpserver.clear()
    httpserver.expect_request(MARKETS).respond_with_data("<html>maintenance</html>")
    with pytest.raises(CoinGeckoError, match="malformed JSON"):
        make_client(httpserver.url_for(""), max_attempts=2).fetch_markets(9)


def test_error_object_instead_of_list_fails_without_retry(httpserver):
    body = {"status": {"error_code": 10002, "error_message": "API Key Missing"}}
    httpserver.expect_request(MARKETS).respond_with_json(body)
    client = make_client(httpserver.url_for(""))
    with pytest.raises(CoinGeckoError, match="not a list of markets"):
        client.fetch_markets(9)
    assert client.requests_made == 1


def test_plan_key_header_is_sent_and_key_never_leaks(httpserver, caplog):
    settings = load_settings(
        {
            "COINGECKO_API_KEY": SECRET,
            "COINGECKO_API_PLAN": "pro",
            "COINGECKO_API_URL": httpserver.url_for(""),
        }
    )

    def echo_key(request: Request) -> Response:  # a server that echoes the key in its error
        return Response(f"bad request for key {request.headers.get('x-cg-pro-api-key')}", 400)

    httpserver.expect_ordered_request(MARKETS).respond_with_data("", status=500)
    httpserver.expect_ordered_request(MARKETS).respond_with_handler(echo_key)
    client = CoinGeckoClient.from_settings(settings, backoff_base=0.01, backoff_max=0.02)
    with caplog.at_level(logging.DEBUG), pytest.raises(CoinGeckoError) as info:
        client.fetch_markets(9)
    for request, _ in httpserver.log:
        assert request.headers["x-cg-pro-api-key"] == SECRET
        assert SECRET not in request.url  # header only, never in the query string
    assert "HTTP 400" in str(info.value)
    assert SECRET not in str(info.value)
    assert "***" in str(info.value)
    assert SECRET not in caplog.text
    assert SECRET not in repr(client) and SECRET not in repr(settings)


def test_demo_plan_uses_the_demo_header(httpserver, recorded_page):
    settings = load_settings(
        {"COINGECKO_API_KEY": SECRET, "COINGECKO_API_URL": httpserver.url_for("")}
    )
    assert settings.coingecko_api_plan == "demo"
    httpserver.expect_request(MARKETS).respond_with_json(recorded_page)
    CoinGeckoClient.from_settings(settings).fetch_markets(9)
    ((request, _),) = httpserver.log
    assert request.headers["x-cg-demo-api-key"] == SECRET
    assert "x-cg-pro-api-key" not in request.headers


def test_unauthorised_names_what_to_set(httpserver):
    httpserver.expect_request(MARKETS).respond_with_data("", status=401)
    with pytest.raises(CoinGeckoError, match="COINGECKO_API_KEY"):
        make_client(httpserver.url_for("")).fetch_markets(9)
    assert len(httpserver.log) == 1  # not retried


def test_reachable_via_ping_or_markets(httpserver, recorded_page):
    settings = dataclasses.replace(load_settings({}), coingecko_api_url=httpserver.url_for(""))
    httpserver.expect_request("/ping").respond_with_json({"gecko_says": "(V3) To the Moon!"})
    assert coingecko_reachable(settings, timeout=1.0)

    httpserver.clear()  # a server that only knows /coins/markets (like the outside check's)
    httpserver.expect_request(MARKETS).respond_with_json(recorded_page)
    assert coingecko_reachable(settings, timeout=1.0)

    httpserver.clear()
    httpserver.expect_request("/ping").respond_with_data("", status=403)
    assert not coingecko_reachable(settings, timeout=1.0)


def test_unreachable_is_false_quickly():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = dataclasses.replace(
        load_settings({}), coingecko_api_url=f"http://127.0.0.1:{port}/api/v3"
    )
    started = time.monotonic()
    assert not coingecko_reachable(settings, timeout=1.0)
    assert time.monotonic() - started < 3


def test_quota_warnings():
    # Demo: 30 s polling = 86,400 calls/month > 10,000
    (warning,) = quota_warnings("demo", 30, 1)
    assert "10,000 calls/month" in warning and "86,400" in warning
    assert "pro" in warning
    assert quota_warnings("demo", 300, 1) == []  # 8,640 calls/month fits
    assert quota_warnings("pro", 30, 1) == []  # 86,400 of 500,000
    assert quota_warnings("public", 30, 1) == []  # 2 calls/min, no monthly cap
    (warning,) = quota_warnings("public", 30, 4)  # 1000 coins: 8 calls/min > ~5
    assert "calls/min" in warning
    assert len(quota_warnings("demo", 5, 4)) == 2
    assert "cached" not in (cache_note("pro", 60) or "")
    assert "60 s" in cache_note("demo", 30)


def test_key_with_public_plan_is_a_config_error():
    settings = dataclasses.replace(load_settings({}), coingecko_api_key=SECRET)
    with pytest.raises(ConfigError, match="COINGECKO_API_PLAN") as info:
        CoinGeckoClient.from_settings(settings)
    assert SECRET not in str(info.value)


# --------------------------------------------------------------------------------------------
# The whole market: 15,000 coins = 60 pages of 250, within the plan's rate limit
# --------------------------------------------------------------------------------------------
def recorded_market(recorded_page, n_total: int, hits: list):
    """Handler serving ``n_total`` coins built from the recorded real records (ids made unique
    by rank), honouring per_page/page; records each request's arrival time in ``hits``."""

    def handler(request: Request) -> Response:
        hits.append(time.monotonic())
        per_page = int(request.args["per_page"])
        page = int(request.args["page"])
        rows = []
        for rank in range((page - 1) * per_page + 1, min(n_total, page * per_page) + 1):
            base = dict(recorded_page[(rank - 1) % len(recorded_page)])
            base.update(id=f"{base['id']}-{rank}", market_cap_rank=rank)
            rows.append(base)
        return Response(json.dumps(rows), content_type="application/json")

    return handler


def test_15000_coins_are_paged_in_60_pages_spaced_within_the_pro_rate_limit(
    httpserver, recorded_page
):
    hits: list[float] = []
    httpserver.expect_request(MARKETS).respond_with_handler(
        recorded_market(recorded_page, 15_000, hits)
    )
    settings = dataclasses.replace(
        load_settings({}),
        coingecko_api_plan="pro",
        coingecko_api_key=SECRET,
        coingecko_api_url=httpserver.url_for(""),
    )
    client = CoinGeckoClient.from_settings(settings)
    started = time.monotonic()
    records = client.fetch_markets(15_000)
    elapsed = time.monotonic() - started
    assert len(records) == 15_000 and len({r["id"] for r in records}) == 15_000
    assert [r["market_cap_rank"] for r in records] == list(range(1, 15_001))
    assert client.requests_made == 60 == len(hits)
    pages = [int(req.args["page"]) for req, _ in httpserver.log]
    assert pages == list(range(1, 61))
    assert {int(req.args["per_page"]) for req, _ in httpserver.log} == {250}
    # never faster than the plan's 500 calls/min (0.12 s apart), so 60 pages take >= 7 s,
    # well inside a 30 s poll
    # Arrival times at the server jitter under load (one handler late by 60 ms was seen on 2
    # busy cores): check spans of 10 requests with 0.2 s of slack - an unspaced client sends 10
    # requests in a few ms, far below 1.0 s - and the whole run's span without slack.
    spans = [b - a for a, b in zip(hits, hits[10:], strict=False)]
    assert min(spans) >= 10 * 0.12 - 0.2
    assert hits[-1] - hits[0] >= 59 * 0.12 - 0.1
    assert 59 * 0.12 - 0.1 <= elapsed < 30
    assert max(sum(1 for t in hits if s <= t < s + 60) for s in hits) <= 500


def test_rate_limit_line_says_when_a_plan_cannot_page_the_market(caplog, ingest_args):
    from marketflow_assets.ingest.coingecko import rate_limit_line

    line = rate_limit_line("demo", 30, 60)
    assert line is not None and "\n" not in line
    assert "cannot page 60 page(s)" in line and "120.0 calls/min" in line
    assert "COINGECKO_API_PLAN=pro" in line and "--interval 120" in line
    assert "--coins 3,750" in line  # 15 pages of 250 fit 30 calls/min at 30 s
    assert rate_limit_line("pro", 30, 60) is None  # 120 calls/min of 500
    assert rate_limit_line("demo", 120, 60) is None
    assert "cannot" in rate_limit_line("public", 30, 60)

    from marketflow_assets.ingest import command

    settings = dataclasses.replace(load_settings({}), coingecko_api_plan="demo")
    args = ingest_args("--source", "coingecko", "--coins", "15000", "--interval", "30")
    with caplog.at_level(logging.WARNING, logger="marketflow_assets.ingest.command"):
        command._make_source(args, settings, None)
    assert any("cannot page 60 page(s)" in r.getMessage() for r in caplog.records)
    caplog.clear()
    pro = dataclasses.replace(settings, coingecko_api_plan="pro")
    with caplog.at_level(logging.WARNING, logger="marketflow_assets.ingest.command"):
        command._make_source(args, pro, None)
    assert not any("cannot" in r.getMessage() for r in caplog.records)
