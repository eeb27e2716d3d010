"""``python -m marketflow_assets.ingest ...``: the ingest command without the ``marketflow`` CLI."""

from __future__ import annotations

import argparse
import logging
import sys

from marketflow_assets.cli_defaults import HelpFormatter
from marketflow_assets.ingest import command
from marketflow_assets.settings import ConfigError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m marketflow_assets.ingest",
        description=command.__doc__,
        formatter_class=HelpFormatter,
    )
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return command.run(args, load_settings())
    except ConfigError as exc:
        print(f"marketflow ingest: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
