"""Replay resume and the acknowledged-poll recorder, through the real broker: a restarted
replay publishes nothing twice and skips nothing; the record holds every acknowledged poll once."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

from marketflow_assets.ingest import command
from marketflow_assets.ingest.sources import ReplayRecorder, simulate_polls

START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _lines(polls) -> str:
    return "".join(json.dumps({"ts": ts, "coins": recs}) + "\n" for ts, recs in polls)


def test_replay_resumes_after_the_last_handled_line_and_records_each_poll_once(
    tmp_path, settings, ingest_args, topic_reader
):
    polls = list(simulate_polls(4, seed=9, start=START, interval_s=30, count=5))
    bad = dict(polls[1][1][0], id="bad-coin", current_price=-1)  # dead-lettered, not recorded
    polls[1] = (polls[1][0], [*polls[1][1], bad])
    replay = tmp_path / "replay.jsonl"
    replay.write_text(_lines(polls[:3]) + "{torn line\n")
    progress, record = tmp_path / "progress.json", tmp_path / "record.jsonl"
    argv = ["--source", "replay", "--replay-file", str(replay), "--speed", "0"]
    argv += ["--resume-file", str(progress), "--record", str(record)]

    assert command.run(ingest_args(*argv), settings) == 1  # the torn line fails this run
    assert json.loads(progress.read_text())["line"] == 4  # ... and is not retried

    # The file grows; a restart (as `up` does after a crash) publishes only the new lines.
    with replay.open("a") as fh:
        fh.write(_lines(polls[3:]))
    assert command.run(ingest_args(*argv), settings) == 0

    messages = topic_reader(settings.kafka_topic, expected=20)
    assert Counter((m["key"], m["value"]["ts"]) for m in messages) == Counter(
        (r["id"], ts) for ts, recs in polls for r in recs if r["id"] != "bad-coin"
    )  # every good record of the file exactly once across the two runs
    assert len(topic_reader(settings.dlq_topic, expected=1)) == 1

    recorded = [json.loads(line) for line in record.read_text().splitlines()]
    assert [p["ts"] for p in recorded] == [ts for ts, _ in polls]
    assert recorded[1]["coins"] == polls[1][1][:-1]  # as received, without the dead letter


def test_recorder_cuts_a_torn_line_and_knows_the_last_ts(tmp_path):
    path = tmp_path / "record.jsonl"
    recorder = ReplayRecorder(path)
    assert recorder.last_ts is None
    recorder.append("2024-05-01T12:00:00.000Z", [{"id": "a"}])
    recorder.append("2024-05-01T12:00:30.000Z", [{"id": "b"}])
    recorder.close()
    with path.open("a") as fh:
        fh.write('{"ts": "2024-05-01T12:01:00.000Z", "coi')  # killed mid-write

    reopened = ReplayRecorder(path)
    assert reopened.last_ts == "2024-05-01T12:00:30.000Z"
    reopened.append("2024-05-01T12:01:00.000Z", [{"id": "c"}])
    reopened.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["ts"][-10:] for line in lines] == ["00:00.000Z", "00:30.000Z", "01:00.000Z"]
