"""Hugging Face ``transformers`` models as AtMan subjects (the ``hf`` extra).

The explainer registers one attention function, ``"lmk_atman"``, in transformers' attention
interface (``AttentionInterface.register``) and switches the model to it for the duration of a pass
(``set_attn_implementation``), then back. The function sends every layer's attention through
``lmkernels.ops.attention`` with the suppression of the pass, which it reads from a context
variable set around the model call (so nothing is threaded through the model's signature):

- causal LMs (Llama, GPT-2, ... families: a ``*ForCausalLM`` / ``*LMHeadModel``): the clean pass
  records each layer's keys/values; perturbed passes feed only the suffix tokens with their
  ``position_ids`` and read the clean prefix as ``prefix_k`` / ``prefix_v``; logits come from the
  output embedding applied to the target rows of ``model.base_model``'s last hidden state (so
  models that post-process logits, with soft-capping or a logit scale, or whose LM head transforms
  the states before its output embedding, as BERT's and RoBERTa's do, are refused);
- encoders (BERT family, ``is_decoder`` false, no LM head): bidirectional attention, the output is
  the mean over positions of the last hidden state (sentence-transformers' mean pooling).

Sequences are single and unpadded, so transformers' attention masks are not needed and are ignored
(the model is asked for none); a causal layer's sliding window is applied by the kernel (an
encoder's two-sided one is refused); layers are
numbered in the order they run. Models whose attention does not go through the interface (Bloom,
GPT-Neo, DeBERTa, T5: ``_supports_attention_backend`` is False) or that change the attention in
ways the kernel does not (soft-capping, attention sinks, position biases, head masks, attending
both ways in a causal LM) are refused, as the explanation would silently be of another model; a
pass in which fewer layers than the model has called the function raises for the same reason. Passes run in eval mode (the
model's modes are restored afterwards): dropout would make every pass, clean or not, random.

A target given as text is tokenised together with the prompt, as the model reads them, and the
tokens after the prompt's are the target's: a SentencePiece tokenizer tokenising the target alone
would put a word-start marker before it. Where the prompt's tokens are not a prefix of the joint
tokens (the boundary falls inside a token) the target is tokenised alone.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import AttentionInterface, PreTrainedModel

from lmkernels.atman.models import Adapter, recorded_prefix
from lmkernels.atman.tokens import Tokens, hf_continuation, hf_tokens
from lmkernels.nn import KeySuppression, evaluating
from lmkernels.ops import attention

IMPLEMENTATION = "lmk_atman"


@dataclass
class _Pass:
    causal: bool
    suppression: KeySuppression
    prefix: list[tuple[Tensor, Tensor]] | None = None
    record: list[tuple[Tensor, Tensor]] | None = None
    layer: int = 0


_PASS: contextvars.ContextVar[_Pass | None] = contextvars.ContextVar("lmk_atman_pass", default=None)


# Arguments of transformers' attention functions that change the attention itself.
_UNSUPPORTED_ARGUMENTS = {
    "softcap": "soft-caps its attention logits",
    "s_aux": "adds attention sinks to the softmax",
    "sinks": "adds attention sinks to the softmax",
    "position_bias": "adds a position bias to the attention logits",
    "head_mask": "masks attention heads",
    "indices": "attends to a selection of keys",
    "block_indices": "attends to a selection of key blocks",
}


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
               **kwargs):
    run = _PASS.get()
    if run is None:
        raise RuntimeError(f"attn_implementation {IMPLEMENTATION!r} only runs inside lmkernels.atman explainers")
    for name, what in _UNSUPPORTED_ARGUMENTS.items():
        if kwargs.get(name) is not None:
            raise TypeError(f"model: {type(module).__name__} {what} ({name}), which lmkernels' attention kernel does "
                            "not do")
    if run.causal and kwargs.get("is_causal") is False:
        raise TypeError(f"model: {type(module).__name__} attends both ways (is_causal=False) in a causal LM, which "
                        "the explainer's causal passes would change")
    window = kwargs.get("sliding_window")
    if window is not None and window > 0 and not run.causal:
        raise TypeError(f"model: {type(module).__name__} is a bidirectional encoder with a sliding window, whose "
                        "two-sided window lmkernels' attention kernel does not do")
    layer, run.layer = run.layer, run.layer + 1
    if run.record is not None:
        run.record.append((key, value))
    prefix_k, prefix_v = run.prefix[layer] if run.prefix is not None else (None, None)
    active = run.suppression if run.suppression.acts_in(layer) else KeySuppression()
    out = attention(query, key, value, causal=run.causal, scale=scaling, key_bias=active.key_bias,
                    key_factor=active.key_factor, factor_min=active.factor_min, prefix_k=prefix_k, prefix_v=prefix_v,
                    window=window if window is not None and window > 0 else None)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(IMPLEMENTATION, _attention)


class _HFModel(Adapter):
    def __init__(self, model: PreTrainedModel, tokenizer):
        if tokenizer is not None and not getattr(tokenizer, "is_fast", False):
            raise TypeError("tokenizer: expected a Hugging Face fast tokenizer (character offsets are needed)")
        self.model = model
        self.tokenizer = tokenizer
        self._prompt: Tokens | None = None  # the last prompt, which a target's tokens continue
        config = model.config
        self.num_layers = config.num_hidden_layers
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.max_length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def tokens(self, text, name: str, is_prompt: bool) -> Tokens:
        tokens = super().tokens(text, name, is_prompt)
        if is_prompt:
            self._prompt = tokens
        return tokens

    def text_tokens(self, text: str, name: str, is_prompt: bool) -> Tokens:
        if self.tokenizer is None:
            raise TypeError(f"{name}: text needs the model's tokenizer (pass tokenizer=, or token ids)")
        if not is_prompt and self._prompt is not None and self._prompt.text is not None:
            tail = hf_continuation(self.tokenizer, self._prompt, text)
            if tail is not None:
                return tail
        return hf_tokens(self.tokenizer, text, add_special_tokens=is_prompt)

    def embeddings(self, ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(ids)

    def _run(self, run: _Pass, **inputs) -> Tensor:
        previous = self.model.config._attn_implementation
        token = _PASS.set(run)
        self.model.set_attn_implementation(IMPLEMENTATION)
        try:
            with evaluating(self.model):
                hidden = self.model.base_model(**inputs, use_cache=False).last_hidden_state
        finally:
            self.model.set_attn_implementation(previous)
            _PASS.reset(token)
        if run.layer != self.num_layers:
            raise TypeError(f"model: {run.layer} of {type(self.model).__name__}'s {self.num_layers} layers ran their "
                            "attention through transformers' attention interface; its explanation would be of "
                            "another model")
        return hidden


class HFCausalLM(_HFModel):
    causal = True

    def clean(self, ids: Tensor, rows: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        record: list[tuple[Tensor, Tensor]] = []
        hidden = self._run(_Pass(True, KeySuppression(), record=record), input_ids=ids[None],
                           position_ids=torch.arange(len(ids), device=ids.device)[None])
        return hidden[0, rows], record

    def perturbed(self, ids: Tensor, start: int, suppression: KeySuppression, rows: Tensor,
                  clean: list[tuple[Tensor, Tensor]] | None) -> Tensor:
        batch = suppression.batch_size
        prefix = recorded_prefix(clean, start)
        positions = torch.arange(start, len(ids), device=ids.device)
        hidden = self._run(_Pass(True, suppression, prefix=prefix), input_ids=ids[start:].expand(batch, -1),
                           position_ids=positions.expand(batch, -1))
        return hidden[:, rows - start]

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.get_output_embeddings()(hidden)


class HFEncoder(_HFModel):
    causal = False

    def pooled(self, ids: Tensor, suppression: KeySuppression) -> Tensor:
        """Mean-pooled last hidden states [B, dim] of ``ids`` [S] under ``suppression`` ([B, S] per key)."""
        hidden = self._run(_Pass(False, suppression), input_ids=ids.expand(suppression.batch_size, -1))
        return hidden.float().mean(dim=1)


def hf_adapter(model: PreTrainedModel, tokenizer) -> _HFModel:
    """``HFCausalLM`` for a model with an LM head that is a decoder, ``HFEncoder`` for a bidirectional encoder."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise TypeError(f"model: encoder-decoder models ({type(model).__name__}) are not supported")
    if not getattr(type(model), "_supports_attention_backend", False):
        raise TypeError(f"model: {type(model).__name__} does not run its attention through transformers' attention "
                        "interface, through which the explainer suppresses keys")
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise TypeError(f"model: {type(model).__name__} post-processes its logits ({name}), which the explainer's "
                            "logits leave out")
    head = model.get_output_embeddings()
    if head is not None and type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        # The logits must be the head applied to base_model's last hidden state: a model with any other
        # module holding weights beside the two (BERT's and Electra's prediction transforms) is another model.
        others = [name for name, child in model.named_children()
                  if child is not model.base_model and child is not head and any(True for _ in child.parameters())]
        if others or not any(child is head for child in model.children()):
            raise TypeError(f"model: {type(model).__name__}'s logits are not its output embedding of the last hidden "
                            "state (its LM head transforms the states first), which the explainer's logits assume")
        return HFCausalLM(model, tokenizer)
    causal_attention = any(getattr(module, "is_causal", False) is True for module in model.modules())
    if head is None and not causal_attention and not getattr(config, "is_decoder", False):
        return HFEncoder(model, tokenizer)
    raise TypeError(f"model: {type(model).__name__} is neither a causal LM (*ForCausalLM, *LMHeadModel) nor a "
                    "bare encoder (e.g. BertModel)")
