"""Encoded T-FREE text: words as CSR lists of trigram pattern rows, ready for the kernels.

An :class:`Encoding` holds B texts. Word ``w`` of text ``b`` lies in
``word_offsets[b] <= w < word_offsets[b + 1]``; its pattern rows are
``rows[row_offsets[w]:row_offsets[w + 1]]`` ([n_w, m] indices into the hash vocabulary, one row
per distinct trigram, or one row for a word hashed whole). Read flat, ``rows`` with offsets
``m * row_offsets`` is the embedding-bag input: one bag per word, every index with multiplicity.

A :class:`TrainingBatch` is the official training layout: inputs are words ``0..n-2`` and targets
words ``1..n-1`` of each sequence; the loss weight of a position is the weight of the chunk its
target word came from; attention and positions restart after every position whose target is
``<|endoftext|>`` (when resets are on); sequences are padded to a common length with empty
positions of weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Encoding:
    word_offsets: Tensor  # [B + 1] int64
    row_offsets: Tensor  # [W + 1] int64
    rows: Tensor  # [R, m] int32
    trigram_ids: Tensor  # [R] int32, -1 for a row of a word hashed whole
    is_endoftext: Tensor  # [W] bool

    @property
    def num_texts(self) -> int:
        return self.word_offsets.numel() - 1

    @property
    def num_words(self) -> int:
        return self.row_offsets.numel() - 1

    @property
    def m(self) -> int:
        return self.rows.shape[1]

    def bags(self) -> tuple[Tensor, Tensor]:
        """``(indices [R * m], offsets [W + 1])``: the embedding-bag input, one bag per word."""
        return self.rows.reshape(-1), self.row_offsets * self.m

    def words(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Rows and offsets (starting at 0) of the words ``start..stop-1``."""
        offsets = self.row_offsets[start:stop + 1]
        first = int(offsets[0])
        return self.rows[first:int(offsets[-1])], offsets - first


@dataclass(frozen=True)
class TrainingBatch:
    """B sequences of S positions; CSR rows of inputs and targets over the B * S positions."""

    input_rows: Tensor  # [R_in, m] int32
    input_offsets: Tensor  # [B * S + 1] int64 (rows per position)
    target_rows: Tensor  # [R_tgt, m] int32
    target_offsets: Tensor  # [B * S + 1] int64
    loss_weights: Tensor  # [B, S] float32
    position_ids: Tensor  # [B, S] int64
    document_ids: Tensor  # [B, S] int64 (padding continues the last document)
    target_is_endoftext: Tensor  # [B, S] bool

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.loss_weights.shape)

    def attention_allowed(self) -> Tensor:
        """[B, S, S] bool, True where query i may attend to key j: causal and within a document."""
        length = self.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        same = self.document_ids[:, :, None] == self.document_ids[:, None, :]
        return causal & same

    def to(self, device) -> "TrainingBatch":
        return TrainingBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def _gather_words(encoding: Encoding, words: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
    """Rows and CSR offsets of ``words`` [B, L] (flattened), with empty positions where not ``present``."""
    first = encoding.row_offsets[words].reshape(-1)
    counts = torch.where(present, encoding.row_offsets[words + 1] - encoding.row_offsets[words], 0).reshape(-1)
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    total = int(offsets[-1])
    within = torch.arange(total) - torch.repeat_interleave(offsets[:-1], counts, output_size=total)
    return encoding.rows[torch.repeat_interleave(first, counts, output_size=total) + within], offsets


def batch_from_stream(encoding: Encoding, starts: Tensor, stops: Tensor, seq_len: int, word_weights: Tensor,
                      reset_at_endoftext: bool = True) -> TrainingBatch:
    """Training windows over the encoding's words read as one stream.

    Window b has inputs ``starts[b] + p`` and targets ``starts[b] + p + 1`` for the positions p < seq_len
    whose target lies before ``stops[b]``; the other positions are padding (no rows, weight 0).
    A position's loss weight is ``word_weights`` of its target word.
    """
    words = encoding.num_words
    index = torch.arange(seq_len)
    inputs = starts[:, None] + index
    present = inputs + 1 < stops[:, None]
    inputs = inputs.clamp(max=max(words - 2, 0))
    targets = (inputs + 1).clamp(max=max(words - 1, 0))
    input_rows, input_offsets = _gather_words(encoding, inputs, present)
    target_rows, target_offsets = _gather_words(encoding, targets, present)
    weights = torch.where(present, word_weights[targets], 0.0).float()
    target_is_eot = present & encoding.is_endoftext[targets]
    if reset_at_endoftext:
        ends = target_is_eot.long()
        documents = ends.cumsum(1) - ends
    else:
        documents = torch.zeros_like(inputs)
    begins = torch.ones_like(target_is_eot)
    begins[:, 1:] = target_is_eot[:, :-1] if reset_at_endoftext else False
    last_begin = torch.where(begins, index, 0).cummax(1).values
    return TrainingBatch(input_rows, input_offsets, target_rows, target_offsets, weights, index - last_begin,
                         documents, target_is_eot)
