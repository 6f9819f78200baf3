"""The README's options table, generated from `FlexoraArguments` (the one list of Flexora options).

    python scripts/options_table.py            # print it
    python scripts/options_table.py --write    # put it into both READMEs between the options-table markers
tests/test_docs.py checks that README.md and axolotl_plugin/README.md carry exactly this table.
"""

import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from flexora_trl.options import FlexoraArguments  # noqa: E402


def options_table() -> str:
    rows = ["| option | default | what it does |", "|---|---|---|"]
    for field in dataclasses.fields(FlexoraArguments):
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = " ".join(field.metadata["help"].split())
        rows.append(f"| `{field.name}` | `{json.dumps(default)}` | {help_text} |")
    return "\n".join(rows)


ROOT = os.path.join(os.path.dirname(__file__), "..")
READMES = (os.path.join(ROOT, "README.md"), os.path.join(ROOT, "axolotl_plugin", "README.md"))
START, END = "<!-- options-table:start -->", "<!-- options-table:end -->"


def readme_table(readme: str) -> str:
    with open(readme) as handle:
        text = handle.read()
    return text[text.index(START) + len(START): text.index(END)].strip()


def write_readme_tables() -> None:
    for readme in READMES:
        with open(readme) as handle:
            text = handle.read()
        head, rest = text.split(START)
        _, tail = rest.split(END)
        with open(readme, "w") as handle:
            handle.write(f"{head}{START}\n{options_table()}\n{END}{tail}")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_readme_tables()
    else:
        print(options_table())
