"""Where a replay stands in its file, so a restarted ``marketflow ingest --source replay`` resumes.

``marketflow up`` runs ingest under supervision: after a crash (even ``kill -9``) it is started
again, and a replay that began again at the first line would publish every poll once more. With
``--resume-file PATH`` ingest keeps the number of the last replay line it has handled (published
and acknowledged, or rejected as unusable) in a small JSON file, replaced atomically after every
poll, and a restart skips the lines up to it. A poll published but not yet counted when the
process died is published again; the Spark job drops such repeats by (``id``, ``ts``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class ReplayProgress:
    """The last handled line of ``replay_file``, kept in ``path``."""

    def __init__(self, path: str | Path, replay_file: str | Path):
        self.path = Path(path)
        self.replay_file = str(Path(replay_file).resolve())

    def load(self) -> int:
        """Last line handled in an earlier run of the same replay file (0: start at the top)."""
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("replay progress %s unreadable (%s); starting at line 1", self.path, exc)
            return 0
        if state.get("replay_file") != self.replay_file:
            return 0
        line = state.get("line")
        return line if isinstance(line, int) and line > 0 else 0

    def save(self, line: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"replay_file": self.replay_file, "line": line}))
        os.replace(tmp, self.path)
