"""``evaluating``: modules in eval mode for a block, every submodule's own mode restored afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def evaluating(*modules: torch.nn.Module | None) -> Iterator[None]:
    """Every module (None skipped) in eval mode inside the block; on exit each submodule gets back its
    own ``training`` flag (``model.train(was_training)`` would set them all alike)."""
    modes = [(sub, sub.training) for module in modules if module is not None for sub in module.modules()]
    try:
        for module in modules:
            if module is not None:
                module.eval()
        yield
    finally:
        for sub, training in modes:
            sub.training = training
