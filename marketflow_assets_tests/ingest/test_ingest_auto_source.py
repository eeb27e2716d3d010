"""``marketflow ingest --source auto`` (the default, shared with ``up``): live CoinGecko when its
API answers, else the simulator — through the embedded Tansu broker."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from marketflow_assets.ingest import command
from marketflow_assets.runtime.services import free_port
from marketflow_assets.settings import load_settings

MARKETS = "/coins/markets"


@pytest.fixture
def broker_settings(kafka_bootstrap, new_topic, data_dir):
    """Settings with the test broker and a fresh topic (no PostgreSQL: ingest needs none)."""
    return dataclasses.replace(
        load_settings({}),
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic=new_topic("auto"),
        data_dir=data_dir,
    )


def test_default_source_is_auto(ingest_args):
    assert ingest_args().source == "auto"


def test_auto_polls_coingecko_when_it_answers(
    httpserver, recorded_page, broker_settings, ingest_args, topic_reader, caplog
):
    httpserver.expect_request("/ping").respond_with_json({"gecko_says": "(V3) To the Moon!"})
    httpserver.expect_request(MARKETS).respond_with_json(recorded_page)
    settings = dataclasses.replace(broker_settings, coingecko_api_url=httpserver.url_for(""))
    caplog.set_level(logging.INFO)

    assert command.run(ingest_args("--once"), settings) == 0

    messages = topic_reader(settings.kafka_topic, expected=len(recorded_page))
    assert sorted(m["key"] for m in messages) == sorted(r["id"] for r in recorded_page)
    assert "source: live CoinGecko" in caplog.text
    assert any(req.path == MARKETS for req, _ in httpserver.log)


def test_auto_falls_back_to_the_simulator_when_coingecko_is_unreachable(
    broker_settings, ingest_args, topic_reader, caplog
):
    nobody = f"http://127.0.0.1:{free_port()}/api/v3"  # nothing listens there
    settings = dataclasses.replace(broker_settings, coingecko_api_url=nobody)
    caplog.set_level(logging.INFO)

    assert command.run(ingest_args("--once", "--coins", "12", "--seed", "3"), settings) == 0

    messages = topic_reader(settings.kafka_topic, expected=12)
    assert len(messages) == 12
    assert "bitcoin" in {m["key"] for m in messages}  # the simulator's real coin ids
    assert "source: simulator (CoinGecko at" in caplog.text
