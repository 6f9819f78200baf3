"""Multiple-choice tasks the benchmark writes itself: tasks no selection was tuned on, that need no third-party data.

BIG-bench's sdist left PyPI (on 2026-12-06 its simple index and JSON API list only `bigbench` 0.0.1, a 358 kB
placeholder), so a fresh machine may have no BIG-bench task at all. These tasks are drawn from a fixed seed and the
word list below: the same examples on every machine, 9,000 to 12,000 distinct prompts each, and a skill rather than
knowledge a small model either has or not (arithmetic, comparing numbers, parity, the alphabet). Not every one moves
in the learn regime's 40 steps (benchmarks/README.md, "Tasks, and why each", says which do).
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


def _alphabetical_first(rng) -> tuple[str, list[str], int]:
    initials = rng.choice(list(BY_INITIAL), size=4, replace=False)
    words = [str(rng.choice(BY_INITIAL[i])) for i in initials]
    prompt = "Which word comes first in alphabetical order: " + ", ".join(words) + "?\nAnswer:"
    return prompt, words, int(np.argmin([w[0] for w in words]))


def _addition(rng) -> tuple[str, list[str], int]:
    a, b = (int(v) for v in rng.integers(10, 150, size=2))
    total = a + b
    # Near misses in the units and the tens digit: choosing needs the sum, not its size.
    offsets = rng.choice([-11, -10, -9, -1, 1, 9, 10, 11], size=3, replace=False)
    choices = [total] + [total + int(o) for o in offsets]
    order = rng.permutation(4)
    return f"What is {a} + {b}?\nAnswer:", [str(choices[i]) for i in order], int(np.argmin(order))


def _middle_number(rng) -> tuple[str, list[str], int]:
    numbers = [int(v) for v in rng.choice(np.arange(10, 1000), size=3, replace=False)]
    return (f"Which number is between the other two: {numbers[0]}, {numbers[1]} or {numbers[2]}?\nAnswer:",
            [str(n) for n in numbers], int(np.argsort(numbers)[1]))


def _odd_number(rng) -> tuple[str, list[str], int]:
    evens = [int(v) for v in rng.choice(np.arange(10, 1000, 2), size=3, replace=False)]
    choices = [int(rng.choice(np.arange(11, 1000, 2)))] + evens
    order = rng.permutation(4)
    return (f"Which of these numbers is odd: {', '.join(str(choices[i]) for i in order)}?\nAnswer:",
            [str(choices[i]) for i in order], int(np.argmin(order)))


# name: (generator, its stream of the fixed seed); a new task takes a new stream, so the others' examples stay.
GENERATORS = {"addition": (_addition, 0), "alphabetical_first": (_alphabetical_first, 1),
              "middle_number": (_middle_number, 2), "odd_number": (_odd_number, 3)}
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
