"""What the ``marketflow`` subcommands share: option defaults and one style of help text.

``up`` starts ``ingest`` as a child with its own options, so both take their ``--source``,
``--coins``, ``--interval`` and ``--speed`` defaults from here: ``marketflow up`` and
``marketflow ingest`` without options poll the same source for the same coins.

Help texts start in lowercase, end without a period, and every option that has a default ends
with ``(default: X)`` (:class:`HelpFormatter` adds it; a help text that already says
``(default: ...)`` in words keeps its own wording).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

#: Price sources of ``up`` and ``ingest``; ``auto`` = live CoinGecko when its API answers at
#: start-up, else the seeded simulator (one log line says which).
SOURCES = ("auto", "coingecko", "replay", "simulate")
DEFAULT_SOURCE = "auto"
#: Top-N coins by market cap per poll (one CoinGecko page of up to 250).
DEFAULT_COINS = 100
#: Seconds between poll starts.
DEFAULT_INTERVAL = 30.0
#: Replay speed (multiplies the recorded time between polls; 0 = no waiting).
DEFAULT_SPEED = 1.0

SOURCE_HELP = (
    "price source: live CoinGecko, a replay file, the seeded simulator, or auto = live "
    "CoinGecko when its API answers at start-up, else the simulator"
)


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """``--source``, ``--coins``, ``--interval``, ``--replay-file``, ``--speed``: the one
    definition ``marketflow up`` and ``marketflow ingest`` share (``up`` hands them to its
    ingest child as given)."""
    parser.add_argument("--source", choices=SOURCES, default=DEFAULT_SOURCE, help=SOURCE_HELP)
    parser.add_argument(
        "--coins", type=int, default=DEFAULT_COINS, help="top-N coins by market cap per poll"
    )
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between poll starts"
    )
    parser.add_argument(
        "--replay-file", type=Path, help="replay file (JSON Lines) for --source replay"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=DEFAULT_SPEED,
        help="replay speed: multiplies real time between recorded polls; 0 = no waiting",
    )


def check_replay_file(args: argparse.Namespace) -> None:
    """``--source replay`` needs an existing ``--replay-file`` (one usage error otherwise)."""
    from marketflow_assets.settings import ConfigError

    if args.source == "replay" and not args.replay_file:
        raise ConfigError("--source replay needs --replay-file PATH")
    if args.source == "replay" and not Path(args.replay_file).is_file():
        raise ConfigError(f"--replay-file {args.replay_file}: no such file")


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to the help of every option that has a default.

    Unlike :class:`argparse.ArgumentDefaultsHelpFormatter` it says nothing for a default of
    ``None`` or ``False`` (an option that is off unless given) and leaves a help text alone that
    already names its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or "(default" in text
            or action.default in (None, False, argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"
