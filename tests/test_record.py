"""`SelectionRecord`: the file round-trips, a record of the format before it was versioned still reads, and a run to
resume without a record is a clear error. `data/flexora_selection_v1.json` is a real record of that older format
(the demo's, written by this project before `format_version` existed)."""

import dataclasses
import json
from pathlib import Path

import pytest

from flexora_trl.record import FORMAT_VERSION, RECORD_NAME, SelectionRecord

V1 = Path(__file__).parent / "data" / "flexora_selection_v1.json"


def test_a_record_written_before_the_format_was_versioned_still_reads(tmp_path):
    raw = json.loads(V1.read_text())
    record = SelectionRecord.read(str(V1))
    assert "format_version" not in raw and record.format_version == 1
    assert record.selected_layers == raw["selected_layers"] and record.source == "search"
    assert record.alpha == {int(block): value for block, value in raw["alpha"].items()}
    assert list(record.scores) == list(record.alpha) == list(range(raw["num_layers"]))  # blocks as integers
    assert record.search_plan == raw["search_plan"] and record.options == raw["options"]
    # Written again it is the same record, in this version's format.
    record.write(str(tmp_path))
    again = json.loads((tmp_path / RECORD_NAME).read_text())
    assert again.pop("format_version") == FORMAT_VERSION
    assert {key: again[key] for key in raw} == raw
    assert all(again[key] is None for key in again.keys() - raw.keys())  # fields added since: unknown, not made up
    assert dataclasses.replace(SelectionRecord.read(str(tmp_path)), format_version=1) == record


def test_keys_of_a_newer_format_are_left_out(tmp_path):
    raw = json.loads(V1.read_text())
    (tmp_path / RECORD_NAME).write_text(json.dumps({**raw, "format_version": FORMAT_VERSION + 1, "a_new_key": 1}))
    assert SelectionRecord.read(str(tmp_path)).selected_layers == raw["selected_layers"]


def test_resuming_without_a_record_says_what_to_pass(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(ValueError, match="selection_file"):
        SelectionRecord.for_resume(str(tmp_path / "checkpoint-3"), str(tmp_path))
