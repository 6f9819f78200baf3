"""`FlexoraTrainerMixin`: search -> select -> rebuild LoRA -> normal training, for any `transformers.Trainer`.

Put it in front of a Trainer subclass (`class T(FlexoraTrainerMixin, SFTTrainer)`), set `self.flexora_args` after
the base `__init__` and call `self.flexora_setup()`. `train()` then runs the selection phase on the trainer's own
dataloaders, collator and loss, keeps LoRA on the selected blocks only, and hands over to the base `train()`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time

from accelerate.utils import broadcast_object_list
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from .adapter import count_trainable, lora_on_blocks, reinitialise_lora, swap_in_search_adapter
from .backward_floor import BackwardFloor
from .blocks import map_lora_blocks
from .budget import announce, one_pass
from .checks import check_trainer, given_selection
from .gates import BlockGates
from .model_card import TAG, append_selection_section
from .options import FlexoraArguments
from .record import SelectionRecord
from .search import GateSearch
from .search_data import check_search_data, require_batches, search_dataloaders, search_plan
from .selection import log_scores, select_blocks, separation
from .temporary import search_checkpointing

logger = logging.getLogger(__name__)


class FlexoraTrainerMixin:
    flexora_args: FlexoraArguments
    flexora_record: SelectionRecord | None = None

    def flexora_setup(self) -> None:
        """Check everything the search and the fine-tune need, so bad input fails before any training starts, then
        put the search's plain LoRA in place of the user's."""
        self.flexora_args.validate()
        check_trainer(self)
        model = self.model
        self.flexora_blocks = map_lora_blocks(model)
        self.flexora_selection_given = given_selection(self.flexora_args, self.flexora_blocks)
        if self.flexora_selection_given is None:
            check_search_data(self)
        # Every check passed. The user's LoRA (DoRA, rsLoRA, PiSSA...) is what the fine-tune builds on the chosen
        # blocks, and its size on every block the fine-tune's yardstick; the search runs plain LoRA of its shape.
        self.flexora_lora_params_all_blocks = count_trainable(model)
        self.flexora_user_adapter = swap_in_search_adapter(model)
        self.flexora_blocks = map_lora_blocks(model)
        # The tag every model card written from this model carries (PEFT's own adapter card included).
        model.get_base_model().add_model_tags([TAG])

    @functools.cached_property
    def flexora_planned_steps(self) -> int:
        """The fine-tune's optimizer steps by the Trainer's own count (dataloader length, accumulation rounded up).
        Once: building the training dataloader (Axolotl packs it) is not free, and the plan is asked for thrice."""
        return self.set_initial_training_values(self.args, self.get_train_dataloader())[-1]

    # ---------------------------------------------------------------- the run
    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        checkpoint = self._resolve_checkpoint(resume_from_checkpoint)
        record = self._selection(checkpoint)
        self._apply_selection(record)
        with BackwardFloor(self.model, self.flexora_blocks, record.selected_layers), self._search_steps_counted(record):
            start = time.perf_counter()
            output = super().train(resume_from_checkpoint=checkpoint, trial=trial, **kwargs)
        record.finetuned(time.perf_counter() - start)
        self._write_record(self.args.output_dir)
        return output

    @contextlib.contextmanager
    def _search_steps_counted(self, record: SelectionRecord):
        """With `search_warm_start` the fine-tune continues the search's training of the kept blocks, so the
        search's inner steps (one fine-tune step each) count toward the planned fine-tune: `max_steps` becomes the
        planned steps minus the search's, for this run and for a resumed one (its record says the same)."""
        if not record.continues_search:
            yield
            return
        planned, given = self.flexora_planned_steps, self.args.max_steps
        self.args.max_steps = max(1, planned - record.search_inner_steps)
        logger.info("Flexora: the fine-tune continues the search's LoRA (`search_warm_start`): %d of the %d planned "
                    "steps are left after the search's %d.", self.args.max_steps, planned, record.search_inner_steps)
        try:
            yield
        finally:
            self.args.max_steps = given

    def _resolve_checkpoint(self, resume_from_checkpoint):
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            return None
        if resume_from_checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
            return checkpoint
        return resume_from_checkpoint

    def _selection(self, checkpoint) -> SelectionRecord:
        """The interrupted run's blocks when resuming, the user's when given, else the search's."""
        if checkpoint is not None:
            record = SelectionRecord.for_resume(checkpoint, self.args.output_dir)
            logger.info("Flexora: resuming from %s with blocks %s (no new search).", checkpoint, record.selected_layers)
            return record
        SelectionRecord.refuse_to_overwrite(self.args.output_dir, self.flexora_selection_given)
        if self.flexora_selection_given is not None:
            return SelectionRecord(**self._record_fields(self.flexora_selection_given))
        return self._search_and_select()

    def _search_and_select(self) -> SelectionRecord:
        options, args = self.flexora_args, self.args
        # The LoRA was initialised before the Trainer seeded anything: start the search from the seed.
        set_seed(args.seed)
        reinitialise_lora(self.model, self.flexora_blocks)
        plan = search_plan(self)
        train_loader, val_loader, _ = search_dataloaders(self, plan.samples)
        require_batches(train_loader, val_loader, args.dataloader_drop_last)
        plan = one_pass(plan, options, len(train_loader), args.gradient_accumulation_steps)
        device = next(p for p in self.model.parameters() if p.requires_grad).device
        with contextlib.ExitStack() as temporary:
            gates = temporary.enter_context(BlockGates(self.flexora_blocks, device=device))
            temporary.enter_context(search_checkpointing(self.model, args, options.hypergradient == "unrolled"))
            search = GateSearch(self, gates, options)
            temporary.enter_context(search.hypergradient.context(self.model))
            announce(plan, gates.blocks, options.search_budget)
            result = search.run(train_loader, val_loader, plan.inner_steps)
        if result.stopped_early and not result.trajectory:
            raise FloatingPointError(
                f"Flexora's search stopped at once ({result.stopped_early}): no gate update succeeded, so there is "
                "nothing to select from. Check the data (examples with no trainable tokens), the learning rates and "
                "the model's weights; nothing was written."
            )
        for buffer in getattr(self, "_metrics", {}).values():  # TRL's per-step metric buffers: a clean fine-tune log
            buffer.clear()
        selected = select_blocks(result.scores, options, result.count_scores)
        selected = broadcast_object_list([selected])[0] if args.world_size > 1 else selected
        split = separation(result.scores, result.score_stderr, selected)
        log_scores(options.selection_score, result, selected, split)
        return SelectionRecord.from_search(result, plan, split, **self._record_fields(selected))

    def _record_fields(self, selected: list[int]) -> dict:
        blocks = self.flexora_blocks
        return dict(selected_layers=sorted(selected), num_layers=blocks.num_blocks, candidate_layers=blocks.blocks,
                    layers_pattern=blocks.pattern, options=self.flexora_args.to_dict())

    def _apply_selection(self, record: SelectionRecord) -> None:
        before = self.flexora_lora_params_all_blocks
        set_seed(self.args.seed)  # the fine-tune starts from the same RNG state whether or not a search ran
        name, user = self.flexora_user_adapter
        lora_on_blocks(self.model, self.flexora_blocks, record.selected_layers, name, user,
                       warm_gates=record.gates if record.continues_search else None)
        after = count_trainable(self.model)
        if record.lora_params_all_blocks is None:  # a resumed run keeps the interrupted run's counts
            record.lora_params_all_blocks, record.lora_params_selected = before, after
        record.lora_params_fraction = round(record.lora_params_selected / record.lora_params_all_blocks, 4)
        self.flexora_record = record
        self._write_record(self.args.output_dir)
        if record.alpha and self.args.should_save:
            record.plot(self.args.output_dir)
        logger.info(
            "Flexora: fine-tuning LoRA on blocks %s of %d (%d of %d LoRA parameters, %.1f%%).",
            record.selected_layers, record.num_layers, after, before, 100 * record.lora_params_fraction,
        )

    def _write_record(self, directory: str) -> None:
        if self.flexora_record is not None and self.args.should_save:
            self.flexora_record.write(directory)

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
        if self.flexora_record is not None and self.is_world_process_zero():
            append_selection_section(self.args.output_dir, self.flexora_record)
