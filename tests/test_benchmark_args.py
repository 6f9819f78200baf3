"""The benchmark's command line: other tasks than the profile's for the main part, refused before any job runs when
a regime cannot run them."""

from __future__ import annotations

import pytest

from benchmarks.run import parse_args, profile_of


def test_main_pairs_replace_the_profiles():
    profile = profile_of(parse_args(["--profile", "dev", "--main", "winowhy:learn,hyperbaton:overfit"]))
    assert profile["main"] == [("winowhy", "learn"), ("hyperbaton", "overfit")]


def test_an_uncalibrated_overfit_task_needs_a_learning_rate():
    with pytest.raises(SystemExit, match=r"winowhy:overfit.*calibrated for .*hyperbaton.*--learning-rate"):
        profile_of(parse_args(["--profile", "dev", "--main", "winowhy:overfit"]))
    profile = profile_of(parse_args(["--profile", "dev", "--main", "winowhy:overfit", "--learning-rate", "2e-3"]))
    assert profile["main"] == [("winowhy", "overfit")]


def test_an_unknown_regime_or_a_bare_task_is_refused_with_what_is_accepted():
    with pytest.raises(SystemExit, match=r"winowhy:memorise.*\['learn', 'overfit'\]"):
        profile_of(parse_args(["--profile", "dev", "--main", "winowhy:memorise"]))
    with pytest.raises(SystemExit, match=r"--main winowhy: give task:regime pairs"):
        profile_of(parse_args(["--profile", "dev", "--main", "winowhy"]))
