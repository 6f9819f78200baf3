"""`flexora_selection.json`: what the search chose and why, written next to the adapter and into every checkpoint."""

from __future__ import annotations

import json
import logging
import os
from importlib.metadata import PackageNotFoundError, version

logger = logging.getLogger(__name__)

RECORD_NAME = "flexora_selection.json"
PLOT_NAME = "flexora_gates.png"
_VERSIONED = ("flexora", "torch", "transformers", "trl", "peft", "accelerate", "axolotl")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def write_record(directory: str, record: dict) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, RECORD_NAME)
    with open(path, "w") as handle:
        json.dump(record, handle, indent=2)
    return path


def read_selection(path: str) -> list[int]:
    """The selected blocks of a record file (or of the record inside a directory)."""
    if os.path.isdir(path):
        path = os.path.join(path, RECORD_NAME)
    try:
        with open(path) as handle:
            record = json.load(handle)
        layers = record["selected_layers"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"`selection_file`: cannot read a Flexora selection from {path}: {error}") from error
    if not isinstance(layers, list) or not layers or not all(isinstance(i, int) for i in layers):
        raise ValueError(f"`selection_file`: {path} has no valid `selected_layers` list: {layers!r}")
    return layers


def plot_record(directory: str, record: dict) -> str | None:
    """Gates over the search steps and the final gates per block, if matplotlib (the `plot` extra) is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("Flexora: install the `plot` extra (matplotlib) to get %s.", PLOT_NAME)
        return None
    trajectory = record.get("alpha_trajectory") or []
    blocks = [int(b) for b in record["gates"]]
    gates = list(record["gates"].values())
    selected = set(record["selected_layers"])
    figure, (over_steps, final) = plt.subplots(1, 2, figsize=(12, 4))
    for position, block in enumerate(blocks):
        alphas = [row[position] for row in trajectory]
        over_steps.plot(range(1, len(alphas) + 1), alphas, lw=1.2 if block in selected else 0.6,
                        alpha=1.0 if block in selected else 0.5)
    over_steps.axhline(0.0, color="black", lw=0.8)
    over_steps.set(title="alpha per block over outer steps", xlabel="outer step", ylabel="alpha")
    colors = ["tab:green" if b in selected else "tab:gray" for b in blocks]
    score = record.get("selection_score", "gate")
    if score == "gate" or not record.get("scores"):
        final.bar(blocks, gates, color=colors)
        final.axhline(1.0, color="black", lw=0.8)
        final.set(title="final gate L*softmax(alpha) (green = selected)", xlabel="block", ylabel="gate")
    else:
        final.bar(blocks, [record["scores"][str(b)] for b in blocks], color=colors, capsize=2,
                  yerr=[2 * record["score_stderr"][str(b)] for b in blocks])
        final.axhline(0.0, color="black", lw=0.8)
        final.set(title=f"{score} score, +-2 standard errors (green = selected)", xlabel="block", ylabel=score)
    figure.tight_layout()
    path = os.path.join(directory, PLOT_NAME)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
