"""Model adapters: what the explainers need from a model, for lmkernels' own ``CausalLM``.

A causal adapter runs the clean pass once, keeping every layer's keys/values, and then perturbed
passes that recompute only the positions from ``start`` on: queries there attend to the clean keys
/ values before ``start`` (shared by the batch, ``prefix_k`` / ``prefix_v``) and to their own. In a
causal model suppressing keys >= ``start`` cannot change anything before ``start``, so this equals
the full recomputation exactly. Passes return final hidden states at the target rows only, which
``logits`` turns into logits (a few passes at a time, so that a batch never holds [B, T, V] at once).

An encoder adapter (bidirectional, see ``lmkernels.atman.hf``) returns mean-pooled embeddings of
whole perturbed passes; nothing can be reused there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmkernels.atman.tokens import Tokens, byte_tokens, from_ids
from lmkernels.nn import ByteTokenizer, CausalLM, KeySuppression, KVCache


class Adapter:
    """Base of the model adapters: ``causal`` says which explainer protocol the adapter speaks."""

    causal: bool

    def tokens(self, text, name: str, is_prompt: bool) -> Tokens:
        """``text`` as Tokens: Tokens pass through, token ids are checked, a str is tokenised."""
        if isinstance(text, Tokens):
            return text
        if not isinstance(text, str):
            return from_ids(text, name)
        return self.text_tokens(text, name, is_prompt)

    def text_tokens(self, text: str, name: str, is_prompt: bool) -> Tokens:
        raise NotImplementedError


class LMKernelsCausalLM(Adapter):
    """``lmkernels.nn.CausalLM``; text goes through ``tokenizer.encode`` (default: bytes, for V = 256).

    ``max_length`` bounds the explained sequence (RoPE itself has no limit; None: unbounded).
    """

    causal = True

    def __init__(self, model: CausalLM, tokenizer=None, max_length: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.num_layers = len(model.decoder.layers)
        self.vocab_size = model.vocab_size

    def text_tokens(self, text: str, name: str, is_prompt: bool) -> Tokens:
        if self.tokenizer is None:
            if self.vocab_size != ByteTokenizer.vocab_size:
                raise TypeError(f"{name}: text needs a tokenizer for a vocabulary of {self.vocab_size} "
                                "(pass tokenizer=, or token ids)")
            return byte_tokens(text)
        return from_ids(self.tokenizer.encode(text), name)

    @property
    def device(self) -> torch.device:
        return self.model.embedding.weight.device

    def embeddings(self, ids: Tensor) -> Tensor:
        return self.model.embedding(ids)

    def clean(self, ids: Tensor, rows: Tensor) -> tuple[Tensor, KVCache]:
        """Final hidden states [T, dim] at ``rows`` of the unperturbed pass over ``ids`` [S], and its keys/values."""
        cache = self.model.new_cache()
        hidden = self._decode(ids[None], 0, KeySuppression(), None, cache)
        return hidden[0, rows], cache

    def perturbed(self, ids: Tensor, start: int, suppression: KeySuppression, rows: Tensor,
                  clean: KVCache | None) -> Tensor:
        """Final hidden states [B, T, dim] at ``rows`` with ``suppression`` ([B, S] per key), recomputing
        ``start``..S-1."""
        batch = (suppression.key_bias if suppression.key_bias is not None else suppression.key_factor).shape[0]
        prefix = clean.prefix(start) if start > 0 else None
        # The rows are the sequence's last positions (the target's predictions): the last layer computes only them.
        trailing = torch.equal(rows, torch.arange(len(ids) - len(rows), len(ids), device=rows.device))
        queries = len(rows) if trailing else None
        hidden = self._decode(ids[start:].expand(batch, -1), start, suppression, prefix, None, queries)
        return hidden if queries is not None else hidden[:, rows - start]

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.head(hidden)

    def _decode(self, tokens: Tensor, start: int, suppression: KeySuppression, prefix: KVCache | None,
                cache: KVCache | None, queries: int | None = None) -> Tensor:
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device).expand_as(tokens)
        return self.model.decoder(self.model.embedding(tokens), positions, None, cache, suppression, prefix,
                                  queries)


def adapter_for(model, tokenizer=None):
    """The adapter of ``model``: an adapter itself, a ``CausalLM``, or a Hugging Face causal LM or encoder."""
    if isinstance(model, Adapter):
        return model
    if isinstance(model, CausalLM):
        return LMKernelsCausalLM(model, tokenizer)
    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is not None and isinstance(model, transformers.PreTrainedModel):
        from lmkernels.atman.hf import hf_adapter

        return hf_adapter(model, tokenizer)
    raise TypeError(f"model: expected an lmkernels.nn.CausalLM or a Hugging Face transformers causal LM or "
                    f"encoder, got {type(model).__name__}")
