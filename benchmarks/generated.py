"""Multiple-choice tasks the benchmark writes itself: tasks no selection was tuned on, that need no third-party data.

BIG-bench's sdist left PyPI (on 2026-12-06 its simple index and JSON API list only `bigbench` 0.0.1, a 358 kB
placeholder), so a fresh machine may have no BIG-bench task at all. These tasks are drawn from a fixed seed and the
word list below: the same examples on every machine, 8,700 to 12,000 distinct prompts each, and a skill rather than
knowledge a small model either has or not (arithmetic, comparing numbers, parity, counting, number sequences, spotting
a repeat, the alphabet). Not every one moves in the learn regime's 40 steps (benchmarks/README.md, "Tasks, and why
each", says which do).
"""

from __future__ import annotations

import numpy as np

SEED = 20261206

# Common English words, 3 to 7 per initial letter (x and z left out: too few common ones), so that four words with
# distinct initials have exactly one that comes first.
WORDS = """
apple anchor arrow autumn answer artist animal basket button bridge butter branch blanket bottle camera candle castle
cotton carpet circle cloud dinner doctor dragon desert drawer danger distance eagle engine evening eleven empire energy
effort father forest flower finger friend garden guitar glass golden grape ground hammer harbor honey island insect
iron invite jacket jungle journey jelly kettle kitten kingdom kitchen ladder lemon lantern letter market mirror
monkey morning needle number nature napkin orange ocean office onion pencil pepper pillow planet quarter question
queen quiet rabbit river rocket ribbon silver summer spider saddle table ticket tiger tunnel umbrella uncle unit
upper valley velvet village violin window winter wagon wizard yellow yogurt yesterday youth
""".split()
BY_INITIAL = {initial: [word for word in WORDS if word[0] == initial] for initial in sorted({w[0] for w in WORDS})}
BY_LENGTH = {length: [word for word in WORDS if len(word) == length] for length in sorted({len(w) for w in WORDS})}


def _shuffled(rng, gold, others) -> tuple[list[str], int]:
    """The gold choice and the others in an order drawn from the task's stream, with the gold's place in it."""
    choices = [gold, *others]
    order = rng.permutation(len(choices))
    return [str(choices[i]) for i in order], int(np.argmin(order))


def _near_misses(rng, gold: int, offsets) -> tuple[list[str], int]:
    """The gold number and three near misses (three of `offsets` added to it), shuffled."""
    return _shuffled(rng, gold, [gold + int(o) for o in rng.choice(offsets, size=3, replace=False)])


def _alphabetical_first(rng) -> tuple[str, list[str], int]:
    initials = rng.choice(list(BY_INITIAL), size=4, replace=False)
    words = [str(rng.choice(BY_INITIAL[i])) for i in initials]
    prompt = "Which word comes first in alphabetical order: " + ", ".join(words) + "?\nAnswer:"
    return prompt, words, int(np.argmin([w[0] for w in words]))


def _addition(rng) -> tuple[str, list[str], int]:
    a, b = (int(v) for v in rng.integers(10, 150, size=2))
    # Near misses in the units and the tens digit: choosing needs the sum, not its size.
    return f"What is {a} + {b}?\nAnswer:", *_near_misses(rng, a + b, [-11, -10, -9, -1, 1, 9, 10, 11])


def _middle_number(rng) -> tuple[str, list[str], int]:
    numbers = [int(v) for v in rng.choice(np.arange(10, 1000), size=3, replace=False)]
    return (f"Which number is between the other two: {numbers[0]}, {numbers[1]} or {numbers[2]}?\nAnswer:",
            [str(n) for n in numbers], int(np.argsort(numbers)[1]))


def _odd_number(rng) -> tuple[str, list[str], int]:
    evens = [int(v) for v in rng.choice(np.arange(10, 1000, 2), size=3, replace=False)]
    choices, answer = _shuffled(rng, int(rng.choice(np.arange(11, 1000, 2))), evens)
    return f"Which of these numbers is odd: {', '.join(choices)}?\nAnswer:", choices, answer


def _count_words(rng) -> tuple[str, list[str], int]:
    count = int(rng.integers(2, 9))
    words = [str(w) for w in rng.choice(WORDS, size=count, replace=False)]
    return f"How many words are in this list: {', '.join(words)}?\nAnswer:", *_near_misses(rng, count, [-2, -1, 1, 2])


def _next_number(rng) -> tuple[str, list[str], int]:
    start, step = int(rng.integers(1, 1000)), int(rng.integers(2, 20))
    terms = [start + step * i for i in range(5)]
    # A set: a step of 2 is also the +2 near miss.
    return (f"Which number comes next: {', '.join(map(str, terms[:4]))}?\nAnswer:",
            *_near_misses(rng, terms[4], sorted({-2, -1, 1, 2, step})))


def _multiplication(rng) -> tuple[str, list[str], int]:
    a, b = int(rng.integers(2, 20)), int(rng.integers(10, 1000))
    # Off in the units, the tens, or by one a (b misread by one); a set: a may be 10.
    return f"What is {a} * {b}?\nAnswer:", *_near_misses(rng, a * b, sorted({-10, -1, 1, 10, a, -a}))


def _largest_number(rng) -> tuple[str, list[str], int]:
    numbers = [int(v) for v in rng.choice(np.arange(10, 1000), size=4, replace=False)]
    return (f"Which number is the largest: {', '.join(map(str, numbers))}?\nAnswer:", [str(n) for n in numbers],
            int(np.argmax(numbers)))


def _repeated_word(rng) -> tuple[str, list[str], int]:
    """Three words listed, one of them twice; the fourth choice is a word not listed."""
    words = [str(w) for w in rng.choice(WORDS, size=4, replace=False)]
    listed = [(words[:3] + [words[0]])[i] for i in rng.permutation(4)]
    return f"Which word appears twice: {', '.join(listed)}?\nAnswer:", *_shuffled(rng, words[0], words[1:])


def _subtraction(rng) -> tuple[str, list[str], int]:
    a = int(rng.integers(50, 200))
    b = int(rng.integers(10, a))
    # Near misses in the units and the tens digit, as for addition (a borrow is where a slip happens).
    return f"What is {a} - {b}?\nAnswer:", *_near_misses(rng, a - b, [-11, -10, -9, -1, 1, 9, 10, 11])


def _digit_sum(rng) -> tuple[str, list[str], int]:
    number = int(rng.integers(10000, 100000))
    return (f"What is the sum of the digits of {number}?\nAnswer:",
            *_near_misses(rng, sum(int(d) for d in str(number)), [-2, -1, 1, 2]))


def _even_count(rng) -> tuple[str, list[str], int]:
    """Five numbers, 0 to 5 of them even; the other choices are three other counts from 0 to 5."""
    numbers = [int(v) for v in rng.choice(np.arange(10, 100), size=5, replace=False)]
    count = sum(n % 2 == 0 for n in numbers)
    others = [int(c) for c in rng.choice([c for c in range(6) if c != count], size=3, replace=False)]
    return (f"How many of these numbers are even: {', '.join(map(str, numbers))}?\nAnswer:",
            *_shuffled(rng, count, others))


def _rounding(rng) -> tuple[str, list[str], int]:
    """A five-digit number to the nearest hundred, among the hundred on its other side, one beyond, its nearest
    ten."""
    number = int(rng.integers(10000, 100000))
    if number % 100 in (0, 50):  # no tie and no choice equal to another
        number += 1
    nearest, floor = int(round(number, -2)), number // 100 * 100
    other = floor + 100 if nearest == floor else floor
    ten = int(round(number, -1))
    extra = nearest + 100 if other < nearest else nearest - 100
    choices = [ten] if ten not in (nearest, other) else [nearest + 200]
    return (f"What is {number} rounded to the nearest hundred?\nAnswer:",
            *_shuffled(rng, nearest, [other, extra, *choices]))


def _longest_word(rng) -> tuple[str, list[str], int]:
    """Four words of four different lengths; the gold is the longest."""
    lengths = rng.choice(list(BY_LENGTH), size=4, replace=False)
    words = [str(rng.choice(BY_LENGTH[length])) for length in lengths]
    return (f"Which word is the longest: {', '.join(words)}?\nAnswer:", words,
            int(np.argmax([len(w) for w in words])))


# name: (generator, its stream of the fixed seed); a new task takes a new stream, so the others' examples stay.
GENERATORS = {"addition": (_addition, 0), "alphabetical_first": (_alphabetical_first, 1),
              "middle_number": (_middle_number, 2), "odd_number": (_odd_number, 3),
              "count_words": (_count_words, 4), "next_number": (_next_number, 5),
              "multiplication": (_multiplication, 6), "largest_number": (_largest_number, 7),
              "repeated_word": (_repeated_word, 8), "subtraction": (_subtraction, 9),
              "digit_sum": (_digit_sum, 10), "even_count": (_even_count, 11), "rounding": (_rounding, 12),
              "longest_word": (_longest_word, 13)}
SIZE = 12000  # draws per task; repeated prompts are dropped (addition keeps 8,979)


def generated_examples(name: str) -> list[tuple[str, list[str], int]]:
    """(prompt, choices, answer index) of the task, each prompt once, in the order drawn from the fixed seed."""
    draw, stream = GENERATORS[name]
    rng = np.random.default_rng([SEED, stream])
    seen, examples = set(), []
    for _ in range(SIZE):
        prompt, choices, answer = draw(rng)
        if prompt not in seen:
            seen.add(prompt)
            examples.append((prompt, choices, answer))
    return examples
