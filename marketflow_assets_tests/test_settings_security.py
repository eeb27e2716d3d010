"""Connection settings checked up front (issue 29): the bootstrap list, the Kafka security
protocol, SASL mechanism and credentials, TLS files and the alert webhook each give one
ConfigError naming the variable; good settings become one :class:`KafkaSecurity` that every
client is built from, with the password kept out of ``repr`` and log lines."""

from __future__ import annotations

import socket
import threading

import pytest

from marketflow_assets import kafka_client
from marketflow_assets.runtime.services import (
    ServiceError,
    free_port,
    kafka_reachable,
    postgres_refusal,
    wait_for_kafka,
)
from marketflow_assets.settings import (
    ConfigError,
    load_check_settings,
    load_monitoring_settings,
    load_settings,
    parse_bootstrap,
    redact_secret,
)


def _env(**values: str) -> dict[str, str]:
    return {"MARKETFLOW_DOTENV": "", **values}


@pytest.mark.parametrize(
    "value", ["host", "h:notaport", ",", "a:9092,", "h:0", "h:65536", "[::1:9092", "x y:1", " "]
)
def test_malformed_bootstrap_lists_are_refused(value):
    if not value.strip():  # blank means unset: the embedded broker
        assert load_settings(_env(MARKETFLOW_KAFKA_BOOTSTRAP=value)).kafka_bootstrap is None
        return
    with pytest.raises(ConfigError, match="MARKETFLOW_KAFKA_BOOTSTRAP"):
        load_settings(_env(MARKETFLOW_KAFKA_BOOTSTRAP=value))


def test_good_bootstrap_lists_are_normalised():
    assert parse_bootstrap("a:1, b.example.com:9093,[::1]:9092") == [
        "a:1",
        "b.example.com:9093",
        "[::1]:9092",
    ]
    settings = load_settings(_env(MARKETFLOW_KAFKA_BOOTSTRAP=" a:1 , b:2 "))
    assert settings.kafka_bootstrap == "a:1,b:2"


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({"MARKETFLOW_KAFKA_SECURITY_PROTOCOL": "TLS"}, "MARKETFLOW_KAFKA_SECURITY_PROTOCOL"),
        (
            {
                "MARKETFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "MARKETFLOW_KAFKA_SASL_MECHANISM": "GSSAPI",
                "MARKETFLOW_KAFKA_SASL_USERNAME": "u",
                "MARKETFLOW_KAFKA_SASL_PASSWORD": "p",
            },
            "MARKETFLOW_KAFKA_SASL_MECHANISM",
        ),
        ({"MARKETFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "MARKETFLOW_KAFKA_SASL_USERNAME"),
        ({"MARKETFLOW_KAFKA_SASL_USERNAME": "u"}, "does not use SASL"),
        (
            {"MARKETFLOW_KAFKA_SECURITY_PROTOCOL": "SSL", "MARKETFLOW_KAFKA_SSL_CAFILE": "/no/ca"},
            "MARKETFLOW_KAFKA_SSL_CAFILE",
        ),
        ({"MARKETFLOW_KAFKA_SSL_CAFILE": __file__}, "does not use TLS"),
        (
            {
                "MARKETFLOW_KAFKA_SECURITY_PROTOCOL": "SSL",
                "MARKETFLOW_KAFKA_SSL_CERTFILE": __file__,
            },
            "MARKETFLOW_KAFKA_SSL_KEYFILE",
        ),
        (
            {
                "MARKETFLOW_KAFKA_SECURITY_PROTOCOL": "SSL",
                "MARKETFLOW_KAFKA_SSL_CHECK_HOSTNAME": "x",
            },
            "MARKETFLOW_KAFKA_SSL_CHECK_HOSTNAME",
        ),
    ],
)
def test_bad_kafka_security_settings_name_the_variable(extra, names):
    with pytest.raises(ConfigError, match=names):
        load_settings(_env(MARKETFLOW_KAFKA_BOOTSTRAP="b:9092", **extra))


def test_sasl_settings_make_one_security_object_without_the_password_in_text():
    settings = load_settings(
        _env(
            MARKETFLOW_KAFKA_BOOTSTRAP="b:9093",
            MARKETFLOW_KAFKA_SECURITY_PROTOCOL="sasl_ssl",
            MARKETFLOW_KAFKA_SASL_MECHANISM="scram-sha-512",
            MARKETFLOW_KAFKA_SASL_USERNAME="ingest",
            MARKETFLOW_KAFKA_SASL_PASSWORD="pa$$word",
        )
    )
    sec = settings.kafka_security
    assert (sec.protocol, sec.sasl_mechanism, sec.sasl_username) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "ingest",
    )
    assert sec.ssl_check_hostname  # on by default
    for text in (repr(settings), repr(sec), sec.describe()):
        assert "pa$$word" not in text
    config = kafka_client.client_config(sec)
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_plain_password"] == "pa$$word"
    assert config["ssl_context"].check_hostname
    # the project's Spark source gets the same object back from its options
    assert kafka_client.security_from_options(kafka_client.source_options(sec)) == sec
    jvm = kafka_client.spark_connector_options(sec)
    assert jvm["kafka.sasl.mechanism"] == "SCRAM-SHA-512"
    assert "ScramLoginModule required" in jvm["kafka.sasl.jaas.config"]
    # PLAIN by default when a username is set
    with pytest.raises(ConfigError, match="needs MARKETFLOW_KAFKA_BOOTSTRAP"):
        load_settings(_env(MARKETFLOW_KAFKA_SECURITY_PROTOCOL="SSL"))  # the embedded broker
    plain = load_settings(
        _env(
            MARKETFLOW_KAFKA_BOOTSTRAP="b:9092",
            MARKETFLOW_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
            MARKETFLOW_KAFKA_SASL_USERNAME="u",
            MARKETFLOW_KAFKA_SASL_PASSWORD="p",
        )
    ).kafka_security
    assert plain.sasl_mechanism == "PLAIN" and not plain.uses_tls


@pytest.mark.parametrize(
    "url", ["ftp://hooks.example.com/t0k3n", "hooks.example.com/t0k3n", "https:///t0k3n"]
)
def test_webhook_url_must_be_http_with_a_host(url):
    env = _env(MARKETFLOW_ALERT_WEBHOOK_URL=url)
    for load in (load_check_settings, load_monitoring_settings):
        with pytest.raises(ConfigError, match="MARKETFLOW_ALERT_WEBHOOK_URL") as err:
            load(env)
        assert "t0k3n" not in str(err.value)  # such a URL usually carries a token


def test_ui_host_must_be_local_and_an_open_one_is_warned_about(caplog):
    from marketflow_assets.runtime.up import warn_if_exposed

    with caplog.at_level("WARNING", logger="marketflow.up"):
        warn_if_exposed("127.0.0.1")
        warn_if_exposed("localhost")
        assert not caplog.records
        warn_if_exposed("0.0.0.0")
    assert "NO authentication" in caplog.text and "docs/DEPLOY.md" in caplog.text
    with pytest.raises(ConfigError, match="--host"):
        warn_if_exposed("no-such-host.invalid")


def test_a_scheme_in_the_bootstrap_list_gets_a_hint():
    with pytest.raises(ConfigError, match="without a scheme"):
        load_settings(_env(MARKETFLOW_KAFKA_BOOTSTRAP="SASL_SSL://b:9096"))


@pytest.fixture
def closing_listener():
    """A TCP port that accepts and closes at once: a broker restarting, or a proxy without a
    healthy backend. It is away, not refusing us."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


@pytest.mark.parametrize("protocol", ["SSL", "SASL_PLAINTEXT"])
def test_a_broker_that_closes_connections_is_away_not_a_configuration_error(
    closing_listener, protocol
):
    extra = (
        {"MARKETFLOW_KAFKA_SASL_USERNAME": "u", "MARKETFLOW_KAFKA_SASL_PASSWORD": "p"}
        if protocol.startswith("SASL")
        else {}
    )
    security = load_settings(
        _env(
            MARKETFLOW_KAFKA_BOOTSTRAP=closing_listener,
            MARKETFLOW_KAFKA_SECURITY_PROTOCOL=protocol,
            **extra,
        )
    ).kafka_security
    kafka_client.preflight(closing_listener, security, timeout_s=2)  # returns: the caller waits
    with pytest.raises(ServiceError, match="did not answer"):  # up: waited for, then exit 2
        wait_for_kafka(closing_listener, 4, security)


def test_reachability_tries_every_bootstrap_server(closing_listener):
    dead = f"127.0.0.1:{free_port()}"
    assert kafka_reachable(f"{dead},{closing_listener}")
    with pytest.raises(OSError):
        kafka_reachable(dead)


def test_postgres_errors_never_show_the_password():
    import psycopg2

    url = "postgresql://mf:s3cr%zzet@127.0.0.1:1/mf"  # an invalid percent-escape: libpq refuses
    with pytest.raises(psycopg2.Error) as err:
        psycopg2.connect(url)
    reason = postgres_refusal(err.value, url)
    assert reason and reason.startswith("libpq cannot use this URL")
    assert "s3cr" not in reason
    assert redact_secret("password s3cr%zzet and s3cr%zzet", url) == "password *** and ***"
