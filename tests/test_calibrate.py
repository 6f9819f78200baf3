"""benchmarks.calibrate: the overfit regime's learning rate for a task that has none, probed on the real model."""

from __future__ import annotations

import json
import statistics

import pytest

from benchmarks.calibrate import calibrated_rate, main, parse, rule
from benchmarks.run import PROFILES
from benchmarks.stats import heldout_rise


def probed(rise, stderr):
    return {"rise": rise, "stderr": stderr, "beyond_noise": rise > 2 * stderr}


def test_the_rate_is_the_lowest_whose_rise_is_beyond_noise_and_none_without_one():
    probes = {"5e-3": probed(0.3, 0.1), "1e-3": probed(0.1, 0.1), "2e-3": probed(0.25, 0.1)}
    assert calibrated_rate(probes) == "2e-3"  # not the first listed, nor the largest rise
    assert calibrated_rate({"1e-3": probed(0.1, 0.1), "2e-3": probed(-0.2, 0.05)}) is None


@pytest.mark.parametrize("rates", ["0.001,fast", "0,1e-3", "-1e-3"])
def test_rates_that_are_not_positive_numbers_are_refused_before_any_run(rates, capsys):
    with pytest.raises(SystemExit):
        parse(["addition", "--rates", rates, "--out", "x.json"])
    assert "--rates" in capsys.readouterr().err


@pytest.mark.slow
def test_a_probe_records_the_losses_its_rise_is_read_from_and_a_second_call_keeps_it(tmp_path, capsys):
    out = tmp_path / "calibration.json"
    command = ["addition", "--rates", "5e-3", "--profile", "quick", "--out", str(out)]
    main(command)
    probe = json.loads(out.read_text())["tasks"]["addition"]["5e-3"]
    epochs = PROFILES["quick"]["regimes"]["overfit"]["epochs"]
    assert len(probe["curve"]) == len(probe["item_losses"]) == epochs
    assert probe["curve"] == pytest.approx([statistics.fmean(losses) for losses in probe["item_losses"]], abs=1e-4)
    rise = heldout_rise([probe["item_losses"]])
    assert (probe["best_epoch"], probe["rise"], probe["beyond_noise"]) == (rise.best_epoch, rise.rise,
                                                                           rise.beyond_noise)
    printed = capsys.readouterr().out
    assert ("--main addition:overfit --learning-rate 5e-3" in printed) == rise.beyond_noise
    assert ("no overfit regime here" in printed) != rise.beyond_noise
    before = out.read_text()
    main(command)
    assert "addition 5e-3: kept from" in capsys.readouterr().out and out.read_text() == before


def test_an_unknown_task_or_a_record_of_other_sizes_stops_before_any_probe(tmp_path):
    with pytest.raises(SystemExit, match="no_such_task"):
        main(["addition", "no_such_task", "--out", str(tmp_path / "new.json")])
    assert not (tmp_path / "new.json").exists()
    other = tmp_path / "quick.json"
    other.write_text(json.dumps({"rule": rule("quick"), "tasks": {}}))
    with pytest.raises(SystemExit, match="--profile dev"):
        main(["addition", "--out", str(other)])
