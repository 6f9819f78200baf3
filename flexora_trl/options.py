"""The one list of Flexora options, shared by `FlexoraSFTConfig` and the Axolotl `flexora:` block.

Every option is a dataclass field with a default and a help text; `FlexoraArguments.validate()` is the only place
where values are checked, so the TRL config and the YAML block reject bad input with the same message.

Words: a *layer* in an option's name (`selected_layers`, `selection_min_layers`; the paper's "layer selection") is a
transformer block, and the code says block throughout (`BlockMap`, `BlockGates`); the `*_layers` options take block
indices, as PEFT's `layers_to_transform` does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

VALIDATION_SOURCES = ("holdout", "eval_dataset")
SELECTION_RULES = ("positive", "top_k", "top_fraction")
SEARCH_LR_SCHEDULERS = ("constant", "linear", "cosine")
GATE_OPTIMIZERS = ("adam", "sgd")
SEARCH_OPTIMIZERS = ("adamw", "normalized_sgd")
# Measured once the search is over, on validation batches.
AFTER_SEARCH_SCORES = ("ablation", "insertion", "banzhaf", "forward", "final_taylor")


@dataclass
class FlexoraArguments:
    """Options of the Flexora search (layer selection) that runs before normal LoRA fine-tuning."""

    search_samples: Optional[int] = field(
        default=None,
        metadata={
            "help": "Training examples the search phase sees (one pass, drawn with the seed from the training set, "
            "after the hold-out). None (the default): the search is sized by `search_budget`. The authors used 4,800 "
            "(+200 held out); their ablation found 1,000 to 10,000 give similar selections."
        },
    )
    search_budget: float = field(
        default=0.10,
        metadata={"help": "When `search_samples` is None and `search_steps` unset, the search gets the inner steps "
                  "estimated to cost this fraction of the planned fine-tune (max_steps, or epochs x dataset over the "
                  "effective batch, world size included), and never fewer than 8; the log and the record give the "
                  "estimate and the measured share."},
    )
    search_steps: Optional[int] = field(
        default=None,
        metadata={"help": "If set, the search runs exactly this many inner optimizer steps instead of one pass over "
                  "`search_samples` (cycling through the search subset if needed)."},
    )
    search_validation: str = field(
        default="holdout",
        metadata={"help": "Where the outer (gate) steps get validation data: `holdout` = `search_holdout_samples` "
                  "examples held out of the training set with the seed; `eval_dataset` = the trainer's eval dataset."},
    )
    search_holdout_samples: int = field(
        default=200,
        metadata={"help": "Examples held out of the training set for the outer steps when "
                  "`search_validation='holdout'` (the authors: 200). They are still used by the fine-tune."},
    )
    search_patience: Optional[int] = field(
        default=None,
        metadata={"help": "End the search once the selection (by `selection_score` so far, under the selection rule) "
                  "has stayed the same for this many outer steps; the record says when. Not available with the scores "
                  "measured after it (`ablation`, `insertion`, `banzhaf`, `forward`, `final_taylor`). None: run the "
                  "whole budget."},
    )
    search_val_batches: int = field(
        default=1,
        metadata={"help": "Validation micro-batches (of `per_device_eval_batch_size`) whose summed loss drives one "
                  "outer step. The authors: 8 micro-batches of 1 example, as many as an optimizer step's training "
                  "examples, which 1 gives with equal train and eval batch sizes; an inner step with its outer step "
                  "then makes the passes of 2 fine-tune steps (3 with 2 micro-batches), which `search_budget` counts "
                  "at 1.2 times that, measured."},
    )
    search_outer_every: int = field(
        default=1,
        metadata={"help": "Take one outer (gate) step every this many inner optimizer steps."},
    )
    search_learning_rate: Optional[float] = field(
        default=None,
        metadata={"help": "Learning rate of the LoRA weights during the search (its optimizer: `search_optimizer`; "
                  "its schedule: `search_lr_scheduler`). Defaults to the training `learning_rate`."},
    )
    search_lr_scheduler: str = field(
        default="constant",
        metadata={"help": "Schedule of `search_learning_rate` over the search's inner steps: `constant` (the authors) "
                  "or `linear` / `cosine` (to zero at the last planned step, as the Trainer's schedulers), so the LoRA "
                  "that the scores after the search switch off has settled instead of carrying the last steps' "
                  "noise. An unrolled look-ahead takes the coming inner step's rate for all its `unroll_steps` "
                  "updates."},
    )
    search_optimizer: str = field(
        default="adamw",
        metadata={"help": "Optimizer of the LoRA weights during the search: `adamw` (the authors, with the training "
                  "betas, epsilon and weight decay; every weight moves by about the learning rate whatever its "
                  "gradient's size) or `normalized_sgd` (AdamW with one second moment for all the LoRA weights "
                  "together: the same learning rate for the gradient as a whole, but a block whose gradient is twice "
                  "as large moves twice as far, and a `search_group_sparsity` penalty leaves the blocks below its "
                  "strength at zero). Measured on the planted benchmark's all-linear sets: no better than AdamW "
                  "(+1 planted block in the top six over four set-seed pairs; benchmarks/README.md). First-order "
                  "hypergradient only."},
    )
    gate_lr: float = field(
        default=0.01,
        metadata={"help": "Learning rate of the gate logits alpha (constant; the authors: Adam at 0.01)."},
    )
    gate_optimizer: str = field(
        default="adam",
        metadata={"help": "Optimizer of alpha: `adam` (the authors; each step moves alpha by about `gate_lr` whatever "
                  "the gradient's size) or `sgd` (plain gradient steps: alpha's size follows the gradient's size)."},
    )
    gate_warmup_fraction: float = field(
        default=0.0,
        metadata={"help": "Fraction of the search's inner steps taken before the first outer step, so that LoRA's B "
                  "has left zero (where the gates get no gradient) before the gates move or are scored; in [0, 1)."},
    )
    search_block_dropout: float = field(
        default=0.0,
        metadata={"help": "Probability that a block's LoRA is switched off for an inner step (each block on its own, a "
                  "new draw every inner step, with the seed; no rescaling): the blocks' LoRAs learn parts that help "
                  "whatever the other blocks do instead of parts that only work as a team (dropout against "
                  "co-adaptation). Score such a search with `banzhaf`, in the contexts it trained in, not with "
                  "`ablation`: all on, the parts overshoot (measured). In [0, 1); 0 = off (the authors). First-order "
                  "hypergradient only."},
    )
    search_group_sparsity: Optional[float] = field(
        default=None,
        metadata={"help": "Strength of a group-lasso penalty on each block's LoRA during the search (the norm of all "
                  "the block's LoRA B weights, added to the training loss), relative to the blocks' mean gradient "
                  "norm on the first inner step. Meant to make the blocks compete for one change instead of sharing "
                  "it: under gradient descent a block's B stays at zero while its gradient norm is below the "
                  "strength; under the search's AdamW, measured, no block was left at zero and the planted blocks "
                  "were found no better; under `search_optimizer: normalized_sgd` most blocks were, but the blocks "
                  "that won were mostly not the planted ones (benchmarks/README.md). For the scores measured after "
                  "the search (`ablation`...); the record gives each block's final norm (`lora_norms`). None (the "
                  "default): off (the authors). First-order hypergradient only."},
    )
    selection_score: str = field(
        default="gate",
        metadata={"help": "What ranks the blocks: `gate` = alpha (the paper; `positive` keeps alpha > 0, a gate above "
                  "the mean); `taylor` = minus the gradient of the validation loss with respect to a multiplier on the "
                  "block's LoRA output, averaged over the outer steps' validation batches: a first-order estimate of "
                  "how much the validation loss rises when the block's LoRA is switched off (`positive` keeps blocks "
                  "whose removal would raise it); `ablation` = that rise measured after the search, with one block's "
                  "LoRA switched off at a time on `score_val_batches` validation batches (forward passes only; "
                  "`positive` keeps blocks whose removal raises the validation loss); `insertion` = the other end: the "
                  "validation loss with every block's LoRA off minus with only this block's on, on the same batches "
                  "(`positive` keeps blocks whose LoRA alone lowers the validation loss); `banzhaf` = between the two: "
                  "on each batch a random set of the other blocks' LoRAs is off (each with probability "
                  "`search_block_dropout`, or one half), and the score is the loss without the block's LoRA minus with "
                  "it, averaged over the draws (its Banzhaf value); `forward` = forward selection: from every "
                  "block's LoRA off, each round switches on the block whose LoRA lowers the validation loss most given "
                  "those already on, until the rule is met (`positive`: no block lowers it; `top_k`, `top_fraction`: "
                  "their count); a block scores its gain in the round that added it (insertion's passes per round); "
                  "`final_taylor` = the taylor term taken after the "
                  "search on those batches, at the final LoRA: ablation's first-order estimate for one forward and "
                  "backward pass per batch."},
    )
    score_val_batches: int = field(
        default=8,
        metadata={"help": "Validation micro-batches the scores measured after the search (`ablation`, `insertion`, "
                  "`banzhaf`, `forward`, `final_taylor`) measure every block on (the same batches for every block, so "
                  "the differences are paired; at most the validation set's batches, each taken once). More batches, "
                  "less noise in the ranking, for one pass each: a number above the validation set's batch count "
                  "measures every held-out row."},
    )
    score_early_stop: bool = field(
        default=False,
        metadata={"help": "With a score measured after the search and `score_val_batches` above 8: measure every "
                  "block on the first 8 batches, then, batch by batch, only the blocks whose score is still within 2 "
                  "standard errors of the selection's boundary (0 for `positive`, else halfway between the weakest "
                  "kept and the strongest dropped block), until none is or `score_val_batches` is reached. The "
                  "batches go where the selection is in doubt; the record's `score_batches` says how many each block "
                  "got."},
    )
    hypergradient: str = field(
        default="first_order",
        metadata={"help": "How alpha's gradient is taken: `first_order` = gradient of the validation loss at the "
                  "current LoRA weights (the authors' code, DARTS first order); `unrolled` = gradient of the "
                  "validation loss after `unroll_steps` differentiable AdamW-style updates of the LoRA weights on the "
                  "coming training batches (the paper's unrolled differentiation; eager attention during the search)."},
    )
    unroll_steps: int = field(
        default=1,
        metadata={"help": "Inner steps the `unrolled` hypergradient differentiates through (K >= 1)."},
    )
    selection_rule: str = field(
        default="positive",
        metadata={"help": "Which blocks are kept, by `selection_score`: `positive` = score > 0 (for the gate: alpha "
                  "> 0, i.e. gate above the mean, the paper); `top_k` = the `selection_top_k` highest scores; "
                  "`top_fraction` = the highest `selection_top_fraction` of the blocks."},
    )
    selection_count_score: Optional[str] = field(
        default=None,
        metadata={"help": "Let a score with a natural zero set how many blocks are kept, and `selection_score` which: "
                  "one of the scores measured after the search (`final_taylor`, `ablation`, `insertion`, `banzhaf`, "
                  "`forward`) counts the blocks whose LoRA lowers the validation loss (its `positive` rule), and the "
                  "selection keeps that many of `selection_score`'s highest. The gate's `positive` rule keeps about "
                  "half the blocks by construction, whether the fine-tune still learns (where more blocks help) or "
                  "overfits; a count from the held-out loss was meant to follow the data. Measured with "
                  "`final_taylor` on five tasks: it ties the gate's own count and follows the task more than the "
                  "regime (benchmarks/README.md, \"A count from the held-out loss\"), so it is not the default. "
                  "Needs `selection_rule: positive` (the count replaces the rule's); its pass is counted in the "
                  "search's budget and the record gives its per-block figures (`count_scores`). None (the default): "
                  "the rule alone decides."},
    )
    selection_top_k: Optional[int] = field(
        default=None, metadata={"help": "Number of blocks kept by `selection_rule='top_k'`."}
    )
    selection_top_fraction: Optional[float] = field(
        default=None, metadata={"help": "Fraction of blocks (0 < f <= 1) kept by `selection_rule='top_fraction'`."}
    )
    selection_min_layers: int = field(
        default=1,
        metadata={"help": "Keep at least this many blocks (the largest gates fill up the selection)."},
    )
    selection_max_layers: Optional[int] = field(
        default=None, metadata={"help": "Keep at most this many blocks (the smallest gates are dropped)."}
    )
    selected_layers: Optional[list[int]] = field(
        default=None,
        metadata={"help": "Skip the search and fine-tune LoRA on these block indices."},
    )
    selection_file: Optional[str] = field(
        default=None,
        metadata={"help": "Skip the search and reuse the selection of a previous run's `flexora_selection.json`."},
    )
    search_warm_start: bool = field(
        default=False,
        metadata={"help": "Continue the search's training instead of starting a fresh LoRA (the authors start "
                  "fresh): the fine-tune starts from the search's LoRA weights of the selected blocks (their gates "
                  "folded in) and the search's inner steps count toward `max_steps` (or the epochs' steps); plain "
                  "LoRA only (no DoRA, a fresh init). Measured: better than a fresh start where the fine-tune is "
                  "short for its data, worse (a higher held-out loss) over many epochs of a small set."},
    )

    def validate(self) -> None:
        """Raise a ValueError naming the option and its accepted values for anything out of range."""
        _check_int(self, "search_samples", minimum=1, optional=True)
        _check_positive_float(self, "search_budget")
        _check_int(self, "search_steps", minimum=1, optional=True)
        _check_choice(self, "search_validation", VALIDATION_SOURCES)
        _check_int(self, "search_holdout_samples", minimum=1)
        _check_int(self, "search_val_batches", minimum=1)
        _check_int(self, "search_patience", minimum=1, optional=True)
        if self.search_patience is not None and self.selection_score in AFTER_SEARCH_SCORES:
            raise ValueError("`search_patience` needs a score that exists during the search ('gate' or 'taylor'); "
                             f"the {self.selection_score!r} score is measured after it.")
        _check_int(self, "search_outer_every", minimum=1)
        _check_positive_float(self, "search_learning_rate", optional=True)
        _check_choice(self, "search_lr_scheduler", SEARCH_LR_SCHEDULERS)
        _check_choice(self, "search_optimizer", SEARCH_OPTIMIZERS)
        _check_first_order(self, "`search_optimizer` other than 'adamw'", self.search_optimizer != "adamw",
                           "the unrolled look-ahead differentiates through AdamW's updates.")
        _check_positive_float(self, "gate_lr")
        _check_choice(self, "gate_optimizer", GATE_OPTIMIZERS)
        _check_positive_float(self, "search_group_sparsity", optional=True)
        _check_first_order(self, "`search_group_sparsity`", self.search_group_sparsity is not None,
                           "the unrolled look-ahead would differentiate through inner steps without the penalty.")
        _check_unit_fraction(self, "gate_warmup_fraction")
        _check_unit_fraction(self, "search_block_dropout")
        _check_first_order(self, "`search_block_dropout`", bool(self.search_block_dropout),
                           "the unrolled look-ahead would differentiate through inner steps taken with every block on.")
        # The strategies' own names are the choices (imported here, not with this module, which stays torch-free).
        from .hypergradient import STRATEGIES
        from .scores import SCORES

        _check_choice(self, "selection_score", tuple(SCORES))
        _check_int(self, "score_val_batches", minimum=1)
        if not isinstance(self.score_early_stop, bool):
            raise ValueError(f"`score_early_stop` must be true or false, got {self.score_early_stop!r}.")
        if self.score_early_stop and self.selection_score not in AFTER_SEARCH_SCORES:
            raise ValueError("`score_early_stop` needs a score measured after the search ("
                             f"{', '.join(map(repr, AFTER_SEARCH_SCORES))}); the {self.selection_score!r} score has "
                             "no batches to stop.")
        if self.score_early_stop and self.selection_score == "forward":
            raise ValueError("`score_early_stop` does not apply to selection_score='forward': each of its rounds "
                             "measures every block still off on the same batches.")
        _check_choice(self, "hypergradient", tuple(STRATEGIES))
        _check_int(self, "unroll_steps", minimum=1)
        _check_choice(self, "selection_rule", SELECTION_RULES)
        _check_int(self, "selection_top_k", minimum=1, optional=True)
        _check_int(self, "selection_min_layers", minimum=1)
        _check_int(self, "selection_max_layers", minimum=1, optional=True)
        if self.selection_count_score is not None:
            _check_choice(self, "selection_count_score", AFTER_SEARCH_SCORES)
            if self.selection_rule != "positive":
                raise ValueError(f"`selection_count_score` sets how many blocks are kept, so it needs selection_rule="
                                 f"'positive' (got {self.selection_rule!r}): give one or the other.")
            if self.score_early_stop or self.search_patience is not None:
                raise ValueError("`selection_count_score` does not go with `score_early_stop` or `search_patience`: "
                                 "both follow the selection rule's boundary, and the count replaces it.")
        if self.selection_rule == "top_k" and self.selection_top_k is None:
            raise ValueError("selection_rule='top_k' needs `selection_top_k` (an integer >= 1).")
        if self.selection_rule == "top_fraction":
            fraction = self.selection_top_fraction
            if fraction is None or isinstance(fraction, bool) or not 0 < float(fraction) <= 1:
                raise ValueError(
                    f"selection_rule='top_fraction' needs `selection_top_fraction` in (0, 1], got {fraction!r}."
                )
        if self.selection_max_layers is not None and self.selection_max_layers < self.selection_min_layers:
            raise ValueError(
                f"`selection_max_layers` ({self.selection_max_layers}) must be >= `selection_min_layers` "
                f"({self.selection_min_layers})."
            )
        if self.selected_layers is not None:
            layers = self.selected_layers
            if not isinstance(layers, (list, tuple)) or not layers or not all(_is_int(i) and i >= 0 for i in layers):
                raise ValueError(
                    f"`selected_layers` must be a non-empty list of block indices >= 0, got {layers!r}."
                )
            if len(set(layers)) != len(layers):
                raise ValueError(f"`selected_layers` lists a block twice: {layers!r}.")
        if self.selected_layers is not None and self.selection_file is not None:
            raise ValueError("Give either `selected_layers` or `selection_file`, not both.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_object(cls, obj) -> "FlexoraArguments":
        """Read the Flexora options off any object carrying them as attributes (a FlexoraSFTConfig, a YAML block)."""
        return cls(**{name: getattr(obj, name) for name in cls.names()})


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(args, name, minimum, optional=False):
    value = getattr(args, name)
    if value is None and optional:
        return
    if not _is_int(value) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}{' or None' if optional else ''}, got {value!r}.")


def _check_positive_float(args, name, optional=False):
    value = getattr(args, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a number > 0{' or None' if optional else ''}, got {value!r}.")


def _check_unit_fraction(args, name):
    value = getattr(args, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"`{name}` must be a number in [0, 1), got {value!r}.")


def _check_first_order(args, subject, active, reason):
    """What changes the search's inner steps away from the plain AdamW steps the unrolled look-ahead differentiates."""
    if active and args.hypergradient != "first_order":
        raise ValueError(f"{subject} needs hypergradient='first_order': {reason}")


def _check_choice(args, name, choices):
    value = getattr(args, name)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(repr(c) for c in choices)}; got {value!r}.")
