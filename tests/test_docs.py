"""The READMEs' options tables are the one generated from FlexoraArguments (no hand-kept second list)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))

from options_table import READMES, options_table, readme_table  # noqa: E402


@pytest.mark.parametrize("readme", READMES, ids=os.path.basename)
def test_readme_options_table_is_current(readme):
    assert readme_table(readme) == options_table(), "run: python scripts/options_table.py --write"
