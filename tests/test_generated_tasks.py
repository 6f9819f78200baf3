"""The benchmark's generated tasks: the same examples on every machine, each gold choice right and unique, and the
split disjoint, with no third-party file read."""

from __future__ import annotations

import pytest

from benchmarks.generated import GENERATORS, generated_examples
from benchmarks.tasks import load_task


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_a_generated_task_is_the_same_every_time_with_distinct_prompts(name):
    examples = generated_examples(name)
    assert examples == generated_examples(name)
    assert len({prompt for prompt, _, _ in examples}) == len(examples) > 8000  # enough for 1,000-step long runs
    golds, choices = [answer for _, _, answer in examples], len(examples[0][1])
    assert all(golds.count(i) > len(golds) / (choices + 1) for i in range(choices))  # its place carries no signal


def test_the_gold_sum_is_the_sum_and_no_other_choice_is():
    for prompt, choices, answer in generated_examples("addition"):
        a, b = (int(v) for v in prompt.removeprefix("What is ").split("?")[0].split(" + "))
        assert [int(c) == a + b for c in choices] == [i == answer for i in range(4)]


def test_the_gold_word_comes_first_and_alone():
    for prompt, choices, answer in generated_examples("alphabetical_first"):
        assert all(word in prompt for word in choices)
        assert sorted(choices)[0] == choices[answer] < sorted(choices)[1][:1]


def test_the_gold_number_is_the_middle_one():
    for _, choices, answer in generated_examples("middle_number"):
        numbers = [int(c) for c in choices]
        assert sorted(numbers)[1] == numbers[answer] and len(set(numbers)) == 3


def test_the_gold_number_is_the_one_odd_one():
    for prompt, choices, answer in generated_examples("odd_number"):
        assert [int(c) % 2 for c in choices] == [i == answer for i in range(4)] and len(set(choices)) == 4
        assert ", ".join(choices) in prompt


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_the_split_of_a_generated_task_is_disjoint_and_scored_as_a_choice(name, monkeypatch, tmp_path):
    monkeypatch.setenv("FLEXORA_CACHE", str(tmp_path))  # an empty cache: nothing but the generator to read
    task = load_task(name, n_train=2000, n_test=200)
    assert len(task.train) == 2000 and len(task.test) == 200
    assert not {e.prompt for e in task.train} & {e.prompt for e in task.test}
    assert task.chance == pytest.approx(1 / len(task.test[0].choices))
    assert all(c.startswith(" ") for e in task.test for c in e.choices)


def test_the_gold_count_is_the_number_of_words_listed():
    for prompt, choices, answer in generated_examples("count_words"):
        listed = prompt.split(": ", 1)[1].split("?")[0].split(", ")
        assert [int(c) == len(listed) for c in choices] == [i == answer for i in range(4)] and len(set(choices)) == 4


def test_the_gold_number_continues_the_sequence_and_no_other_choice_does():
    for prompt, choices, answer in generated_examples("next_number"):
        terms = [int(t) for t in prompt.split(": ", 1)[1].split("?")[0].split(", ")]
        (step,) = {b - a for a, b in zip(terms, terms[1:])}
        assert len(terms) == 4
        assert [int(c) == terms[-1] + step for c in choices] == [i == answer for i in range(4)]
        assert len(set(choices)) == 4


def test_the_gold_product_is_the_product_and_no_other_choice_is():
    for prompt, choices, answer in generated_examples("multiplication"):
        a, b = (int(v) for v in prompt.removeprefix("What is ").split("?")[0].split(" * "))
        assert [int(c) == a * b for c in choices] == [i == answer for i in range(4)] and len(set(choices)) == 4


def test_the_gold_number_is_the_largest_and_the_choices_are_the_numbers_listed():
    for prompt, choices, answer in generated_examples("largest_number"):
        assert max(int(c) for c in choices) == int(choices[answer]) and len(set(choices)) == 4
        assert ", ".join(choices) in prompt


def test_the_gold_word_is_the_one_listed_twice_and_one_choice_is_not_listed():
    for prompt, choices, answer in generated_examples("repeated_word"):
        listed = prompt.split(": ", 1)[1].split("?")[0].split(", ")
        assert sorted(listed.count(c) for c in choices) == [0, 1, 1, 2] and listed.count(choices[answer]) == 2


def test_the_gold_difference_is_the_difference_and_no_other_choice_is():
    for prompt, choices, answer in generated_examples("subtraction"):
        a, b = (int(v) for v in prompt.removeprefix("What is ").split("?")[0].split(" - "))
        assert [int(c) == a - b for c in choices] == [i == answer for i in range(4)] and len(set(choices)) == 4


def test_the_gold_digit_sum_is_the_sum_of_the_digits_and_no_other_choice_is():
    for prompt, choices, answer in generated_examples("digit_sum"):
        number = prompt.removeprefix("What is the sum of the digits of ").split("?")[0]
        assert [int(c) == sum(map(int, number)) for c in choices] == [i == answer for i in range(4)]
        assert len(set(choices)) == 4


def test_the_gold_count_is_the_number_of_even_numbers_listed():
    for prompt, choices, answer in generated_examples("even_count"):
        listed = [int(n) for n in prompt.split(": ", 1)[1].split("?")[0].split(", ")]
        even = sum(n % 2 == 0 for n in listed)
        assert [int(c) == even for c in choices] == [i == answer for i in range(4)] and len(set(choices)) == 4


def test_the_gold_is_the_nearest_hundred_and_no_other_choice_is():
    for prompt, choices, answer in generated_examples("rounding"):
        number = int(prompt.removeprefix("What is ").split(" ")[0])
        hundreds = [int(c) for c in choices if int(c) % 100 == 0]  # and the nearest ten, closer but not a hundred
        assert int(choices[answer]) == min(hundreds, key=lambda h: abs(h - number)) and len(set(choices)) == 4
        assert abs(int(choices[answer]) - number) < 50 and len(hundreds) >= 3


def test_the_gold_word_is_the_longest_and_no_other_choice_is_as_long():
    for prompt, choices, answer in generated_examples("longest_word"):
        lengths = [len(c) for c in choices]
        assert lengths[answer] == max(lengths) and len(set(lengths)) == 4 and ", ".join(choices) in prompt
