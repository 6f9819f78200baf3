"""Temporary changes as context managers, so a search or a fine-tune can stack them in one `ExitStack` and every one
of them is undone however the block ends."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def swapped(owner, name: str, value):
    """`owner.name` is `value` within the block and what it was before after it (a dataset, a step counter)."""
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield value
    finally:
        setattr(owner, name, saved)


@contextlib.contextmanager
def search_checkpointing(model, args, unrolled: bool):
    """The Trainer turns gradient checkpointing on only inside `train()`; the search needs it as well, then the
    user's own settings for the fine-tune. Reentrant checkpointing has no second-order graph, so the unrolled
    hypergradient runs the search non-reentrant."""
    if not args.gradient_checkpointing:
        yield
        return
    kwargs = dict(args.gradient_checkpointing_kwargs or {})
    if unrolled:
        kwargs["use_reentrant"] = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        yield
    finally:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
