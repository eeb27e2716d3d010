"""``marketflow`` project basics: --version, --debug anywhere, one help style, shared defaults,
hidden test knobs, ``stream`` and ``spark-cluster`` subcommands, exit code 2 on bad usage."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from importlib.metadata import version as dist_version
from pathlib import Path

import pytest

from marketflow_assets import cli_defaults
from marketflow_assets.cli import build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = (
    "up",
    "ingest",
    "follow",
    "refresh",
    "forecast",
    "dashboard",
    "compact",
    "stream",
    "spark-cluster",
)


def marketflow(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m marketflow_assets.cli ARGV`` with this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "marketflow_assets.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO_ROOT,
    )


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


def test_version_prints_the_installed_version_and_exits_0():
    res = marketflow("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"marketflow {dist_version('marketflow')}\n"
    assert res.stderr == ""


def test_package_version_is_the_distribution_version():
    """The fallback (no installed metadata) says the same as pyproject.toml's version."""
    import marketflow_assets

    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    assert marketflow_assets.__version__ == declared


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "up"],
        ["up", "--debug"],
        ["--debug", "up", "--debug"],
        ["--debug", "ingest", "--source", "simulate"],
        ["ingest", "--source", "simulate", "--debug"],
        ["--debug", "stream", "--available-now"],
        ["stream", "--available-now", "--debug"],
        ["spark-cluster", "--debug"],
    ],
)
def test_debug_before_or_after_the_subcommand(parser, argv):
    assert parser.parse_args(argv).debug is True


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_without_debug_it_is_off(parser, command):
    assert parser.parse_args([command]).debug is False


@pytest.mark.parametrize("argv", [["--debug", "compact"], ["compact", "--debug"], ["compact"]])
def test_debug_before_or_after_has_the_same_effect(caplog, capsys, argv):
    """The failure's traceback is logged with --debug (wherever it stands), never without."""
    rc = main([*argv, "--before", "not-a-date"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1] == "marketflow compact: --before: not an ISO date/time: 'not-a-date'"
    tracebacks = [r for r in caplog.records if r.name == "marketflow" and r.exc_info]
    assert len(tracebacks) == (1 if "--debug" in argv else 0)


@pytest.mark.parametrize("command", ["up", "ingest"])
def test_help_names_every_default(command):
    res = marketflow(command, "--help")
    assert res.returncode == 0, res.stderr
    text = flat(res.stdout)
    sub = subparsers(build_parser())[command]
    formatter = sub._get_formatter()
    defaulted = [
        a
        for a in sub._actions
        if a.default not in (None, False, argparse.SUPPRESS) and a.help != argparse.SUPPRESS
    ]
    assert {"--source", "--coins", "--interval", "--speed"} <= {
        a.option_strings[-1] for a in defaulted
    }
    for action in defaulted:
        assert formatter._expand_help(action).endswith(f"(default: {action.default})"), action
        assert f"(default: {action.default})" in text, action
    assert text.count("(default:") >= len(defaulted)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_one_help_style(parser, command):
    """Lowercase start, no trailing period, defaults only as "(default: X)"."""
    for action in subparsers(parser)[command]._actions:
        text = action.help
        if not text or text == argparse.SUPPRESS:
            continue
        assert text[0].islower(), (command, action.option_strings, text)
        assert not text.rstrip().endswith("."), (command, action.option_strings, text)
        assert not re.search(r"\(default [^:]", text), (command, action.option_strings, text)
        assert not re.search(r"\([\w.]+\)$", text), (command, text)


def test_up_and_ingest_share_their_defaults(parser):
    up = parser.parse_args(["up"])
    ingest = parser.parse_args(["ingest"])
    for name in ("source", "coins", "interval", "speed"):
        assert getattr(up, name) == getattr(ingest, name), name
    assert (up.source, up.coins) == (cli_defaults.DEFAULT_SOURCE, cli_defaults.DEFAULT_COINS)
    assert up.source == "auto"
    choices = {
        name: next(a.choices for a in subparsers(parser)[name]._actions if a.dest == "source")
        for name in ("up", "ingest")
    }
    assert tuple(choices["up"]) == tuple(choices["ingest"]) == cli_defaults.SOURCES


@pytest.mark.parametrize(
    "command, flag, value, dest",
    [("ingest", "--max-polls", "3", "max_polls"), ("follow", "--max-runs", "2", "max_runs")],
)
def test_test_knobs_are_hidden_but_accepted(parser, command, flag, value, dest):
    sub = subparsers(parser)[command]
    assert flag not in sub.format_help()
    assert getattr(parser.parse_args([command, flag, value]), dest) == int(value)


def test_spec_flags_still_parse(parser, tmp_path):
    args = parser.parse_args(
        ["ingest", "--source", "replay", "--once", "--interval", "5", "--coins", "7"]
        + ["--replay-file", str(tmp_path / "r.jsonl"), "--speed", "0", "--metrics-port", "0"]
    )
    assert (args.source, args.once, args.interval, args.coins, args.speed) == (
        "replay",
        True,
        5.0,
        7,
        0.0,
    )
    assert args.metrics_port == 0
    for source in ("coingecko", "replay", "simulate", "auto"):
        assert parser.parse_args(["up", "--source", source]).source == source
    assert parser.parse_args(["up", "--record", "r.jsonl"]).record == Path("r.jsonl")


@pytest.mark.parametrize(
    "command, expected",
    [
        ("stream", ["--available-now", "--trigger-seconds", "--starting-offsets", "--bootstrap"]),
        ("spark-cluster", ["--cores", "--memory", "--app-cores", "--work-dir"]),
    ],
)
def test_stream_and_spark_cluster_subcommands_have_help(command, expected):
    res = marketflow(command, "--help")
    assert res.returncode == 0, res.stderr
    for option in expected:
        assert option in res.stdout
    assert "(default:" in res.stdout


def test_stream_takes_the_streaming_jobs_own_options(parser):
    """``marketflow stream`` and ``python spark_streaming/kafka_streaming.py`` agree."""
    from spark_streaming import kafka_streaming

    own = argparse.ArgumentParser()
    kafka_streaming.add_arguments(own)
    argv = ["--available-now", "--trigger-seconds", "3", "--source", "python", "--topic", "t"]
    via_cli = vars(parser.parse_args(["stream", *argv]))
    for key, value in vars(own.parse_args(argv)).items():
        assert via_cli[key] == value, key


def test_stream_without_a_broker_is_a_configuration_error(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("MARKETFLOW_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("MARKETFLOW_DATA_DIR", str(tmp_path))
    assert main(["stream", "--available-now"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("marketflow stream: MARKETFLOW_KAFKA_BOOTSTRAP is not set")


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: command"),
        (["nonsense"], "invalid choice: 'nonsense'"),
        (["up", "--coins", "many"], "argument --coins: invalid int value: 'many'"),
        (["ingest", "--source", "bogus"], "argument --source: invalid choice: 'bogus'"),
        (["up", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_usage_exits_2_with_one_line(argv, message):
    res = marketflow(*argv)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert message in lines[0]
    assert res.stdout == ""


def test_bad_spark_cluster_options_exit_2_before_starting_anything(capsys):
    assert main(["spark-cluster", "--cores", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1] == "marketflow spark-cluster: --cores must be at least 1 and --app-cores 1..--cores"
    )


def test_spark_standalone_module_entry_point_still_works():
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, "-m", "marketflow_assets.runtime.spark_standalone"]
    res = subprocess.run([*cmd, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and "--app-cores" in res.stdout
    res = subprocess.run(
        [*cmd, "--cores", "0"], capture_output=True, text=True, env=env, timeout=60
    )
    assert res.returncode == 2
    assert "--cores must be at least 1" in res.stderr


def test_a_command_imports_only_its_own_module():
    """``marketflow live`` (and ingest, up, the dashboard launcher) build their command line
    without importing Dagster, Spark or pandas: each such process of ``up`` stays small."""
    probe = (
        "import sys; from marketflow_assets.cli import build_parser; "
        "build_parser(only=[sys.argv[1]]); "
        "print(sorted(m for m in ('dagster', 'pyspark', 'pandas') if m in sys.modules))"
    )
    for command in ("live", "ingest", "up", "dashboard"):
        res = subprocess.run(
            [sys.executable, "-c", probe, command],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "[]", (command, res.stdout)


def test_top_level_help_lists_every_command_without_loading_them():
    res = marketflow("--help")
    assert res.returncode == 0, res.stderr
    for command in (*SUBCOMMANDS, "live"):
        assert command in res.stdout
    res = marketflow("no-such-command")
    assert res.returncode == 2
    assert "invalid choice: 'no-such-command'" in res.stderr
