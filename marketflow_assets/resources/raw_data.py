"""Location of the raw Parquet dataset that the Spark streaming job maintains."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from marketflow_assets.settings import load_settings


class RawDataResource(dg.ConfigurableResource):
    """Root of ``raw_prices/`` and Spark checkpoints.

    ``data_dir`` unset: ``MARKETFLOW_DATA_DIR``, else ``./data`` (read when used, not when the
    definitions load).
    """

    data_dir: str | None = Field(
        default=None, description="Data directory; default MARKETFLOW_DATA_DIR, else ./data."
    )

    @property
    def root(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser().absolute()
        return load_settings().data_dir

    @property
    def raw_dir(self) -> Path:
        return self.root / "raw_prices"
