"""The last-ranked peer: LoRA on the blocks a Flexora run's score ranks last, as many as it kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.last_ranked import main
from benchmarks.run import last_ranked

RECORD = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "new-tasks-overfit" / "next_number.json"


def test_the_last_ranked_blocks_are_the_other_end_of_the_order_ties_to_the_lower_block():
    scores = {"0": 0.3, "1": -0.2, "2": 0.1, "3": -0.2, "4": -0.5, "5": 0.0}
    assert last_ranked(scores, 3) == [1, 3, 4]  # -0.5, then the tie at -0.2 (both fit)
    assert last_ranked(scores, 2) == [1, 4]  # the tie goes to the lower block
    assert last_ranked(scores, 6) == list(range(6))


def test_a_record_without_its_command_or_scores_stops_before_any_training(tmp_path):
    record = json.loads(RECORD.read_text())
    no_command = tmp_path / "no_command.json"
    no_command.write_text(json.dumps({**record, "meta": {**record["meta"], "command": "python train.py"}}))
    with pytest.raises(SystemExit, match="no `python -m benchmarks.run` command"):
        main([str(no_command), "--out", str(tmp_path / "out.json")])
    no_scores = tmp_path / "no_scores.json"
    no_scores.write_text(json.dumps({**record, "runs": [{k: v for k, v in r.items() if k != "scores"}
                                                        for r in record["runs"]]}))
    with pytest.raises(SystemExit, match="no Flexora run with per-block scores"):
        main([str(no_scores), "--out", str(tmp_path / "out.json")])
    assert not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_a_committed_record_gets_its_last_ranked_run_and_a_second_call_keeps_it(tmp_path, capsys):
    """The committed next_number record, its command at the quick profile's sizes (16 examples, 3 epochs)."""
    record = json.loads(RECORD.read_text())
    command = record["meta"]["command"].replace("--profile dev", "--profile quick")
    quick = tmp_path / "next_number.json"
    quick.write_text(json.dumps({**record, "meta": {**record["meta"], "command": command}}))
    out = tmp_path / "last_ranked.json"
    main([str(quick), "--out", str(out), "--seeds", "0"])
    [run] = json.loads(out.read_text())["runs"]
    flexora = next(r for r in record["runs"] if r["arm"] == "flexora" and r["seed"] == 0)
    kept, scores = len(flexora["selected_layers"]), {int(b): s for b, s in flexora["scores"].items()}
    assert run["key"] == "next_number/overfit/last_ranked/0" and run["arm"] == "last_ranked"
    assert len(run["selected_layers"]) == kept
    assert max(scores[b] for b in run["selected_layers"]) <= min(s for b, s in scores.items()
                                                                 if b not in run["selected_layers"])
    assert run["learning_rate"] == 5e-3 and run["finetune_steps"] == 6  # the command's rate; 16 examples x 3 epochs
    assert 0 <= run["accuracy"] <= 1
    rows = report.paired_table(report.combined([record, json.loads(out.read_text())]))
    assert any(row.startswith("| next_number | overfit | last-ranked blocks | 1 |") for row in rows)
    written = out.read_bytes()
    main([str(quick), "--out", str(out), "--seeds", "0"])
    assert out.read_bytes() == written
    assert f"last-ranked runs in {out}: 1" in capsys.readouterr().out
