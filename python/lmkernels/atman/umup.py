"""``lmkernels.umup.TransformerDecoder`` as an AtMan subject (``UMuPCausalLM``).

The u-muP decoder's attention (``MHSA``: fused ``linear_qkv``, ``U.scaled_dot_product_attention``,
``linear_o``) takes no suppression and no prefix, so for the duration of each pass the adapter
shadows every ``MHSA`` module's ``forward`` with an instance attribute that computes the same
thing through ``lmkernels.ops.attention``, then removes it (also when the pass raises)::

    O = softmax(attn_mult q k^T / d_head + causal mask, suppressed) v * S,
    S = sqrt(1 - p) / logint(1 / (1 + 4 d_head / attn_mult^2), sqrt(ln T / T), 1)

with T the number of keys the sequence has (prefix included: a suffix pass scales as the full one)
and p the module's ``dropout_p``: the unit-scaled output scale of ``U.scaled_dot_product_attention``,
without its dropout, i.e. the expected output. Everything else (the unit-scaled linears, FP8 or bf16
included, norms and residual rules) is the model's own code. Passes run in eval mode (no residual
dropout); every module's training flag is restored afterwards.

The clean pass records each layer's keys/values; perturbed passes feed only the positions from
``start`` on (the model has no positional encoding) and read the clean keys/values before it as the
shared prefix. Logits are ``loss_mult`` times the readout's: the distribution the model's loss
(``U.cross_entropy(..., mult=loss_mult)``) trains.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from torch import Tensor

from lmkernels.atman.models import TokenIdModel, recorded_prefix
from lmkernels.nn import KeySuppression, evaluating
from lmkernels.ops import attention
from lmkernels.umup import MHSA, TransformerDecoder
from lmkernels.umup.activations import attention_output_scale

_ABSENT = object()


@dataclass
class _Pass:
    suppression: KeySuppression
    prefix: list[tuple[Tensor, Tensor]] | None = None
    record: list[tuple[Tensor, Tensor] | None] | None = None


def _suppressed_mhsa(module: MHSA, layer: int, run: _Pass, input: Tensor) -> Tensor:
    """``MHSA.forward`` with the pass's suppression (in its layers) and shared prefix."""
    q, k, v = module.project_qkv(input)
    seq, head_dim = q.shape[2], q.shape[3]
    if run.record is not None:
        run.record[layer] = (k, v)
    prefix_k, prefix_v = run.prefix[layer] if run.prefix is not None else (None, None)
    keys = seq + (0 if prefix_k is None else prefix_k.shape[2])
    active = run.suppression if run.suppression.acts_in(layer) else KeySuppression()
    out = attention(q, k, v, causal=True, scale=module.mult / head_dim, key_bias=active.key_bias,
                    key_factor=active.key_factor, factor_min=active.factor_min, prefix_k=prefix_k, prefix_v=prefix_v)
    out = out * attention_output_scale(keys, head_dim, module.mult, module.dropout_p, is_causal=True)
    return module.project_output(out)


@contextlib.contextmanager
def suppressed_attention(model: TransformerDecoder, run: _Pass):
    """``model`` in eval mode with every ``MHSA`` running ``_suppressed_mhsa`` for ``run``; restored on exit."""
    shadowed = []
    try:
        with evaluating(model):
            for layer, block in enumerate(model.layers):
                module = block.mhsa
                shadowed.append((module, vars(module).get("forward", _ABSENT)))
                module.forward = lambda input, module=module, layer=layer: _suppressed_mhsa(module, layer, run, input)
            yield
    finally:
        for module, previous in shadowed:
            if previous is _ABSENT:
                del module.forward
            else:
                module.forward = previous


class UMuPCausalLM(TokenIdModel):
    """``lmkernels.umup.TransformerDecoder``: units are its tokens; text goes through ``tokenizer.encode``
    (default: bytes, for V = 256). ``max_length`` bounds the explained sequence (None: unbounded; the
    model has no positional encoding)."""

    causal = True

    def __init__(self, model: TransformerDecoder, tokenizer=None, max_length: int | None = None):
        if not isinstance(model, TransformerDecoder):
            raise TypeError(f"model: expected an lmkernels.umup.TransformerDecoder, got {type(model).__name__}")
        if not all(isinstance(block.mhsa, MHSA) and block.mhsa.is_causal for block in model.layers):
            raise TypeError("model: expected causal MHSA attention in every layer")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.num_layers = len(model.layers)
        self.vocab_size = model.embedding.num_embeddings

    def clean(self, ids: Tensor, rows: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Final hidden states [T, dim] at ``rows`` of the unperturbed pass over ``ids`` [S], and its keys/values."""
        record: list[tuple[Tensor, Tensor] | None] = [None] * self.num_layers
        hidden = self._run(ids[None], _Pass(KeySuppression(), record=record))
        return hidden[0, rows], record

    def perturbed(self, ids: Tensor, start: int, suppression: KeySuppression, rows: Tensor,
                  clean: list[tuple[Tensor, Tensor]] | None) -> Tensor:
        """Final hidden states [B, T, dim] at ``rows`` with ``suppression`` ([B, S] per key), recomputing
        ``start``..S-1."""
        batch = suppression.batch_size
        prefix = recorded_prefix(clean, start)
        hidden = self._run(ids[start:].expand(batch, -1), _Pass(suppression, prefix=prefix))
        return hidden[:, rows - start]

    def logits(self, hidden: Tensor) -> Tensor:
        logits = self.model.projection(hidden)
        return logits if self.model.loss_mult == 1 else logits * self.model.loss_mult

    def _run(self, tokens: Tensor, run: _Pass) -> Tensor:
        model = self.model
        with suppressed_attention(model, run):
            return model.final_norm(model.layers(model.embedding(tokens)))
