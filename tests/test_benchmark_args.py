"""The benchmark's command line: other tasks than the profile's for the main part, refused before any job runs when
a regime cannot run them; and importing the harness changes nothing for the tests after."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import native_bf16, parse_args, plan, profile_of


def test_main_pairs_replace_the_profiles():
    profile = profile_of(parse_args(["--profile", "dev", "--main", "winowhy:learn,hyperbaton:overfit"]))
    assert profile["main"] == [("winowhy", "learn"), ("hyperbaton", "overfit")]


def test_an_uncalibrated_overfit_task_needs_a_learning_rate():
    uncalibrated = r"winowhy:overfit.*calibrated for .*hyperbaton.*--learning-rate.*benchmarks.calibrate winowhy"
    with pytest.raises(SystemExit, match=uncalibrated):
        profile_of(parse_args(["--profile", "dev", "--main", "winowhy:overfit"]))
    profile = profile_of(parse_args(["--profile", "dev", "--main", "winowhy:overfit", "--learning-rate", "2e-3"]))
    assert profile["main"] == [("winowhy", "overfit")]


def test_learn_steps_lengthen_the_learn_regime_only():
    profile = profile_of(parse_args(["--profile", "dev", "--learn-steps", "120"]))
    assert profile["regimes"]["learn"]["max_steps"] == 120
    assert profile["regimes"]["overfit"]["epochs"] == 8
    assert profile_of(parse_args(["--profile", "dev"]))["regimes"]["learn"]["max_steps"] == 40


def test_auto_precision_is_bf16_only_where_the_hardware_has_bf16_instructions(capsys):
    """Without them torch's fallback bf16 matmul is ~70x slower than fp32: `auto` takes fp32 there, and an explicit
    bf16 is kept but warned about."""
    native = native_bf16()
    assert parse_args(["--profile", "dev"]).precision == ("bf16" if native else "fp32")
    assert parse_args(["--precision", "fp32"]).precision == "fp32"
    assert "slower" not in capsys.readouterr().out
    assert parse_args(["--precision", "bf16"]).precision == "bf16"
    assert ("70x slower" in capsys.readouterr().out) == (not native)


def test_an_unknown_regime_or_a_bare_task_is_refused_with_what_is_accepted():
    with pytest.raises(SystemExit, match=r"winowhy:memorise.*\['learn', 'overfit'\]"):
        profile_of(parse_args(["--profile", "dev", "--main", "winowhy:memorise"]))
    with pytest.raises(SystemExit, match=r"--main winowhy: give task:regime pairs"):
        profile_of(parse_args(["--profile", "dev", "--main", "winowhy"]))


@pytest.mark.parametrize("flag, value, message", [
    ("--long-seeds", "0,x", "argument --long-seeds: give comma-separated integers"),
    ("--seeds", "1;2", "argument --seeds: give comma-separated integers"),
    ("--budgets", "500,2k", "argument --budgets: give comma-separated integers"),
    ("--flexora-options", "{score: gate}", "argument --flexora-options: not JSON"),
    ("--flexora-options", '["gate"]', "argument --flexora-options: give a JSON object"),
])
def test_a_malformed_list_or_options_object_is_refused_naming_its_flag(flag, value, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--profile", "dev", flag, value])
    assert message in capsys.readouterr().err


def test_importing_the_harness_leaves_the_environment_alone():
    """The benchmark sets TRANSFORMERS_VERBOSITY and the offline flags when it starts; on import it did, and every
    `axolotl train` a later test ran inherited them (its progress bars switched off)."""
    code = ("import os; before = dict(os.environ); import benchmarks.run, benchmarks.oracle; "
            "print(dict(os.environ) == before)")
    set_by_the_harness = ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "TRANSFORMERS_VERBOSITY")
    env = {key: value for key, value in os.environ.items() if key not in set_by_the_harness}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "True"


def test_long_seeds_add_pairs_and_keep_seed_zeros_job_names():
    """Seed 0's long jobs keep the names of results committed before `--long-seeds`, so `--resume` still finds them."""
    default = plan(profile_of(parse_args(["--profile", "full"])), {"long"})
    assert default == [("long", "flexora"), ("long", "lora_all")]
    seeds = plan(profile_of(parse_args(["--profile", "full", "--long-seeds", "0,2"])), {"long"})
    assert seeds == [("long", "flexora"), ("long", "lora_all"), ("long", "flexora", 2), ("long", "lora_all", 2)]


def test_the_budget_study_runs_on_seed_zero_unless_told():
    assert profile_of(parse_args(["--profile", "full"]))["budget_seed"] == 0
    assert profile_of(parse_args(["--profile", "full", "--budget-seed", "1"]))["budget_seed"] == 1


def test_planted_prompts_size_the_search_and_its_hold_out():
    profile = profile_of(parse_args(["--profile", "dev", "--planted-prompts", "1024"]))
    assert (profile["planted_prompts"], profile["planted_samples"]) == (1024, 768)
    default = profile_of(parse_args(["--profile", "dev"]))
    assert (default["planted_prompts"], default["planted_samples"]) == (256, 192)


def test_the_planted_teacher_answers_hyperbaton_unless_another_task_is_named():
    assert profile_of(parse_args(["--profile", "dev"]))["planted_task"] == "hyperbaton"
    assert profile_of(parse_args(["--profile", "full", "--planted-task", "addition"]))["planted_task"] == "addition"


def test_a_job_that_exits_fails_alone_instead_of_hanging_the_pool(monkeypatch):
    """A SystemExit inside a worker (a task with fewer usable examples than the run needs) used to end the worker
    process: `Pool.imap_unordered` then waited forever for its result. `run_job` returns it as the job's error."""
    import benchmarks.run as run

    class TooFewExamples:
        def __init__(self, args):
            raise SystemExit("language_identification: 3429 usable examples, fewer than n_test + n_train = 8200")

    monkeypatch.setattr(run, "Harness", TooFewExamples)
    job, results, error, _ = run.run_job((("long", "flexora"), parse_args(["--profile", "quick"])))
    assert job == ("long", "flexora") and results == {} and "3429 usable examples" in error


RECORDS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "planted-balanced-rows"


def test_subset_oracle_reads_the_top_k_of_one_planted_job():
    """The committed planted records of one set give one job and each search's top six; records of two sets are
    refused before any row is built, naming what differs."""
    from benchmarks.subset_oracle import read_records

    seeds = [RECORDS / f"ablation_per_token{s}_32_batches_lr2e-4_all_linear_fp32_set13.json" for s in ("", "_seed1")]
    job, tops = read_records(seeds)
    assert job["planted_set"] == 13 and job["targets"] == "all_linear" and job["planted_design"] == "balanced_rows"
    assert job["planted_prompts"] == 1024 and list(tops.values()) == [[8, 20, 21, 22, 23, 24], [4, 6, 7, 8, 14, 24]]
    with pytest.raises(SystemExit, match=r"differs .* in planted_set \(planted_set=12 against 13\)"):
        read_records([seeds[0], RECORDS / "ablation_per_token_32_batches_lr2e-4_all_linear_fp32_set12.json"])
