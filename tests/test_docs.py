"""The README's options table is the one generated from FlexoraArguments (no hand-kept second list)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))

from options_table import options_table, readme_table  # noqa: E402


def test_readme_options_table_is_current():
    assert readme_table() == options_table(), "run: python scripts/options_table.py --write"
