"""`SelectionRecord`: what the search chose and why, as `flexora_selection.json` next to the adapter and in every
checkpoint. The record owns its file: writing it, reading it (older formats included), finding it again to resume a
run, and refusing to replace an earlier run's selection by another one."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

logger = logging.getLogger(__name__)

RECORD_NAME = "flexora_selection.json"
PLOT_NAME = "flexora_gates.png"
# 1: the records written before the format was versioned (no `format_version` key); 2: the same keys, versioned.
FORMAT_VERSION = 2
_VERSIONED = ("flexora", "torch", "transformers", "trl", "peft", "accelerate", "axolotl")
# {block: value}, with string keys in the JSON
_PER_BLOCK = ("alpha", "gates", "scores", "score_stderr", "score_batches", "count_scores", "count_stderr",
              "lora_norms")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


@dataclass
class SelectionRecord:
    """The blocks a run fine-tunes, where they came from (`source`: "search" or "given"), and for a search every
    block's gate logit, score and spread, the plan and the time it took."""

    selected_layers: list[int]
    num_layers: int | None = None
    candidate_layers: list[int] | None = None
    layers_pattern: str | None = None
    source: str = "given"
    options: dict = field(default_factory=dict)
    versions: dict = field(default_factory=package_versions)
    lora_params_all_blocks: int | None = None
    lora_params_selected: int | None = None
    lora_params_fraction: float | None = None
    # The search (None / empty when the blocks were given).
    alpha: dict[int, float] | None = None
    gates: dict[int, float] | None = None
    alpha_trajectory: list[list[float]] = field(default_factory=list)  # alpha after every outer step
    selection_score: str | None = None
    scores: dict[int, float] | None = None
    score_stderr: dict[int, float] | None = None
    score_batches: dict[int, int] | None = None  # validation batches behind each score (taylor: all outer steps')
    score_separation: dict | None = None
    # `selection_count_score`: the score whose blocks above zero set how many are kept, and its spread
    count_scores: dict[int, float] | None = None
    count_stderr: dict[int, float] | None = None
    group_sparsity_strength: float | None = None  # `search_group_sparsity`: the penalty's measured strength
    lora_norms: dict[int, float] | None = None  # and each block's LoRA B norm at the end of the search
    search_samples: int | None = None
    search_plan: dict | None = None
    search_inner_steps: int | None = None
    search_outer_steps: int | None = None
    search_warmup_steps: int | None = None
    search_settled_at: int | None = None
    search_stopped_early: str | None = None
    search_seconds: float = 0.0
    score_seconds: float | None = None  # the part of search_seconds the score took after the search
    # The fine-tune, once it has run.
    finetune_seconds: float | None = None
    search_share: float | None = None
    format_version: int = FORMAT_VERSION  # of the file it was read from

    @classmethod
    def from_search(cls, result, plan, split: dict, **given) -> SelectionRecord:
        """The record of a finished search (`SearchResult`, `SearchPlan`, the kept/dropped separation)."""
        return cls(
            source="search", alpha=_rounded(result.alpha), gates=_rounded(result.gates),
            alpha_trajectory=[[round(a, 6) for a in row] for row in result.trajectory],
            selection_score=given["options"]["selection_score"],
            scores=_rounded(result.scores), score_stderr=_rounded(result.score_stderr),
            score_batches=result.score_batches,
            score_separation={k: round(v, 6) if isinstance(v, float) else v for k, v in split.items()},
            count_scores=_rounded(result.count_scores), count_stderr=_rounded(result.count_stderr),
            group_sparsity_strength=result.group_sparsity_strength,
            lora_norms=_rounded(result.lora_norms),
            search_samples=plan.samples, search_plan=plan.as_dict(), search_inner_steps=result.inner_steps,
            search_outer_steps=result.outer_steps, search_warmup_steps=result.warmup_steps,
            search_settled_at=result.settled_at, search_stopped_early=result.stopped_early,
            search_seconds=round(result.seconds, 3), score_seconds=round(result.score_seconds, 3), **given,
        )

    @property
    def continues_search(self) -> bool:
        """`search_warm_start` after a search: the fine-tune starts from the search's LoRA and counts its steps (a
        resumed run reads this from the interrupted run's record)."""
        return bool(self.options.get("search_warm_start") and self.source == "search" and self.search_inner_steps)

    def finetuned(self, seconds: float) -> None:
        self.finetune_seconds = round(seconds, 3)
        if self.search_seconds:
            self.search_share = round(self.search_seconds / max(self.finetune_seconds, 1e-9), 4)

    # ---------------------------------------------------------------- the file
    def to_dict(self) -> dict:
        """The JSON form: per-block values keyed by the block index as a string."""
        data = dataclasses.asdict(self)
        data["format_version"] = FORMAT_VERSION  # what is written is this version's format, whatever was read
        for key in _PER_BLOCK:
            if data[key] is not None:
                data[key] = {str(block): value for block, value in data[key].items()}
        return data

    def write(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, RECORD_NAME)
        with open(path, "w") as handle:
            json.dump(self.to_dict(), handle, indent=2)
        return path

    @classmethod
    def read(cls, path: str) -> SelectionRecord:
        """The record of a file or of the record inside a directory, in this format or an older one; keys this
        version does not know (a newer writer's) are left out."""
        if os.path.isdir(path):
            path = os.path.join(path, RECORD_NAME)
        try:
            with open(path) as handle:
                data = json.load(handle)
            layers = data["selected_layers"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"cannot read a Flexora selection from {path}: {error}") from error
        if not isinstance(layers, list) or not layers or not all(isinstance(i, int) for i in layers):
            raise ValueError(f"{path} has no valid `selected_layers` list: {layers!r}")
        known = {spec.name for spec in dataclasses.fields(cls)}
        data = {key: value for key, value in data.items() if key in known}
        for key in _PER_BLOCK:
            if data.get(key) is not None:
                data[key] = {int(block): value for block, value in data[key].items()}
        data.setdefault("format_version", 1)
        data.setdefault("versions", {})
        return cls(**data)

    @classmethod
    def for_resume(cls, checkpoint: str, output_dir: str) -> SelectionRecord:
        """The interrupted run's record, from the checkpoint or the run's output_dir: a resumed run never searches."""
        for directory in (checkpoint, output_dir):
            if os.path.exists(os.path.join(directory, RECORD_NAME)):
                return cls.read(directory)
        raise ValueError(
            f"Cannot resume a Flexora run from {checkpoint}: no {RECORD_NAME} there or in {output_dir}. "
            "Pass `selection_file` or `selected_layers` to say which blocks the checkpoint was trained on."
        )

    @staticmethod
    def refuse_to_overwrite(output_dir: str, selected: list[int] | None = None) -> None:
        """An earlier run's record in `output_dir` is only replaced by a run on the very same blocks."""
        path = os.path.join(output_dir, RECORD_NAME)
        if not os.path.exists(path):
            return
        earlier = read_selection(path)
        if selected is not None and sorted(earlier) == sorted(selected):
            return
        raise FileExistsError(
            f"{path} already holds the selection of an earlier Flexora run (blocks {earlier}). Resume it with "
            f"`resume_from_checkpoint`, reuse its selection with `selection_file='{path}'`, or choose another "
            "`output_dir`; Flexora does not overwrite it silently."
        )

    # ---------------------------------------------------------------- the picture
    def plot(self, directory: str) -> str | None:
        """Gates over the search steps and the final score per block, if matplotlib (the `plot` extra) is there."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            logger.info("Flexora: install the `plot` extra (matplotlib) to get %s.", PLOT_NAME)
            return None
        blocks = list(self.gates)
        selected = set(self.selected_layers)
        figure, (over_steps, final) = plt.subplots(1, 2, figsize=(12, 4))
        for position, block in enumerate(blocks):
            alphas = [row[position] for row in self.alpha_trajectory]
            over_steps.plot(range(1, len(alphas) + 1), alphas, lw=1.2 if block in selected else 0.6,
                            alpha=1.0 if block in selected else 0.5)
        over_steps.axhline(0.0, color="black", lw=0.8)
        over_steps.set(title="alpha per block over outer steps", xlabel="outer step", ylabel="alpha")
        colors = ["tab:green" if b in selected else "tab:gray" for b in blocks]
        score = self.selection_score or "gate"
        if score == "gate" or not self.scores:
            final.bar(blocks, list(self.gates.values()), color=colors)
            final.axhline(1.0, color="black", lw=0.8)
            final.set(title="final gate L*softmax(alpha) (green = selected)", xlabel="block", ylabel="gate")
        else:
            final.bar(blocks, [self.scores[b] for b in blocks], color=colors, capsize=2,
                      yerr=[2 * self.score_stderr[b] for b in blocks])
            final.axhline(0.0, color="black", lw=0.8)
            final.set(title=f"{score} score, +-2 standard errors (green = selected)", xlabel="block", ylabel=score)
        figure.tight_layout()
        path = os.path.join(directory, PLOT_NAME)
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path


def _rounded(per_block: dict[int, float] | None) -> dict[int, float] | None:
    return None if per_block is None else {block: round(value, 6) for block, value in per_block.items()}


def read_selection(path: str) -> list[int]:
    """The selected blocks of a record file or directory, for the `selection_file` option."""
    try:
        return SelectionRecord.read(path).selected_layers
    except ValueError as error:
        raise ValueError(f"`selection_file`: {error}") from error
