"""``Tokens``: a tokenised text with each token's character span, the common input of the explainers.

Units of words, sentences and paragraphs are found in the text and mapped back to tokens through the
spans, so every tokenizer that reports character offsets works: the byte tokenizer of
``lmkernels.nn`` (a multi-byte character's bytes share its span) and Hugging Face fast tokenizers
(``return_offsets_mapping``). Token ids without text are accepted too; they can only be explained
token by token or in custom spans.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tokens:
    """Token ``ids``; with ``text``, each token's character ``spans`` [start, end) and ``special`` flags
    (tokens the tokenizer added, such as BOS or [CLS], which no text-based unit covers)."""

    ids: tuple[int, ...]
    text: str | None = None
    spans: tuple[tuple[int, int], ...] | None = None
    special: tuple[bool, ...] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def piece(self, index: int) -> str:
        """What token ``index`` shows: its characters, or ``<id>`` without text or for special tokens."""
        if self.text is None or self.special[index]:
            return f"<{self.ids[index]}>"
        start, end = self.spans[index]
        return self.text[start:end]

    def first(self, count: int) -> Tokens:
        """The first ``count`` tokens, with the whole text (their spans still index it)."""
        return Tokens(self.ids[:count], self.text, None if self.spans is None else self.spans[:count],
                      None if self.special is None else self.special[:count])

    def tensor(self, device=None) -> torch.Tensor:
        return torch.tensor(self.ids, dtype=torch.int64, device=device)


def from_ids(ids, name: str) -> Tokens:
    """``Tokens`` of a sequence of token ids (list, tuple or 1-D integer tensor) without text."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1 or ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name}: expected a 1-D int32/int64 tensor of token ids, got {ids.dtype} "
                            f"of shape {list(ids.shape)}")
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TypeError(f"{name}: expected a str or a sequence of int token ids, got {type(ids).__name__}")
    return Tokens(tuple(ids))


def byte_tokens(text: str) -> Tokens:
    """The UTF-8 bytes of ``text`` as tokens (``lmkernels.nn.ByteTokenizer``): every byte spans its character."""
    ids, spans = [], []
    for position, character in enumerate(text):
        encoded = character.encode("utf-8")
        ids += encoded
        spans += [(position, position + 1)] * len(encoded)
    return Tokens(tuple(ids), text, tuple(spans), (False,) * len(ids))


def hf_tokens(tokenizer, text: str, add_special_tokens: bool) -> Tokens:
    """``text`` through a Hugging Face fast tokenizer, with its offsets and special-token mask."""
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
    return Tokens(tuple(encoded["input_ids"]), text, tuple(map(tuple, encoded["offset_mapping"])),
                  tuple(bool(flag) for flag in encoded["special_tokens_mask"]))


def hf_continuation(tokenizer, prompt: Tokens, text: str) -> Tokens | None:
    """The tokens ``text`` gets after ``prompt`` (tokenised with special tokens) when the two are tokenised
    together, its spans indexing ``text``; None where the prompt's tokens are not a prefix of the joint
    ones or a joint token straddles the boundary. Special tokens the tokenizer appends (an EOS) are dropped."""
    joint = hf_tokens(tokenizer, prompt.text + text, add_special_tokens=True)
    count, cut = len(prompt), len(prompt.text)
    if joint.ids[:count] != prompt.ids or any(not special and start < cut for (start, _), special
                                              in zip(joint.spans[count:], joint.special[count:])):
        return None
    end = len(joint)
    while end > count and joint.special[end - 1]:
        end -= 1
    spans = tuple((max(start - cut, 0), max(end_ - cut, 0)) for start, end_ in joint.spans[count:end])
    return Tokens(joint.ids[count:end], text, spans, joint.special[count:end])
