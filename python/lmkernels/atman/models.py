"""Model adapters: what the explainers need from a model, for lmkernels' own models.

A causal adapter runs the clean pass once, keeping every layer's keys/values, and then perturbed
passes that recompute only the positions from ``start`` on: queries there attend to the clean keys
/ values before ``start`` (shared by the batch, ``prefix_k`` / ``prefix_v``) and to their own. In a
causal model suppressing keys >= ``start`` cannot change anything before ``start``, so this equals
the full recomputation exactly. Passes return final hidden states at the target rows only, which
``logits`` turns into logits (a few passes at a time, so that a batch never holds [B, T, V] at once).

lmkernels' own models:

- ``lmkernels.nn.CausalLM`` (``LMKernelsCausalLM``) and ``lmkernels.tfree.TFreeLM``
  (``TFreeCausalLM``) run ``lmkernels.nn.Decoder``, whose attention takes AtMan's suppression and
  a shared prefix itself;
- ``lmkernels.umup.TransformerDecoder`` (``lmkernels.atman.umup.UMuPCausalLM``) gets them by
  swapping its attention modules' forward for the duration of a pass (see that module);
- ``lmkernels.hat.HATModel`` is not supported (``adapter_for`` says why).

An encoder adapter (bidirectional, see ``lmkernels.atman.hf``) returns mean-pooled embeddings of
whole perturbed passes; nothing can be reused there.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import Tensor

from lmkernels.atman.tokens import Tokens, byte_tokens, from_ids
from lmkernels.nn import ByteTokenizer, CausalLM, Decoder, KeySuppression, KVCache


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


def encoded_tokens(tokenizer, vocab_size: int, text: str, name: str) -> Tokens:
    """``text`` as bytes without a tokenizer or with ``lmkernels.nn.ByteTokenizer`` (vocabulary of 256
    only), keeping each byte's character span; else through ``tokenizer.encode``, ids only."""
    if tokenizer is None or isinstance(tokenizer, ByteTokenizer):
        if vocab_size != ByteTokenizer.vocab_size:
            raise TypeError(f"{name}: text needs a tokenizer for a vocabulary of {vocab_size} "
                            "(pass tokenizer=, or token ids)")
        return byte_tokens(text)
    return from_ids(tokenizer.encode(text), name)


def recorded_prefix(record: list[tuple[Tensor, Tensor]], start: int) -> list[tuple[Tensor, Tensor]] | None:
    """Each layer's recorded keys and values [B, H, S, D] before position ``start`` (None when it is 0)."""
    return [(k[:, :, :start], v[:, :, :start]) for k, v in record] if start > 0 else None


class TokenIdModel(Adapter):
    """A model that embeds token ids with ``self.model.embedding``; text goes through ``self.tokenizer.encode``
    (bytes without one, for a vocabulary of 256)."""

    tokenizer = None
    vocab_size: int

    def text_tokens(self, text: str, name: str, is_prompt: bool) -> Tokens:
        return encoded_tokens(self.tokenizer, self.vocab_size, text, name)

    @property
    def device(self) -> torch.device:
        return self.model.embedding.weight.device

    def embeddings(self, ids: Tensor) -> Tensor:
        return self.model.embedding(ids)


class _DecoderLM(Adapter):
    """A causal model built on ``lmkernels.nn.Decoder``: input embeddings [S, dim] from ``_inputs``, then the
    decoder, whose attention applies the suppression and reads the shared clean prefix itself."""

    causal = True
    decoder: Decoder

    def _inputs(self, ids: Tensor) -> Tensor:
        raise NotImplementedError

    def clean(self, ids: Tensor, rows: Tensor) -> tuple[Tensor, KVCache]:
        """Final hidden states [T, dim] at ``rows`` of the unperturbed pass over ``ids`` [S], and its keys/values."""
        cache = self.decoder.new_cache()
        hidden = self._decode(self._inputs(ids)[None], 0, KeySuppression(), None, cache)
        return hidden[0, rows], cache

    def perturbed(self, ids: Tensor, start: int, suppression: KeySuppression, rows: Tensor,
                  clean: KVCache | None) -> Tensor:
        """Final hidden states [B, T, dim] at ``rows`` with ``suppression`` ([B, S] per key), recomputing
        ``start``..S-1."""
        batch = suppression.batch_size
        prefix = clean.prefix(start) if start > 0 else None
        # The rows are the sequence's last positions (the target's predictions): the last layer computes only them.
        trailing = torch.equal(rows, torch.arange(len(ids) - len(rows), len(ids), device=rows.device))
        queries = len(rows) if trailing else None
        inputs = self._inputs(ids[start:])
        hidden = self._decode(inputs.expand(batch, *inputs.shape), start, suppression, prefix, None, queries)
        return hidden if queries is not None else hidden[:, rows - start]

    def _decode(self, x: Tensor, start: int, suppression: KeySuppression, prefix: KVCache | None,
                cache: KVCache | None, queries: int | None = None) -> Tensor:
        positions = torch.arange(start, start + x.shape[1], device=x.device).expand(x.shape[0], -1)
        return self.decoder(x, positions, None, cache, suppression, prefix, queries)


class LMKernelsCausalLM(_DecoderLM, TokenIdModel):
    """``lmkernels.nn.CausalLM``; text goes through ``tokenizer.encode`` (default: bytes, for V = 256).

    ``max_length`` bounds the explained sequence (RoPE itself has no limit; None: unbounded).
    """

    def __init__(self, model: CausalLM, tokenizer=None, max_length: int | None = None):
        self.model = model
        self.decoder = model.decoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.num_layers = len(model.decoder.layers)
        self.vocab_size = model.vocab_size

    def _inputs(self, ids: Tensor) -> Tensor:
        return self.model.embedding(ids)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.head(hidden)


class TFreeCausalLM(_DecoderLM):
    """``lmkernels.tfree.TFreeLM``: its tokens are words, and a target word's probability is dictionary decoding's.

    T-FREE has no token vocabulary: its head gives a logit per hash index, and ``tfree.generate`` picks
    the next word by ``softmax`` over a dictionary's word scores (``lmkernels.tfree.Decoder``). That
    softmax is the distribution explained here: CE_t = -log softmax(scores)[y_t], with the dictionary's
    ``edge_weight`` and ``variant``. Token ids index ``self.dictionary.words``; text is split into the
    model's words (``Tokenizer.split``) and each word spans its characters of ``join(words)``, so word,
    sentence and paragraph units work (a whitespace marker such as ``<|ws|>`` spans its whitespace).
    A target's words are those the split of prompt + target has after the prompt's words (" Paris"
    after "is" is the word "Paris", not "<|ws|>" "Paris"); where the boundary falls inside a word, the
    target is split on its own.

    The adapter decodes with its own copy of ``dictionary`` (the caller's is left as it is) and adds
    the words of the prompt and target to that copy, as the official pipeline adds the prompt's words
    before decoding: a target word must be in the dictionary to have a probability. Each prompt starts
    from ``dictionary`` again, so an adapter that serves many explanations does not grow with them.
    """

    def __init__(self, model, dictionary, max_length: int | None = None):
        from lmkernels.tfree import Decoder as Dictionary
        from lmkernels.tfree import TFreeLM

        if not isinstance(model, TFreeLM):
            raise TypeError(f"model: expected an lmkernels.tfree.TFreeLM, got {type(model).__name__}")
        if not isinstance(dictionary, Dictionary):
            raise TypeError("tokenizer: a T-FREE model scores its target words by dictionary decoding; pass "
                            "tokenizer=lmkernels.tfree.Decoder(tokenizer, words) (e.g. words = "
                            f"build_dictionary(tokenizer, texts)), got {type(dictionary).__name__}")
        tokenizer, config = dictionary.tokenizer, model.config
        ours = (tokenizer.vocab_size, tokenizer.m, tokenizer.patterns.k_lowercase)
        if ours != (config.vocab_size, config.m, config.k_lowercase):
            raise ValueError(f"tokenizer: the dictionary's tokenizer has (vocab_size, m, k_lowercase) = {ours}, "
                             f"the model {(config.vocab_size, config.m, config.k_lowercase)}")
        self.model = model
        self.decoder = model.decoder
        self.tokenizer = tokenizer
        self._base = dictionary
        self.dictionary = copy.copy(dictionary)  # grows with one explanation's words; the caller's stays as it is
        self.max_length = max_length
        self.num_layers = len(model.decoder.layers)
        self._prompt: list[str] | None = None  # the words of the last prompt, which a target's split continues

    @property
    def vocab_size(self) -> int:
        """The dictionary's size: token ids are its word indices."""
        return len(self.dictionary)

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    def tokens(self, text, name: str, is_prompt: bool) -> Tokens:
        if is_prompt:  # a new explanation: the last one's words go
            self.dictionary = copy.copy(self._base)
        tokens = super().tokens(text, name, is_prompt)
        words = [self.dictionary.words[i] for i in tokens.ids] if all(
            0 <= i < len(self.dictionary) for i in tokens.ids) else None
        if tokens.text is None and words is not None:  # token ids: their words as the text, a target's after
            tokens = self._words(words, [] if is_prompt else self._prompt or [])  # the prompt's
        if is_prompt:
            self._prompt = words
        return tokens

    def text_tokens(self, text: str, name: str, is_prompt: bool) -> Tokens:
        """The words of ``text`` (lowercased if the tokenizer lowercases). A target's words are those that the
        split of prompt + target has after the prompt's words, when it keeps those: "it" + " slept" gives
        "slept", with the space that the join puts before it, not "<|ws|>" "slept"."""
        prompt = [] if is_prompt else self._prompt or []
        words = self.tokenizer.split(text)
        if prompt:
            joint = self.tokenizer.split(self.tokenizer.join(prompt) + text)
            if joint[:len(prompt)] == prompt:
                words = joint[len(prompt):]
            else:  # the boundary falls inside a word ("Hel" + "lo"): the target's own words
                prompt = []
        self.dictionary.add(words)
        return self._words(words, prompt)

    def _words(self, words: list[str], before: list[str] | tuple = ()) -> Tokens:
        """Tokens of ``words`` over their text, the join of ``before + words`` after the join of ``before``: a word
        spans what it adds to the join of its predecessors (the whitespace the join puts between two words
        belongs to the second)."""
        join = self.tokenizer.join
        context = list(before) + list(words)
        # A word's contribution depends on its predecessor only; checked against the whole text's length.
        added = [len(join(context[:1]))] + [len(join(context[i - 1:i + 1])) - len(join(context[i - 1:i]))
                                              for i in range(1, len(context))]
        ends = list(itertools.accumulate(added))
        full = join(context)
        if ends and ends[-1] != len(full):
            ends = [len(join(context[:i + 1])) for i in range(len(context))]
        offset = ends[len(before) - 1] if before else 0
        ends = [end - offset for end in ends[len(before):]]
        spans = tuple(zip([0] + ends[:-1], ends))
        return Tokens(tuple(self.dictionary.index[word] for word in words), full[offset:], spans,
                      (False,) * len(words))

    def embeddings(self, ids: Tensor) -> Tensor:
        return self._inputs(ids)

    def _inputs(self, ids: Tensor) -> Tensor:
        """The words' T-FREE embeddings [S, dim]: the sum of their trigram patterns' rows."""
        encoding = self.tokenizer.encode_words([self.dictionary.words[i] for i in ids.tolist()])
        return self.model.embedding(encoding.rows.to(ids.device), encoding.row_offsets.to(ids.device))

    def logits(self, hidden: Tensor) -> Tensor:
        """The dictionary's word scores [..., W] (fp32) of final hidden states [..., dim]."""
        logits = self.model.head(hidden)
        return self.dictionary.scores(logits.reshape(-1, logits.shape[-1])).view(*hidden.shape[:-1], -1)


SUPPORTED = ("lmkernels.nn.CausalLM, lmkernels.tfree.TFreeLM, lmkernels.umup.TransformerDecoder, or a Hugging "
             "Face transformers causal LM or encoder")


def _unwrapped(model):
    """The module inside torch.compile's, DistributedDataParallel's and DataParallel's wrappers."""
    from torch._dynamo.eval_frame import OptimizedModule

    while True:
        if isinstance(model, OptimizedModule):
            model = model._orig_mod
        elif isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        else:
            return model


def adapter_for(model, tokenizer=None):
    """The adapter of ``model``, which is one of:

    - an ``Adapter`` itself (returned as it is);
    - ``lmkernels.nn.CausalLM`` (``LMKernelsCausalLM``; ``tokenizer``: anything with ``encode``, or
      None for bytes at V = 256);
    - ``lmkernels.tfree.TFreeLM`` (``TFreeCausalLM``; units are its words; ``tokenizer`` must be a
      ``lmkernels.tfree.Decoder``, the dictionary whose decoding probabilities are explained);
    - ``lmkernels.umup.TransformerDecoder`` (``lmkernels.atman.umup.UMuPCausalLM``; ``tokenizer`` as
      for ``CausalLM``);
    - a Hugging Face causal LM or encoder (``lmkernels.atman.hf``, with its fast tokenizer).

    A model inside ``torch.compile``'s or ``DistributedDataParallel``'s wrapper is explained as the model
    itself (run eagerly: the suppression replaces its attention for each pass).
    ``lmkernels.hat.HATModel`` raises ``TypeError`` (not supported, see the message), as does anything else.
    """
    if isinstance(model, Adapter):
        return model
    model = _unwrapped(model)
    if isinstance(model, CausalLM):
        return LMKernelsCausalLM(model, tokenizer)
    from lmkernels.hat import HATModel
    from lmkernels.tfree import TFreeLM
    from lmkernels.umup import TransformerDecoder

    if isinstance(model, TFreeLM):
        return TFreeCausalLM(model, tokenizer)
    if isinstance(model, TransformerDecoder):
        from lmkernels.atman.umup import UMuPCausalLM

        return UMuPCausalLM(model, tokenizer)
    if isinstance(model, HATModel):
        raise TypeError("model: lmkernels.hat.HATModel is not supported: HAT reads its input at three levels (a "
                        "sliding-window byte encoder, a backbone over words, a byte decoder that attends to the "
                        "bytes and to the words' backbone states), so suppressing a unit means suppressing its "
                        "bytes and its word in all of them, and its packed (varlen) byte attention and word "
                        "connectors take no per-key suppression; suppressing the word in the backbone alone "
                        "would leave the byte-level paths to the same text open. Supported: " + SUPPORTED)
    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is not None and isinstance(model, transformers.PreTrainedModel):
        from lmkernels.atman.hf import hf_adapter

        return hf_adapter(model, tokenizer)
    raise TypeError(f"model: expected {SUPPORTED}, got {type(model).__name__}")
