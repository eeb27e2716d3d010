"""Location of the raw Parquet dataset that the Spark streaming job maintains."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


class RawDataResource(dg.ConfigurableResource):
    """Root of ``raw_prices/`` and Spark checkpoints (``MARKETFLOW_DATA_DIR``)."""

    data_dir: str = "data"

    @property
    def raw_dir(self) -> Path:
        return Path(self.data_dir).expanduser().absolute() / "raw_prices"
