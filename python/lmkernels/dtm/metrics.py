"""Divergent Token Metrics of a candidate model F' against the reference continuations of F.

One teacher-forced pass of F' over ``[x; y]`` gives, at each of the N generated positions,
``d_i = 1[argmax F'(. | x, y_<i) != y_i]`` and the NLL of ``y_i``. Per prompt:

    FDT(x) = min { i : d_i = 1 }  (0-based), or N when F' never diverges     (higher is better)
    SDT(x) = (1 / N) sum_i d_i                                               (lower is better)
    NLL(x) = (1 / N) sum_i -log p'(y_i | x, y_<i)

Because ``y`` is F's own greedy output, the first teacher-forced mismatch is exactly where F''s
free-running greedy generation would first leave ``y``: one pass instead of N decode steps.
Aggregates over the prompts: the mean and the 25/50/75 % quantiles of FDT (linear interpolation
between order statistics, ``torch.quantile``'s default), the mean SDT (SDTM), and the perplexity
``exp(mean over all prompts and positions of the NLL)`` of F' on the reference continuations.

``fdt_score(q)`` puts FDT on the paper's 0..100 scale: ``100 * quantile_q(FDT) / N``; the paper's
"FDT75" is read as ``q = 0.75`` (an unverified reading; the quantile is a parameter).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from lmkernels.dtm import models
from lmkernels.dtm.continuations import References, teacher_forced_logits
from lmkernels.nn import evaluating
from lmkernels.ops import token_divergence


def first_divergent_token(match: Tensor) -> Tensor:
    """FDT per row of ``match`` [P, N] (bool, True = agrees): the index of the first False, or N."""
    if match.dim() != 2 or match.dtype != torch.bool:
        raise ValueError(f"match: expected a 2-D bool tensor, got {match.dtype} of shape {list(match.shape)}")
    diverged = ~match
    return torch.where(diverged.any(1), diverged.int().argmax(1), match.shape[1]).long()


def share_of_divergent_tokens(match: Tensor) -> Tensor:
    """SDT per row of ``match`` [P, N]: the fraction of False entries."""
    if match.dim() != 2 or match.dtype != torch.bool or match.shape[1] == 0:
        raise ValueError(f"match: expected a 2-D bool tensor with N > 0 columns, got {match.dtype} "
                         f"of shape {list(match.shape)}")
    return (~match).float().mean(1)


def check_quantile(quantile, name: str = "quantile") -> None:
    if isinstance(quantile, bool) or not isinstance(quantile, numbers.Real):
        raise TypeError(f"{name}: expected a number in [0, 1], got {type(quantile).__name__}")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {quantile!r}")


@dataclass
class DivergenceResult:
    """Per-prompt ``fdt`` int64 [P], ``sdt`` float32 [P] and ``nll`` float32 [P] (mean over the N tokens)."""

    fdt: Tensor
    sdt: Tensor
    nll: Tensor
    num_tokens: int

    @classmethod
    def from_match(cls, match: Tensor, nll: Tensor) -> "DivergenceResult":
        """From the agreement ``match`` [P, N] and per-token NLL [P, N]."""
        return cls(first_divergent_token(match), share_of_divergent_tokens(match), nll.float().mean(1),
                   match.shape[1])

    def fdt_quantile(self, q: float) -> float:
        check_quantile(q, "q")
        return float(torch.quantile(self.fdt.double(), float(q)))

    def fdt_score(self, q: float = 0.75) -> float:
        """The q-quantile of FDT on a 0..100 scale (100 = no prompt diverges before the q-quantile)."""
        return 100.0 * self.fdt_quantile(q) / self.num_tokens

    @property
    def fdt_mean(self) -> float:
        return float(self.fdt.double().mean())

    @property
    def sdt_mean(self) -> float:
        return float(self.sdt.double().mean())

    @property
    def perplexity(self) -> float:
        return math.exp(float(self.nll.double().mean()))

    def summary(self) -> dict[str, float]:
        return {"fdt_mean": self.fdt_mean, "fdt25": self.fdt_quantile(0.25), "fdt50": self.fdt_quantile(0.5),
                "fdt75": self.fdt_quantile(0.75), "sdt": self.sdt_mean, "perplexity": self.perplexity}


@torch.no_grad()
def score(model: torch.nn.Module, references: References) -> DivergenceResult:
    """FDT, SDT and NLL of ``model`` on ``references``: one teacher-forced pass per batch of prompts.

    Raises ``ValueError`` where the model's vocabulary differs from the references' model's or where
    its logits hold NaN.
    """
    if not isinstance(references, References):
        raise TypeError(f"references: expected References, got {type(references).__name__}")
    vocab = models.vocab_size(model)
    if vocab != references.vocab_size:
        raise ValueError(f"model: its vocabulary has {vocab} tokens, the references' model had "
                         f"{references.vocab_size}")
    matches, nlls = [], []
    for start, tokens, real, continuations in references.batches():
        with evaluating(model):  # dropout would make the scores random
            logits = teacher_forced_logits(model, tokens, real, continuations)
        if logits.shape[:2] != continuations.shape:
            raise ValueError(f"model: its logits have shape {list(logits.shape)}, expected "
                             f"{list(continuations.shape)} + [vocabulary]")
        if bool(torch.isnan(logits).any()):
            raise ValueError(f"model: NaN logits on prompts {start}..{start + len(continuations) - 1}")
        result = token_divergence(logits, continuations.to(logits.device))
        matches.append(result.match.cpu())
        nlls.append(result.nll.cpu())
    return DivergenceResult.from_match(torch.cat(matches), torch.cat(nlls))
