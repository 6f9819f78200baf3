"""More peers in a record's cells: the blocks a Flexora run's score ranks last, its positive rule's, its top K,
random K, the main part's random draws, Spectrum's blocks, the lowest blocks, all blocks at the kept fraction of the
rate, the kept blocks and all blocks at the rate raised by it, and those or random blocks at the rate times a given
factor."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.add_peers import main, peers, record_args
from benchmarks.run import last_ranked, machine, meta, parse_args, profile_of

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
        main([str(no_command), "--out", str(tmp_path / "out.json"), "--peers", "last_ranked"])
    no_scores = tmp_path / "no_scores.json"
    no_scores.write_text(json.dumps({**record, "runs": [{k: v for k, v in r.items() if k != "scores"}
                                                        for r in record["runs"]]}))
    with pytest.raises(SystemExit, match="no Flexora run with per-block scores"):
        main([str(no_scores), "--out", str(tmp_path / "out.json"), "--peers", "last_ranked"])
    assert not (tmp_path / "out.json").exists()


def test_a_records_command_gives_back_its_json_options(monkeypatch):
    """The record's `meta.command` is shell-quoted: a JSON --flexora-options parses back as given (it once lost its
    quotes, and `add_peers` could not read the record)."""
    argv = ["--profile", "dev", "--main", "subtraction:learn", "--flexora-options",
            '{"selection_count_score": "final_taylor"}', "--main-peers", ""]
    monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", *argv])
    args = parse_args(argv)
    parsed = record_args({"meta": meta(args, profile_of(args))}, "record.json")
    assert parsed.flexora_options == {"selection_count_score": "final_taylor"} and parsed.main_peers == []


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_peers_train_at_the_precision_the_records_runs_trained_in(monkeypatch, precision):
    """A command with the default `--precision auto` resolves by the machine; the peers of a record made on another
    machine must train as its runs did, whatever this machine would pick."""
    argv = ["--profile", "dev", "--main", "subtraction:overfit", "--learning-rate", "2e-3"]
    monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", *argv])
    args = parse_args(argv)
    record = {"meta": {**meta(args, profile_of(args)), "precision": precision}}
    assert "--precision" not in record["meta"]["command"]
    assert record_args(record, "record.json").precision == precision


@pytest.mark.parametrize("spec", ["top", "top:0", "random:30", "top:five", "bottom:3", "last_ranked:3", "positive:3",
                                  "random:", "lowest:3", "spectrum:3", "all_at_kept_rate:3", "kept_at_raised_rate:3",
                                  "all_at_raised_rate:3", "kept_at_kept_rate:3", "snr", "kept_at_rate",
                                  "kept_at_rate:0", "all_at_rate:-1", "all_at_rate:x", "kept_at_rate:inf",
                                  "all_at_rate:nan", "random_at_rate"])
def test_a_peer_that_is_not_one_of_the_fourteen_kinds_is_refused(spec):
    message = ("a peer is last_ranked, positive, random, spectrum, lowest, all_at_kept_rate, kept_at_raised_rate, "
               "all_at_raised_rate, kept_at_kept_rate, top:K or random:K with K from 1 to 29, kept_at_rate:X, "
               "all_at_rate:X or random_at_rate:X with X a positive number")
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        peers(f"last_ranked,{spec}")


@pytest.mark.slow
def test_a_committed_record_gets_its_peers_and_a_second_call_keeps_them(tmp_path, capsys):
    """The committed next_number record, its command at the quick profile's sizes (16 examples, 3 epochs)."""
    record = json.loads(RECORD.read_text())
    command = record["meta"]["command"].replace("--profile dev", "--profile quick")
    main_peers = ("random", "spectrum", "lowest")
    made_by_main = {run["key"]: run["selected_layers"] for run in record["runs"]
                    if run["arm"] in main_peers and run["seed"] == 0}
    record["runs"] = [run for run in record["runs"] if run["arm"] not in main_peers]  # as if made without them
    quick = tmp_path / "next_number.json"
    quick.write_text(json.dumps({**record, "meta": {**record["meta"], "command": command}}))
    flexora = next(r for r in record["runs"] if r["arm"] == "flexora" and r["seed"] == 0)
    kept, scores = len(flexora["selected_layers"]), {int(b): s for b, s in flexora["scores"].items()}
    out = tmp_path / "peers.json"
    rate_peers = ("all_at_kept_rate,kept_at_raised_rate,all_at_raised_rate,kept_at_kept_rate,kept_at_rate:2,"
                  "all_at_rate:0.5,random_at_rate:2")
    call = [str(quick), "--out", str(out), "--seeds", "0", "--peers",
            f"last_ranked,top:3,random:{kept},positive,random,spectrum,lowest,{rate_peers}"]
    main(call)
    written_out = json.loads(out.read_text())
    made = written_out["runs"]
    assert written_out["meta"]["machine"] == machine()  # this machine's runs, whatever the record's
    runs = {run["arm"]: run for run in made if run["arm"] not in main_peers}
    slower = runs.pop("all_at_kept_rate")  # every block, the command's rate times the kept fraction
    assert slower["key"] == "next_number/overfit/all_at_kept_rate/0" and slower["selected_layers"] is None
    assert slower["trainable_params"] == flexora["lora_params_all_blocks"]
    assert slower["learning_rate"] == pytest.approx(5e-3 * kept / 30) == 5e-3 * slower["rate_scale"]
    slower_kept = runs.pop("kept_at_kept_rate")  # Flexora's blocks at that lowered rate
    assert slower_kept["selected_layers"] == flexora["selected_layers"]
    assert slower_kept["learning_rate"] == pytest.approx(5e-3 * kept / 30) == 5e-3 * slower_kept["rate_scale"]
    for arm, blocks in (("kept_at_raised_rate", flexora["selected_layers"]), ("all_at_raised_rate", None)):
        faster = runs.pop(arm)  # the rate divided by the kept fraction
        assert faster["selected_layers"] == blocks and faster["key"] == f"next_number/overfit/{arm}/0"
        assert faster["learning_rate"] == pytest.approx(5e-3 * 30 / kept) == 5e-3 * faster["rate_scale"]
    scaled_peers = (("kept_at_rate_2", flexora["selected_layers"], 1e-2), ("all_at_rate_0.5", None, 2.5e-3),
                    ("random_at_rate_2", made_by_main["next_number/overfit/random/0/0"], 1e-2))  # the first draw
    for arm, blocks, rate in scaled_peers:
        scaled = runs.pop(arm)  # the rate times the spec's factor
        assert scaled["selected_layers"] == blocks and scaled["key"] == f"next_number/overfit/{arm}/0"
        assert scaled["learning_rate"] == pytest.approx(rate)
    assert sorted(runs) == ["last_ranked", "positive", f"random_{kept}", "top_3"]
    assert runs["positive"]["selected_layers"] == flexora["selected_layers"]  # a default run: its own selection
    last, top = runs["last_ranked"]["selected_layers"], runs["top_3"]["selected_layers"]
    assert runs["last_ranked"]["key"] == "next_number/overfit/last_ranked/0" and len(last) == kept
    assert max(scores[b] for b in last) <= min(s for b, s in scores.items() if b not in last)
    assert len(top) == 3 and min(scores[b] for b in top) >= max(s for b, s in scores.items() if b not in top)
    assert runs[f"random_{kept}"]["selected_layers"] == made_by_main["next_number/overfit/random/0/0"]  # first draw
    assert {run["key"]: run["selected_layers"] for run in made if run["arm"] in main_peers} == made_by_main
    assert next(run for run in made if run["arm"] == "spectrum")["selector_seconds"] > 0
    for run in made:  # the command's rate but for the rate peers; 16 examples x 3 epochs
        assert run["learning_rate"] == 5e-3 or run["arm"] in rate_peers.replace(":", "_").split(",")
        assert run["finetune_steps"] == 6 and 0 <= run["accuracy"] <= 1
    rows = report.paired_table(report.combined([record, json.loads(out.read_text())]))
    assert any(row.startswith("| next_number | overfit | last-ranked blocks | 1 |") for row in rows)
    printed = capsys.readouterr().out
    assert "| flexora - last_ranked | 1 |" in printed and "| top_3 - lora_all | 1 |" in printed
    assert "| flexora - all_at_kept_rate | 1 |" in printed
    written = out.read_bytes()
    main(call)
    assert out.read_bytes() == written
    assert f"runs in {out}: 15" in capsys.readouterr().out


def test_a_peer_the_record_already_has_is_not_made_again(tmp_path, capsys):
    """The committed record has the main part's random draws: asking for them again trains nothing."""
    out = tmp_path / "out.json"
    main([str(RECORD), "--out", str(out), "--peers", "random"])
    assert f"runs in {out}: 0" in capsys.readouterr().out and not out.exists()


def test_a_record_of_peers_alone_is_read_with_its_main_part_record_and_refused_without_it(tmp_path, capsys):
    """An earlier --out (no Flexora run) adds its runs to the table and to what is not made again."""
    folder = RECORD.parent.parent / "warm-start-generated" / "learn"
    out = tmp_path / "out.json"
    main([str(folder / "subtraction.json"), str(folder / "positive_subtraction.json"), "--out", str(out), "--peers",
          "positive"])
    printed = capsys.readouterr().out
    assert "| positive - lora_all | 2 |" in printed and f"runs in {out}: 0" in printed and not out.exists()
    with pytest.raises(SystemExit, match="no Flexora run with per-block scores: peers are chosen from"):
        main([str(folder / "positive_subtraction.json"), "--out", str(out), "--peers", "positive"])
