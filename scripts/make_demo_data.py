"""Generate `flexora_trl/data/demo_instructions.jsonl`, the instruction set the demo fine-tunes on.

The demo has to run offline and ship no third-party data, so we write the examples ourselves: short tasks with one
correct answer (arithmetic, unit conversion, word-list manipulation, spelling, calendar facts, antonyms, turning a
sentence into JSON) that a 135M model can learn something from in a few minutes of CPU training. Everything comes
from the word lists below and a seeded `random.Random`, so running the script again gives identical bytes.

    python scripts/make_demo_data.py [--output PATH] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "flexora_trl" / "data" / "demo_instructions.jsonl"

NAMES = ["Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Leo", "Maria",
         "Nadia", "Omar", "Paula", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Will", "Yara", "Zoe"]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Dublin", "Cairo", "Quito", "Seoul", "Vienna", "Accra",
          "Madrid", "Tokyo", "Denver", "Prague", "Sydney", "Toronto", "Athens", "Bogota", "Warsaw", "Manila", "Rome"]
ITEMS = ["apples", "pencils", "marbles", "books", "stickers", "cookies", "coins", "cards", "shells", "stamps",
         "balloons", "oranges"]
WORDS = ["apple", "river", "stone", "garden", "window", "candle", "mirror", "forest", "pepper", "button", "rocket",
         "ladder", "island", "bottle", "pillow", "tiger", "violin", "yellow", "basket", "cloud", "dragon", "engine",
         "feather", "guitar", "hammer", "jacket", "kettle", "lemon", "meadow", "needle", "orange", "parrot", "puzzle",
         "rabbit", "saddle", "tunnel", "umbrella", "valley", "wallet", "zebra", "anchor", "bridge", "copper", "desert",
         "falcon", "glacier", "harbor", "jungle", "lantern", "marble", "number", "ocean", "planet", "quartz", "silver",
         "thunder", "village", "winter", "bread", "chair", "music", "paper", "sugar", "table", "water", "letter",
         "banana", "coffee", "school", "summer", "spoon", "horse", "green", "little", "balloon", "cherry", "kitten"]
ANTONYMS = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("up", "down"), ("open", "closed"),
            ("light", "dark"), ("early", "late"), ("full", "empty"), ("strong", "weak"), ("high", "low"),
            ("old", "young"), ("rich", "poor"), ("hard", "soft"), ("wet", "dry"), ("loud", "quiet"),
            ("clean", "dirty"), ("thick", "thin"), ("long", "short"), ("heavy", "light"), ("true", "false"),
            ("win", "lose"), ("buy", "sell"), ("push", "pull"), ("begin", "end"), ("arrive", "leave"),
            ("inside", "outside"), ("above", "below"), ("before", "after"), ("always", "never"), ("first", "last"),
            ("day", "night"), ("north", "south"), ("east", "west"), ("left", "right"), ("sweet", "sour"),
            ("brave", "afraid"), ("cheap", "expensive"), ("wide", "narrow"), ("deep", "shallow"), ("friend", "enemy"),
            ("question", "answer"), ("remember", "forget"), ("accept", "refuse"), ("increase", "decrease"),
            ("safe", "dangerous"), ("polite", "rude"), ("near", "far"), ("smooth", "rough"), ("tight", "loose")]
UNITS = [("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("centimeters", "millimeters", 10),
         ("kilograms", "grams", 1000), ("liters", "milliliters", 1000), ("hours", "minutes", 60),
         ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7), ("years", "months", 12),
         ("feet", "inches", 12), ("yards", "feet", 3)]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [("January", 31), ("February", 28), ("March", 31), ("April", 30), ("May", 31), ("June", 30), ("July", 31),
          ("August", 31), ("September", 30), ("October", 31), ("November", 30), ("December", 31)]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
            "eleventh", "twelfth"]


def word_problem(rng):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", f"{a} + {b} = {a + b}"
    if kind == 1:
        a = rng.randint(10, 60)
        b = rng.randint(1, a - 1)
        return f"{name} had {a} {item} and gave {b} away. How many {item} are left?", f"{a} - {b} = {a - b}"
    if kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        return f"A bag holds {a} {item}. How many {item} are in {b} bags?", f"{a} x {b} = {a * b}"
    b, each = rng.randint(2, 9), rng.randint(2, 12)
    return (f"{name} shares {b * each} {item} equally among {b} friends. How many {item} does each friend get?",
            f"{b * each} / {b} = {each}")


def arithmetic(rng):
    op = rng.choice("+-x")
    if op == "x":
        a, b = rng.randint(2, 15), rng.randint(2, 15)
        return f"What is {a} times {b}?", str(a * b)
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if op == "-":
        a, b = max(a, b), min(a, b)
        return f"What is {a} minus {b}?", str(a - b)
    return f"What is {a} plus {b}?", str(a + b)


def unit_conversion(rng):
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(2, 20)
    if rng.random() < 0.5:
        return f"Convert {n} {big} to {small}.", f"{n} {big} = {n * factor} {small}"
    return f"Convert {n * factor} {small} to {big}.", f"{n * factor} {small} = {n} {big}"


def reverse_words(rng):
    words = rng.sample(WORDS, rng.randint(3, 5))
    return f"Reverse the order of these words: {', '.join(words)}", ", ".join(reversed(words))


def sort_words(rng):
    words = rng.sample(WORDS, rng.randint(3, 5))
    return f"Sort these words alphabetically: {', '.join(words)}", ", ".join(sorted(words))


def sort_numbers(rng):
    numbers = rng.sample(range(1, 100), rng.randint(3, 6))
    if rng.random() < 0.5:
        return (f"Sort these numbers from smallest to largest: {', '.join(map(str, numbers))}",
                ", ".join(map(str, sorted(numbers))))
    return (f"Sort these numbers from largest to smallest: {', '.join(map(str, numbers))}",
            ", ".join(map(str, sorted(numbers, reverse=True))))


def capital_letters(rng):
    if rng.random() < 0.5:
        word = rng.choice(WORDS)
        return f"Write the word '{word}' in capital letters.", word.upper()
    phrase = " ".join(rng.sample(WORDS, rng.randint(2, 4)))
    return f"Capitalize the first letter of each word: {phrase}", phrase.title()


def spelling(rng):
    word = rng.choice(WORDS)
    if rng.random() < 0.5:
        return f"Spell the word '{word}' letter by letter.", "-".join(word)
    return f"Write the word '{word}' backwards.", word[::-1]


def count_letters(rng):
    word = rng.choice(WORDS)
    if rng.random() < 0.5:
        return f"How many letters are in the word '{word}'?", str(len(word))
    letter = rng.choice(sorted(set(word)))
    return f"How many times does the letter '{letter}' appear in '{word}'?", str(word.count(letter))


def calendar(rng):
    kind = rng.randrange(5)
    if kind == 0:
        day, n = rng.randrange(7), rng.randint(1, 13)
        return f"What day of the week is {n} days after {WEEKDAYS[day]}?", WEEKDAYS[(day + n) % 7]
    if kind == 1:
        day = rng.randrange(7)
        return f"Which day comes before {WEEKDAYS[day]}?", WEEKDAYS[(day - 1) % 7]
    if kind == 2:
        month = rng.randrange(12)
        return f"Which month comes after {MONTHS[month][0]}?", MONTHS[(month + 1) % 12][0]
    if kind == 3:
        month = rng.randrange(12)
        return f"What is the {ORDINALS[month]} month of the year?", MONTHS[month][0]
    name, days = rng.choice(MONTHS)
    answer = "28 days (29 in a leap year)" if name == "February" else f"{days} days"
    return f"How many days are in {name}?", answer


def leap_year(rng):
    year = rng.randint(1800, 2100)
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return f"Is {year} a leap year? Answer yes or no.", "yes" if leap else "no"


def antonym(rng):
    pair = rng.choice(ANTONYMS)
    word, opposite = pair if rng.random() < 0.5 else pair[::-1]
    template = rng.choice(["What is the opposite of '{}'?", "Give an antonym of the word '{}'."])
    return template.format(word), opposite


def to_json(rng):
    name, city = rng.choice(NAMES), rng.choice(CITIES)
    kind = rng.randrange(3)
    if kind == 0:
        age = rng.randint(18, 80)
        sentence = f"{name} is {age} years old and lives in {city}."
        fields, record = "name, age and city", {"name": name, "age": age, "city": city}
    elif kind == 1:
        item, quantity, price = rng.choice(ITEMS), rng.randint(2, 12), rng.randint(1, 30)
        sentence = f"{name} bought {quantity} {item} for {price} dollars."
        fields, record = "buyer, item, quantity and price", {"buyer": name, "item": item, "quantity": quantity,
                                                             "price": price}
    else:
        year = rng.randint(1950, 2010)
        sentence = f"{name} was born in {city} in {year}."
        fields, record = "name, birth_year and city", {"name": name, "birth_year": year, "city": city}
    return f"Turn this sentence into a JSON object with the fields {fields}: {sentence}", json.dumps(record)


def compare_numbers(rng):
    if rng.random() < 0.5:
        a, b = rng.sample(range(1, 1000), 2)
        return f"Which number is larger, {a} or {b}?", str(max(a, b))
    n = rng.randint(1, 999)
    return f"Is {n} even or odd?", "even" if n % 2 == 0 else "odd"


# (task, number of examples); about 1,200 in all.
TASKS = [(word_problem, 140), (arithmetic, 90), (unit_conversion, 110), (reverse_words, 80), (sort_words, 80),
         (sort_numbers, 60), (capital_letters, 110), (spelling, 70), (count_letters, 90), (calendar, 100),
         (leap_year, 30), (antonym, 90), (to_json, 110), (compare_numbers, 40)]


def make_examples(seed: int = 0) -> list[dict]:
    """Draw each task's examples with one seeded generator, without repeating a prompt, then shuffle them."""
    rng = random.Random(seed)
    seen, examples = set(), []
    for task, count in TASKS:
        made = 0
        for _ in range(count * 50):
            if made == count:
                break
            prompt, answer = task(rng)
            if prompt in seen:
                continue
            seen.add(prompt)
            examples.append({"messages": [{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": answer}]})
            made += 1
        if made < count:
            raise RuntimeError(f"{task.__name__} produced only {made} distinct prompts, {count} wanted")
    rng.shuffle(examples)
    return examples


def write_jsonl(examples: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(example, ensure_ascii=True) + "\n" for example in examples)
    path.write_bytes(lines.encode("utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    examples = make_examples(args.seed)
    write_jsonl(examples, args.output)
    print(f"wrote {len(examples)} examples to {args.output}")


if __name__ == "__main__":
    main()
