"""The search's data: the validation set of the outer steps, the subset of the inner steps and the plan sized on it,
drawn by index with the seed and loaded by the trainer's own dataloaders (its collator, packing and sampler)."""

from __future__ import annotations

import numpy as np
import torch

from .budget import SearchPlan, plan_search
from .temporary import swapped


def check_search_data(trainer) -> None:
    """Raise before any training on a missing, empty or too-small validation set, or no search example left."""
    validation_dataset(trainer)
    search_plan(trainer)


def validation_dataset(trainer):
    """The eval dataset under `search_validation='eval_dataset'`; None under `holdout` (drawn with the subsets)."""
    options, args = trainer.flexora_args, trainer.args
    if options.search_validation == "eval_dataset":
        dataset = trainer.eval_dataset
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
        size = dataset_length(dataset, "eval_dataset")
    else:
        train_size = dataset_length(trainer.train_dataset, "train_dataset")
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


def search_plan(trainer) -> SearchPlan:
    options = trainer.flexora_args
    held_out = options.search_holdout_samples if options.search_validation == "holdout" else 0
    train_size = dataset_length(trainer.train_dataset, "train_dataset")
    if train_size - held_out < 1:
        raise ValueError("The training set is empty: the search needs training examples.")
    validation = held_out or dataset_length(validation_dataset(trainer), "eval_dataset")
    return plan_search(options, trainer.args, trainer.flexora_planned_steps, train_size - held_out,
                       len(trainer.flexora_blocks.blocks), validation_samples=validation)


def search_dataloaders(trainer, samples: int | None = None):
    """The search subset's and the validation set's loaders, and the subset's size; the hold-out and the subset
    are disjoint draws of one permutation by the seed."""
    options = trainer.flexora_args
    order = np.random.default_rng(trainer.args.seed).permutation(dataset_length(trainer.train_dataset, "train_dataset"))
    if options.search_validation == "holdout":
        held_out = options.search_holdout_samples
        val_dataset = _subset(trainer.train_dataset, order[:held_out])
    else:
        held_out, val_dataset = 0, validation_dataset(trainer)
    samples = samples or search_plan(trainer).samples
    search_dataset = _subset(trainer.train_dataset, order[held_out : held_out + samples])
    with swapped(trainer, "train_dataset", search_dataset):
        train_loader = trainer.get_train_dataloader()
    return train_loader, trainer.get_eval_dataloader(val_dataset), samples


def require_batches(train_loader, val_loader, drop_last: bool) -> None:
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


def dataset_length(dataset, name: str) -> int:
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
