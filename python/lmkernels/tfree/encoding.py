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
        batch, length = self.shape
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        same = self.document_ids[:, :, None] == self.document_ids[:, None, :]
        return causal & same

    def to(self, device) -> "TrainingBatch":
        return TrainingBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def _concatenate_rows(parts: list[tuple[Tensor, Tensor]], m: int) -> tuple[Tensor, Tensor]:
    rows = torch.cat([r for r, _ in parts]) if parts else torch.empty(0, m, dtype=torch.int32)
    offsets, base = [torch.zeros(1, dtype=torch.int64)], 0
    for r, o in parts:
        offsets.append(o[1:] + base)
        base += r.shape[0]
    return rows, torch.cat(offsets)


def training_sequence(encoding: Encoding, chunk_weights: list[float], seq_len: int | None,
                      reset_at_endoftext: bool) -> dict:
    """One training sequence from an encoding whose texts are the chunks of one sequence."""
    words = encoding.num_words
    positions = max(words - 1, 0)
    length = positions if seq_len is None else seq_len
    used = min(positions, length)
    counts = encoding.word_offsets.diff()
    word_weight = torch.repeat_interleave(torch.tensor(chunk_weights, dtype=torch.float32), counts)
    target_is_eot = encoding.is_endoftext[1:used + 1]
    input_rows, input_offsets = encoding.words(0, used)
    target_rows, target_offsets = encoding.words(1, used + 1)
    pad = length - used
    if pad:
        input_offsets = torch.cat([input_offsets, input_offsets[-1:].expand(pad)])
        target_offsets = torch.cat([target_offsets, target_offsets[-1:].expand(pad)])
        target_is_eot = torch.cat([target_is_eot, torch.zeros(pad, dtype=torch.bool)])
    weights = torch.zeros(length)
    weights[:used] = word_weight[1:used + 1]
    if reset_at_endoftext:
        ends = target_is_eot.long()
        documents = ends.cumsum(0) - ends
    else:
        documents = torch.zeros(length, dtype=torch.int64)
    index = torch.arange(length)
    starts = torch.zeros(length, dtype=torch.int64).scatter_reduce(0, documents, index, "amin", include_self=False)
    return dict(input=(input_rows, input_offsets), target=(target_rows, target_offsets), loss_weights=weights,
                position_ids=index - starts[documents], document_ids=documents, target_is_endoftext=target_is_eot)


def collate(sequences: list[dict], m: int) -> TrainingBatch:
    """Stack equal-length training sequences into one batch."""
    lengths = {s["loss_weights"].numel() for s in sequences}
    if len(lengths) != 1:
        raise ValueError(f"sequences: expected one common length (pass seq_len), got lengths {sorted(lengths)}")
    input_rows, input_offsets = _concatenate_rows([s["input"] for s in sequences], m)
    target_rows, target_offsets = _concatenate_rows([s["target"] for s in sequences], m)
    stack = lambda key: torch.stack([s[key] for s in sequences])  # noqa: E731
    return TrainingBatch(input_rows, input_offsets, target_rows, target_offsets, stack("loss_weights"),
                         stack("position_ids"), stack("document_ids"), stack("target_is_endoftext"))
