"""Recovery training between sparsification steps, with the pruned weights held at exactly zero.

``sparsify(..., recover=r)`` calls ``r(model, masks)`` after every step's pruning (the last step
included, so the model it returns has recovered too). ``masks`` maps each component's canonical
name to a bool tensor of the weight's shape, True where the weight is kept. ``r`` may be any
training loop: one that calls ``apply_masks(model, masks)`` after each optimiser step keeps the
pruned weights at zero all along; afterwards ``sparsify`` applies the masks once more, so the
sparsity the step reached holds whatever ``r`` did.

``RecoveryTraining(stream, steps)`` is such a loop for ``lmkernels.nn.CausalLM`` models: every call
trains ``steps`` AdamW steps (warmup, cosine decay; ``lmkernels.dtm.train.train_steps``) of
next-token cross-entropy on random windows of the token ``stream``, applying the masks after
every optimiser step. Re-zeroing after the step rather than masking the gradients is what keeps
the zeros exact: AdamW's weight decay and moment estimates move a weight whose gradient is zero.
With ``teacher=`` (the dense model, a copy that pruning does not touch) it distils instead: the
loss is KL(teacher || model) of the next-token distributions on the same windows, so recovery pulls
the pruned model back toward the model its FDT is measured against, rather than toward the corpus.
It does not hold a model still, though: AdamW's weight decay and its normalised steps on the
rounding-level differences between the training pass and the teacher's move even an unpruned copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial

import torch
from torch import Tensor

from lmkernels._checks import check_int
from lmkernels.dtm.components import select
from lmkernels.dtm.train import check_stream, train_steps
from lmkernels.nn import CausalLM, evaluating


def keep_masks(model: torch.nn.Module, components: Iterable[str] | str | None = None) -> dict[str, Tensor]:
    """Per component (all for None), a bool tensor that is True where its weight is not zero."""
    return {name: weight.detach() != 0 for name, weight in select(model, components).items()}


@torch.no_grad()
def apply_masks(model: torch.nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Zero every component weight where its mask is False (in place)."""
    weights = select(model, list(masks))
    for name, keep in masks.items():
        if not isinstance(keep, Tensor) or keep.dtype != torch.bool or keep.shape != weights[name].shape:
            raise ValueError(f"masks: expected a bool tensor of shape {list(weights[name].shape)} for {name}, got "
                             f"{keep.dtype if isinstance(keep, Tensor) else type(keep).__name__}"
                             f"{f' of shape {list(keep.shape)}' if isinstance(keep, Tensor) else ''}")
        weights[name].masked_fill_(~keep.to(weights[name].device), 0)


class RecoveryTraining:
    """A ``recover`` for ``sparsify``: ``steps`` masked training steps on ``stream`` per call.

    Draws its windows from one generator seeded with ``seed``, so a sequence of calls is
    reproducible. ``losses`` holds the training losses of every call, one list per call.
    """

    def __init__(self, stream: Tensor, steps: int, seq_len: int = 64, batch_size: int = 16,
                 learning_rate: float = 1e-3, warmup: int = 10, seed: int = 0, progress: bool = False,
                 teacher: CausalLM | None = None):
        for name, value in (("steps", steps), ("seq_len", seq_len), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        check_stream(stream, seq_len)
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
            raise TypeError(f"learning_rate: expected a number, got {type(learning_rate).__name__}")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate: expected > 0, got {learning_rate!r}")
        check_int(warmup, "warmup", 0)
        if teacher is not None and not isinstance(teacher, CausalLM):
            raise TypeError(f"teacher: expected an lmkernels.nn.CausalLM or None, got {type(teacher).__name__}")
        self.teacher = teacher
        self.stream, self.steps, self.seq_len, self.batch_size = stream, steps, seq_len, batch_size
        self.learning_rate, self.warmup, self.progress = learning_rate, warmup, progress
        self.generator = torch.Generator().manual_seed(seed)
        self.losses: list[list[float]] = []

    def __call__(self, model: torch.nn.Module, masks: Mapping[str, Tensor]) -> None:
        if not isinstance(model, CausalLM):
            raise TypeError(f"model: RecoveryTraining trains lmkernels.nn.CausalLM models, got {type(model).__name__}; "
                            f"pass your own training loop as recover= for other models")
        if int(self.stream.max()) >= model.vocab_size or int(self.stream.min()) < 0:
            raise ValueError(f"stream: token ids must lie in [0, {model.vocab_size}) (the model's vocabulary)")
        if self.teacher is not None:
            if self.teacher is model:
                raise ValueError("teacher: expected a separate copy of the dense model, got the model being pruned")
            if self.teacher.vocab_size != model.vocab_size:
                raise ValueError(f"teacher: expected the model's vocabulary of {model.vocab_size}, "
                                 f"got {self.teacher.vocab_size}")
        was_training = model.training
        model.train()
        try:
            with torch.enable_grad(), evaluating(self.teacher):
                self.losses.append(train_steps(
                    model, self.stream, self.steps, self.seq_len, self.batch_size, self.learning_rate, self.warmup,
                    self.generator, after_step=partial(apply_masks, model, masks), progress=self.progress,
                    label=f"recovery {len(self.losses) + 1} ", teacher=self.teacher))
        finally:
            model.train(was_training)
