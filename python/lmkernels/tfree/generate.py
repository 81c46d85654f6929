"""Greedy word-by-word generation with a T-FREE model, a dictionary and a KV cache.

The prompt is encoded (not stripped) and run once; then, at each step, the last position's logits
are scored by the dictionary decoder and by the prompt's words that it lacks (a small second
dictionary for this call, as the official pipeline adds them per request: the caller's decoder,
and its copy on the GPU, stay as they are), the best word of both is appended,
re-encoded alone and run at the next position with the cache. Generation stops at
``<|endoftext|>`` or after ``max_words``; the text is the exact inverse split of the words.
"""

from __future__ import annotations

import torch

from lmkernels.tfree.decoding import Decoder
from lmkernels.tfree.model import TFreeLM
from lmkernels.tfree.tokenizer import Tokenizer

END_OF_TEXT = "<|endoftext|>"


@torch.no_grad()
def generate(model: TFreeLM, tokenizer: Tokenizer, decoder: Decoder, prompt: str, max_words: int = 32,
             ) -> str:
    """The prompt's continuation as text (the prompt itself excluded; lowercased if the tokenizer lowercases)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt: expected str, got {type(prompt).__name__}")
    if max_words < 0:
        raise ValueError(f"max_words: expected >= 0, got {max_words}")
    _check_same_patterns(model, tokenizer, decoder)
    device = model.head.weight.device
    prompt_words = tokenizer.split(prompt)
    extra = Decoder(tokenizer, [word for word in prompt_words if word not in decoder], decoder.edge_weight,
                    decoder.variant)
    encoding = tokenizer.encode(prompt)
    if encoding.num_words == 0:
        raise ValueError("prompt: expected at least one word")
    cache = model.decoder.new_cache()
    positions = torch.arange(encoding.num_words, device=device)[None]
    rows, offsets = encoding.rows.to(device), encoding.row_offsets.to(device)
    words: list[str] = []
    for step in range(max_words):
        logits = model(rows, offsets, positions, cache=cache)[0, -1:]
        word = _best_word(decoder, extra, logits)
        if word == END_OF_TEXT:
            break
        words.append(word)
        if step + 1 == max_words:
            break
        next_word = tokenizer.encode_words([word])
        rows, offsets = next_word.rows.to(device), next_word.row_offsets.to(device)
        positions = torch.tensor([[cache.length]], device=device)
    # Joined with the prompt, so that the whitespace between the two follows the inverse rules.
    return tokenizer.join(prompt_words + words)[len(tokenizer.join(prompt_words)):]


def _check_same_patterns(model: TFreeLM, tokenizer: Tokenizer, decoder: Decoder) -> None:
    """The model was trained on, and the decoder built with, the tokenizer's patterns: a mismatch would
    pass unnoticed (any m fits the embedding, and a wider head only shifts the scores)."""
    expected = (tokenizer.vocab_size, tokenizer.m, tokenizer.patterns.k_lowercase)
    config = model.config
    if (config.vocab_size, config.m, config.k_lowercase) != expected:
        raise ValueError(f"model, tokenizer: the model's config has (vocab_size, m, k_lowercase) = "
                         f"{(config.vocab_size, config.m, config.k_lowercase)}, the tokenizer {expected}")
    def words_patterns(t: Tokenizer):
        return t.vocab_size, t.m, t.patterns.k_lowercase, t.lowercase, t.entire_words

    if words_patterns(decoder.tokenizer) != words_patterns(tokenizer):
        raise ValueError(f"decoder, tokenizer: the decoder's tokenizer has (vocab_size, m, k_lowercase, lowercase, "
                         f"entire_words) = {words_patterns(decoder.tokenizer)}, the tokenizer "
                         f"{words_patterns(tokenizer)}")


def _best_word(decoder: Decoder, extra: Decoder, logits: torch.Tensor) -> str:
    """The best word of ``decoder`` followed by ``extra`` (ties to the first), for one row of logits."""
    scores = decoder.scores(logits)
    if len(extra):
        scores = torch.cat([scores, extra.scores(logits)], dim=1)
    best = int(scores[0].argmax())  # the first of equal maxima, unlike topk
    return decoder.words[best] if best < len(decoder) else extra.words[best - len(decoder)]
