"""Every Dagster name stays as it was: the loaded definitions match the committed snapshot.

Asset keys, groups, code versions, kinds, partitions, check names, job, sensor and schedule names,
intervals, default statuses, crons and tags are what cursors, run history and ``check_results``
key on. A deliberate change regenerates the fixture with
``python -m marketflow_assets_tests.defs_snapshot --write`` and shows up in review as its diff.
"""

from __future__ import annotations

import difflib
import json

from marketflow_assets_tests.defs_snapshot import FIXTURE, run_snapshot


def test_loaded_definitions_match_the_snapshot(tmp_path):
    expected = FIXTURE.read_text()
    actual = run_snapshot(str(tmp_path))
    assert json.loads(actual)["assets"], "the snapshot holds no asset"
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            "fixtures/defs_snapshot.json",
            "loaded definitions",
        )
    )
    assert actual == expected, f"the loaded definitions changed:\n{diff}"
