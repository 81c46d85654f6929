"""One calling convention for the two kinds of causal LM the pipeline accepts.

``lmkernels.nn.CausalLM`` takes an explicit attention mask; Hugging Face causal LMs
(``transformers.PreTrainedModel`` with a ``config``) take a 2-D padding mask and build theirs.
Batches are left-padded: row ``b`` of ``tokens`` [B, S] holds its real tokens where ``real[b]`` is
True, all at the end, and positions count real tokens only.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor

from lmkernels.nn import CausalLM


def is_huggingface(model: torch.nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model.config, "vocab_size") and not isinstance(model, CausalLM)


def vocab_size(model: torch.nn.Module) -> int:
    if isinstance(model, CausalLM):
        return model.vocab_size
    if is_huggingface(model):
        return int(model.config.vocab_size)
    raise TypeError(f"model: expected an lmkernels.nn.CausalLM or a Hugging Face causal LM, "
                    f"got {type(model).__name__}")


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def new_cache(model: torch.nn.Module):
    if isinstance(model, CausalLM):
        return model.new_cache()
    from transformers import DynamicCache

    return DynamicCache()


def positions_of(real: Tensor) -> Tensor:
    """Position of every entry of a left-padded batch: 0 for the first real token (and the padding)."""
    return (real.long().cumsum(-1) - 1).clamp(min=0)


@functools.cache
def _cache_argument(model_class: type) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def logits_of(model: torch.nn.Module, tokens: Tensor, real: Tensor, cache=None) -> Tensor:
    """Logits [B, S, V] of the new ``tokens`` [B, S] after the ``cache``'s positions.

    ``real`` [B, cached + S] marks the real tokens of the whole sequence so far (False = padding).
    """
    past = real.shape[1] - tokens.shape[1]
    positions = positions_of(real)[:, past:]
    if is_huggingface(model):
        output = model(input_ids=tokens, attention_mask=real.long(), position_ids=positions,
                       use_cache=cache is not None, **{_cache_argument(type(model)): cache})
        return output.logits
    keys = torch.arange(real.shape[1], device=tokens.device)
    queries = keys[past:, None]
    # Padding never serves as a key, except to itself: a query with no key at all would give NaN.
    allowed = (keys <= queries) & (real[:, None, :] | (keys == queries))
    return model(tokens, positions, cache, allowed)
