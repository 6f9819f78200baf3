"""`FlexoraTrainerMixin`: search -> select -> rebuild LoRA -> normal training, for any `transformers.Trainer`.

Put it in front of a Trainer subclass (`class T(FlexoraTrainerMixin, SFTTrainer)`), set `self.flexora_args` after
the base `__init__` and call `self.flexora_setup()`. `train()` then runs the selection phase on the trainer's own
dataloaders, collator and loss, keeps LoRA on the selected blocks only, and hands over to the base `train()`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from peft import PeftModel, PeftType
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from .adapter import (FRESH_INITS, changes_base_weights, count_trainable, is_plain, lora_on_blocks, reinitialise_lora,
                      swap_in_search_adapter)
from .backward_floor import BackwardFloor
from .blocks import map_lora_blocks
from .budget import SearchPlan, announce, one_pass, plan_search
from .gates import LayerGates
from .model_card import TAG, selection_section
from .options import FlexoraArguments
from .record import RECORD_NAME, package_versions, plot_record, read_selection, write_record
from .search import GateSearch
from .selection import select_blocks, separation

logger = logging.getLogger(__name__)


class FlexoraTrainerMixin:
    flexora_args: FlexoraArguments
    flexora_record: dict | None = None

    # ---------------------------------------------------------------- checks before any training
    def flexora_setup(self) -> None:
        """Check everything the search and the fine-tune need, so bad input fails before any training starts."""
        self.flexora_args.validate()
        model = self.model
        if not isinstance(model, PeftModel):
            raise ValueError(
                "Flexora selects the blocks of a LoRA adapter: pass `peft_config=LoraConfig(...)` to the trainer "
                "(or a PeftModel with a LoRA adapter)."
            )
        config = model.peft_config[model.active_adapter]
        if config.peft_type != PeftType.LORA:
            raise ValueError(f"Flexora needs a LoRA adapter; the model's adapter is {config.peft_type.value}.")
        if changes_base_weights(config) and _is_quantized(model):
            raise ValueError(
                f"LoraConfig(init_lora_weights={config.init_lora_weights!r}) on a quantized base: the search needs the "
                "original base weights back, which a quantized base cannot give exactly. Use a fresh init "
                f"({', '.join(map(repr, FRESH_INITS))}) with a quantized base."
            )
        if self.flexora_args.search_warm_start and not is_plain(config):
            raise ValueError(
                "`search_warm_start` starts the fine-tune from the search's plain LoRA weights, so it needs a plain "
                "LoraConfig (no `use_dora`, an init in " + ", ".join(map(repr, FRESH_INITS)) + ")."
            )
        if getattr(self, "optimizer", None) is not None:
            raise ValueError(
                "Flexora replaces the LoRA after the search, so it builds its own optimizer: do not pass "
                "`optimizers=(optimizer, scheduler)`; use `optim`/`lr_scheduler_type` in the config instead."
            )
        _check_distributed_backend(self.args)
        self.flexora_blocks = map_lora_blocks(model)
        self.flexora_selection_given = self._given_selection()
        if self.flexora_selection_given is None:
            self._validation_dataset()  # raises on a missing, empty or too-small validation set
            self._search_plan()  # raises when no training example is left for the search
        # Every check passed. The user's LoRA (DoRA, rsLoRA, PiSSA...) is what the fine-tune builds on the chosen
        # blocks, and its size on every block the fine-tune's yardstick; the search runs plain LoRA of its shape.
        self.flexora_lora_params_all_blocks = count_trainable(model)
        self.flexora_user_adapter = swap_in_search_adapter(model)
        self.flexora_blocks = map_lora_blocks(model)
        # The tag every model card written from this model carries (PEFT's own adapter card included).
        model.get_base_model().add_model_tags([TAG])

    def _given_selection(self) -> list[int] | None:
        options = self.flexora_args
        if options.selected_layers is not None:
            layers = sorted(options.selected_layers)
        elif options.selection_file is not None:
            layers = sorted(read_selection(options.selection_file))
        else:
            return None
        unknown = sorted(set(layers) - set(self.flexora_blocks.blocks))
        if unknown:
            raise ValueError(
                f"Selected blocks {unknown} carry no LoRA in this model; candidate blocks: {self.flexora_blocks.blocks}."
            )
        return layers

    def _validation_dataset(self):
        options, args = self.flexora_args, self.args
        if options.search_validation == "eval_dataset":
            dataset = self.eval_dataset
            if dataset is None:
                raise ValueError(
                    "search_validation='eval_dataset' but the trainer has no `eval_dataset`: pass one, or use "
                    "search_validation='holdout'."
                )
            if isinstance(dataset, dict):
                raise ValueError(
                    "search_validation='eval_dataset' needs a single eval dataset, got a dict of "
                    f"{sorted(dataset)}; pass one dataset or use search_validation='holdout'."
                )
            size = _length(dataset, "eval_dataset")
        else:
            train_size = _length(self.train_dataset, "train_dataset")
            size = options.search_holdout_samples
            if size >= train_size:
                raise ValueError(
                    f"`search_holdout_samples`={size} leaves no training data: the training set has {train_size} "
                    "examples. Lower it or use search_validation='eval_dataset'."
                )
            dataset = None
        needed = args.per_device_eval_batch_size * args.world_size if args.dataloader_drop_last else 1
        if size < needed:
            raise ValueError(
                f"The search's validation set has {size} example(s); it needs at least {needed} "
                "(one evaluation batch across all processes)."
            )
        return dataset

    def _search_plan(self) -> SearchPlan:
        held_out = self.flexora_args.search_holdout_samples if self.flexora_args.search_validation == "holdout" else 0
        train_size = _length(self.train_dataset, "train_dataset")
        if train_size - held_out < 1:
            raise ValueError("The training set is empty: the search needs training examples.")
        return plan_search(self.flexora_args, self.args, self._planned_finetune_steps, train_size - held_out)

    @functools.cached_property
    def _planned_finetune_steps(self) -> int:
        """The fine-tune's optimizer steps by the Trainer's own count (dataloader length, accumulation rounded up).
        Once: building the training dataloader (Axolotl packs it) is not free, and the plan is asked for thrice."""
        return self.set_initial_training_values(self.args, self.get_train_dataloader())[-1]

    # ---------------------------------------------------------------- the run
    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        checkpoint = self._resolve_checkpoint(resume_from_checkpoint)
        if checkpoint is not None:
            record = self._record_from_checkpoint(checkpoint)
        elif self.flexora_selection_given is not None:
            self._refuse_to_overwrite(self.flexora_selection_given)
            record = self._record_for(self.flexora_selection_given, source="given")
        else:
            self._refuse_to_overwrite()
            record = self._search_and_select()
        self._apply_selection(record)
        floor = BackwardFloor(self.model, self.flexora_blocks, record["selected_layers"])
        start = time.perf_counter()
        try:
            output = super().train(resume_from_checkpoint=checkpoint, trial=trial, **kwargs)
        finally:
            floor.remove()
        self.flexora_record["finetune_seconds"] = round(time.perf_counter() - start, 3)
        if self.flexora_record.get("search_seconds"):
            self.flexora_record["search_share"] = round(
                self.flexora_record["search_seconds"] / max(self.flexora_record["finetune_seconds"], 1e-9), 4)
        self._write_record(self.args.output_dir)
        return output

    def _resolve_checkpoint(self, resume_from_checkpoint):
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            return None
        if resume_from_checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
            return checkpoint
        return resume_from_checkpoint

    def _record_from_checkpoint(self, checkpoint: str) -> dict:
        """A resumed run fine-tunes the blocks the interrupted run chose: it never searches again."""
        for directory in (checkpoint, self.args.output_dir):
            path = os.path.join(directory, RECORD_NAME)
            if os.path.exists(path):
                with open(path) as handle:
                    record = json.load(handle)
                logger.info("Flexora: resuming from %s with blocks %s (no new search).", checkpoint,
                            record["selected_layers"])
                return record
        raise ValueError(
            f"Cannot resume a Flexora run from {checkpoint}: no {RECORD_NAME} there or in {self.args.output_dir}. "
            "Pass `selection_file` or `selected_layers` to say which blocks the checkpoint was trained on."
        )

    def _refuse_to_overwrite(self, selected: list[int] | None = None) -> None:
        """An earlier run's record in `output_dir` is only replaced by a run on the very same blocks."""
        path = os.path.join(self.args.output_dir, RECORD_NAME)
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

    def _search_and_select(self) -> dict:
        options, args = self.flexora_args, self.args
        # The LoRA was initialised before the Trainer seeded anything: start the search from the seed.
        set_seed(args.seed)
        reinitialise_lora(self.model, self.flexora_blocks)
        gates = LayerGates(self.flexora_blocks, device=next(p for p in self.model.parameters() if p.requires_grad).device)
        try:
            plan = self._search_plan()
            train_loader, val_loader, _ = self._search_dataloaders(plan.samples)
            _require_batches(train_loader, val_loader, args.dataloader_drop_last)
            plan = one_pass(plan, options, len(train_loader), args.gradient_accumulation_steps)
            self._search_gradient_checkpointing()
            announce(plan, gates.blocks, options.search_budget)
            result = GateSearch(self, gates, options).run(train_loader, val_loader, plan.inner_steps)
        finally:
            gates.remove()
            if args.gradient_checkpointing:  # back to the user's own checkpointing settings for the fine-tune
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
        if result.stopped_early and not result.trajectory:
            raise FloatingPointError(
                f"Flexora's search stopped at once ({result.stopped_early}): no gate update succeeded, so there is "
                "nothing to select from. Check the data (examples with no trainable tokens), the learning rates and "
                "the model's weights; nothing was written."
            )
        if hasattr(self, "_metrics"):  # TRL's per-step metric buffers: the fine-tune logs start clean
            for buffer in self._metrics.values():
                buffer.clear()
        selected = select_blocks(result.scores, options)
        selected = broadcast_object_list([selected])[0] if args.world_size > 1 else selected
        split = separation(result.scores, result.score_stderr, selected)
        _log_scores(options.selection_score, result, selected, split)
        record = self._record_for(selected, source="search")
        record.update(
            alpha={str(b): round(a, 6) for b, a in result.alpha.items()},
            gates={str(b): round(g, 6) for b, g in result.gates.items()},
            alpha_trajectory=[[round(a, 6) for a in row] for row in result.trajectory],
            search_seconds=round(result.seconds, 3),
            search_inner_steps=result.inner_steps,
            search_outer_steps=result.outer_steps,
            search_warmup_steps=result.warmup_steps,
            search_settled_at=result.settled_at,
            selection_score=options.selection_score,
            scores={str(b): round(v, 6) for b, v in result.scores.items()},
            score_stderr={str(b): round(v, 6) for b, v in result.score_stderr.items()},
            score_separation={k: round(v, 6) if isinstance(v, float) else v for k, v in split.items()},
            search_samples=plan.samples,
            search_plan=plan.as_dict(),
            search_stopped_early=result.stopped_early,
        )
        return record

    def _search_gradient_checkpointing(self) -> None:
        """The Trainer turns checkpointing on only inside `train()`; the search needs it as well. Reentrant
        checkpointing has no second-order graph, so the unrolled hypergradient runs the search non-reentrant."""
        if not self.args.gradient_checkpointing:
            return
        kwargs = dict(self.args.gradient_checkpointing_kwargs or {})
        if self.flexora_args.hypergradient == "unrolled":
            kwargs["use_reentrant"] = False
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def _search_dataloaders(self, samples: int | None = None):
        """Held-out validation and search subsets drawn with the seed, loaded by the trainer's own dataloaders."""
        options = self.flexora_args
        order = np.random.default_rng(self.args.seed).permutation(_length(self.train_dataset, "train_dataset"))
        if options.search_validation == "holdout":
            held_out = options.search_holdout_samples
            val_dataset = _subset(self.train_dataset, order[:held_out])
        else:
            held_out, val_dataset = 0, self._validation_dataset()
        samples = samples or self._search_plan().samples
        search_dataset = _subset(self.train_dataset, order[held_out : held_out + samples])
        full_dataset, self.train_dataset = self.train_dataset, search_dataset
        try:
            train_loader = self.get_train_dataloader()
        finally:
            self.train_dataset = full_dataset
        return train_loader, self.get_eval_dataloader(val_dataset), samples

    def _record_for(self, selected: list[int], source: str) -> dict:
        blocks = self.flexora_blocks
        return {
            "selected_layers": sorted(selected),
            "num_layers": blocks.num_blocks,
            "candidate_layers": blocks.blocks,
            "layers_pattern": blocks.pattern,
            "source": source,
            "alpha": None,
            "gates": None,
            "alpha_trajectory": [],
            "search_seconds": 0.0,
            "options": self.flexora_args.to_dict(),
            "versions": package_versions(),
        }

    def _apply_selection(self, record: dict) -> None:
        before = self.flexora_lora_params_all_blocks
        set_seed(self.args.seed)  # the fine-tune starts from the same RNG state whether or not a search ran
        name, user = self.flexora_user_adapter
        lora_on_blocks(self.model, self.flexora_blocks, record["selected_layers"], name, user,
                       warm_start=self.flexora_args.search_warm_start and record["source"] == "search")
        after = count_trainable(self.model)
        record.setdefault("lora_params_all_blocks", before)
        record.setdefault("lora_params_selected", after)
        record["lora_params_fraction"] = round(record["lora_params_selected"] / record["lora_params_all_blocks"], 4)
        self.flexora_record = record
        self._write_record(self.args.output_dir)
        if record["alpha"] and self.args.should_save:
            plot_record(self.args.output_dir, record)
        logger.info(
            "Flexora: fine-tuning LoRA on blocks %s of %d (%d of %d LoRA parameters, %.1f%%).",
            record["selected_layers"], record["num_layers"], after, before, 100 * record["lora_params_fraction"],
        )

    def _write_record(self, directory: str) -> None:
        if self.flexora_record is None or not self.args.should_save:
            return
        write_record(directory, self.flexora_record)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save the (plain PEFT) adapter as usual, with the selection record beside it (checkpoints included) and,
        for the run's own output_dir, the model card naming the selection."""
        super().save_model(output_dir, _internal_call=_internal_call)
        self._write_record(output_dir or self.args.output_dir)
        same_dir = output_dir is None or os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir)
        if same_dir and not _internal_call and self.flexora_record is not None:
            self.create_model_card(model_name=os.path.basename(os.path.abspath(self.args.output_dir)))

    def create_model_card(self, *args, **kwargs):
        """The trainer's own card (TRL's, or Transformers' under Axolotl; both carry the model's `flexora` tag) with
        a Flexora section appended."""
        super().create_model_card(*args, **kwargs)
        if self.flexora_record is None or not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        if os.path.exists(path):
            with open(path, "a", encoding="utf-8") as card:
                card.write("\n" + selection_section(self.flexora_record))


def _log_scores(name: str, result, selected: list[int], split: dict) -> None:
    """Each block's score with its standard error, and a warning when the selection's boundary is inside the noise."""
    ranked = sorted(result.scores, key=lambda b: -result.scores[b])
    logger.info("Flexora: %s score per block (+- standard error over validation batches; * = kept): %s", name,
                ", ".join(f"{b}{'*' if b in selected else ''} {result.scores[b]:.4g}+-{result.score_stderr[b]:.2g}"
                          for b in ranked))
    if not split["separated"]:
        logger.warning(
            "Flexora: the weakest kept block (%d) and the strongest dropped one (%d) differ by %.3g in %s score, "
            "within the noise (2 standard errors: %.3g): the selection at its boundary is a coin flip. Raise the "
            "search budget (`search_samples`, `search_val_batches`) for a selection that holds.",
            split["weakest_kept"], split["strongest_dropped"], split["gap"], name, split["noise"])


def _is_quantized(model) -> bool:
    return any(getattr(model, flag, False) for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"))


def _check_distributed_backend(args) -> None:
    """The search runs on the unwrapped model before the Trainer prepares it: fine for DDP (tested) and for
    DeepSpeed ZeRO-1/2 (untested), wrong where the weights are already sharded (ZeRO-3, FSDP)."""
    deepspeed = getattr(args, "deepspeed_plugin", None)
    if deepspeed is not None and deepspeed.zero_stage == 3:
        raise ValueError(
            "Flexora does not support DeepSpeed ZeRO-3 yet: its search runs on the model before the Trainer wraps "
            "it, and ZeRO-3 has already partitioned the weights. Use DDP (torchrun / accelerate launch) or ZeRO-2."
        )
    if getattr(args, "fsdp", None):
        raise ValueError(
            "Flexora does not support FSDP yet: its search runs on the unsharded model before the Trainer wraps it. "
            "Use DDP (torchrun / accelerate launch) or DeepSpeed ZeRO-2."
        )
    if deepspeed is not None:
        logger.warning("Flexora under DeepSpeed ZeRO-%d is untested; DDP is the tested multi-GPU setup.",
                       deepspeed.zero_stage)


def _length(dataset, name: str) -> int:
    try:
        return len(dataset)
    except TypeError as error:
        raise ValueError(
            f"Flexora draws its search and hold-out subsets by index: `{name}` must be a map-style dataset with a "
            "length (not an IterableDataset / streaming dataset)."
        ) from error


def _subset(dataset, indices):
    indices = [int(i) for i in indices]
    if hasattr(dataset, "select"):
        return dataset.select(indices)
    return torch.utils.data.Subset(dataset, indices)


def _require_batches(train_loader, val_loader, drop_last: bool) -> None:
    """A loader with no batch (a subset smaller than one batch with `dataloader_drop_last`, or than one packed row)
    would make the search cycle over nothing for ever: refuse it before any step, naming what to raise."""
    for name, loader, option in (("search", train_loader, "search_samples"),
                                 ("validation", val_loader, "search_holdout_samples")):
        try:
            empty = len(loader) == 0
        except TypeError:  # an iterable dataset has no length: it is the user's stream, trusted to yield
            continue
        if empty:
            raise ValueError(
                f"Flexora's {name} subset gives no batch (dataloader_drop_last={drop_last}): raise `{option}` to at "
                "least one batch (or one packed row), or use `dataloader_drop_last=False`; nothing was trained."
            )
