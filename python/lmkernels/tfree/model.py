"""The T-FREE language model: trigram embedding, a Llama-style decoder over word positions, and a
multi-label head over the hash vocabulary.

    x_w    = sum over pattern rows r of word w, over j < m:  E[r_j]       (embedding bag, with multiplicity)
    h      = Decoder(x, word positions)                                  (RMSNorm, RoPE, SwiGLU)
    logits = h W_head^T                                                  ([positions, v], no bias)
    loss   = loss_scale * mean over positions p and indices i of w_p * BCE(logits_pi, y_pi; pos_weight)

with ``y_p`` the multi-hot pattern of the next word (clipped to 1). Initialisation follows the
official "pythia" scheme: std ``sqrt(2 / (5 h))`` for the embedding, the head and the SwiGLU input
and gate projections; ``2 / (L sqrt(h))`` for the SwiGLU output projection.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from lmkernels.nn import Decoder, DecoderConfig, KVCache
from lmkernels.nn.normal_init import NormalLinear, init_mlps, init_normal, reset_submodules
from lmkernels.ops import embedding_bag, multilabel_bce_with_logits
from lmkernels.tfree.encoding import TrainingBatch


@dataclass
class TFreeConfig:
    vocab_size: int = 32000  # v: the hash vocabulary
    m: int = 10
    k_lowercase: int = 2
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    pos_weight: float = 100.0  # the official TrainerConfig defaults
    loss_scale: float = 1000.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TFreeConfig":
        values = dict(values)
        decoder = values.get("decoder", {})
        values["decoder"] = decoder if isinstance(decoder, DecoderConfig) else DecoderConfig(**decoder)
        return cls(**values)


class TFreeEmbedding(torch.nn.Module):
    """``forward(rows [R, m], row_offsets [W + 1]) -> [W, dim]``: the sum of every index's row."""

    def __init__(self, vocab_size: int, dim: int, device=None, dtype=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(vocab_size, dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.normal_(self.weight, std=math.sqrt(2 / (5 * self.weight.shape[1])))

    def forward(self, rows: Tensor, row_offsets: Tensor) -> Tensor:
        return embedding_bag(self.weight, rows.reshape(-1), row_offsets * rows.shape[1], mode="sum")

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}"


class TFreeHead(NormalLinear):
    """``Linear(dim -> v)`` without bias: one logit per hash index."""

    def __init__(self, dim: int, vocab_size: int, device=None, dtype=None):
        super().__init__(dim, vocab_size, bias=False, device=device, dtype=dtype)
        init_normal(self, math.sqrt(2 / (5 * dim)))


def tfree_loss(logits: Tensor, target_rows: Tensor, target_offsets: Tensor, loss_weights: Tensor,
               pos_weight: float = 100.0, loss_scale: float = 1000.0) -> Tensor:
    """The official T-FREE loss, without materialising the [positions, v] target.

    ``logits`` [P, v]; targets as CSR pattern rows ([R, m] rows, [P + 1] row offsets); ``loss_weights`` [P].
    Averages over all ``P * v`` elements (positions of weight 0 count in the denominator), times ``loss_scale``.
    """
    m = target_rows.shape[1]
    loss = multilabel_bce_with_logits(logits, target_rows.reshape(-1), target_offsets * m,
                                      loss_weights.reshape(-1).float(), pos_weight=pos_weight, reduction="mean")
    return loss * loss_scale


class TFreeLM(torch.nn.Module):
    def __init__(self, config: TFreeConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        dim = config.decoder.dim
        self.embedding = TFreeEmbedding(config.vocab_size, dim, device, dtype)
        self.decoder = Decoder(config.decoder, device, dtype)
        self.head = TFreeHead(dim, config.vocab_size, device, dtype)
        init_mlps(self.decoder)

    def reset_parameters(self) -> None:
        """Draw every weight again by the scheme of the module docstring (after ``to_empty`` of a model
        built on the meta device, say); so does ``reset_parameters`` of each module in turn."""
        reset_submodules(self)

    def hidden(self, rows: Tensor, row_offsets: Tensor, positions: Tensor, allowed: Tensor | None = None,
               cache: KVCache | None = None) -> Tensor:
        """Final hidden states [B, S, dim] of B * S positions given as CSR pattern rows."""
        batch, length = positions.shape
        x = self.embedding(rows, row_offsets).view(batch, length, self.config.decoder.dim)
        return self.decoder(x, positions, allowed, cache)

    def forward(self, rows: Tensor, row_offsets: Tensor, positions: Tensor, allowed: Tensor | None = None,
                cache: KVCache | None = None) -> Tensor:
        """Logits [B, S, v]."""
        return self.head(self.hidden(rows, row_offsets, positions, allowed, cache))

    def loss(self, batch: TrainingBatch) -> Tensor:
        """The T-FREE loss of a training batch (see :func:`tfree_loss`).

        Raises ValueError for a batch without positions (``seq_len`` 0), as ``encode_training`` gives
        for texts of fewer than two words: their mean loss is 0 / 0, and a 0 or NaN there would pass
        for a result. Padded positions count, with weight 0, as in :func:`tfree_loss`.
        """
        if batch.loss_weights.numel() == 0:
            raise ValueError(f"batch: expected at least one position to predict, got shape {batch.shape} (a text of "
                             "one word has no next word to predict)")
        logits = self(batch.input_rows, batch.input_offsets, batch.position_ids, batch.attention_allowed())
        return tfree_loss(logits.flatten(0, 1), batch.target_rows, batch.target_offsets, batch.loss_weights,
                          self.config.pos_weight, self.config.loss_scale)

    def parameter_counts(self) -> dict[str, int]:
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        return {"embedding": count(self.embedding), "head": count(self.head), "decoder": count(self.decoder)}
