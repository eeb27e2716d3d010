"""The one Definitions object of Marketflow: assets, checks, sensors, schedules and resources.

Each domain package contributes its own ``defs``; cross-cutting pieces (resources) are applied
here. ``dagster definitions validate -w workspace.yaml`` loads exactly this module.
"""

import dagster as dg

from marketflow_assets import assets, checks
from marketflow_assets.checks import stream as stream_checks
from marketflow_assets.resources import RESOURCES

defs = dg.Definitions.merge(
    assets.defs,
    checks.defs,
    stream_checks.defs,
    dg.Definitions(resources=RESOURCES),
)
