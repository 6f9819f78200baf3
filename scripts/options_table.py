"""The README's options table, generated from `FlexoraArguments` (the one list of Flexora options).

    python scripts/options_table.py            # print it
    python scripts/options_table.py --write    # put it into README.md between the options-table markers
tests/test_docs.py checks that README.md carries exactly this table.
"""

import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from flexora_trl.options import FlexoraArguments  # noqa: E402


def options_table() -> str:
    rows = ["| option | default | what it does |", "|---|---|---|"]
    for field in dataclasses.fields(FlexoraArguments):
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = " ".join(field.metadata["help"].split())
        rows.append(f"| `{field.name}` | `{default!r}` | {help_text} |")
    return "\n".join(rows)


README = os.path.join(os.path.dirname(__file__), "..", "README.md")
START, END = "<!-- options-table:start -->", "<!-- options-table:end -->"


def readme_table() -> str:
    with open(README) as handle:
        text = handle.read()
    return text[text.index(START) + len(START): text.index(END)].strip()


def write_readme_table() -> None:
    with open(README) as handle:
        text = handle.read()
    head, rest = text.split(START)
    _, tail = rest.split(END)
    with open(README, "w") as handle:
        handle.write(f"{head}{START}\n{options_table()}\n{END}{tail}")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_readme_table()
    else:
        print(options_table())
