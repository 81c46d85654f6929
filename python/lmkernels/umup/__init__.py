"""u-muP (Blake et al. 2024): unit-scaled ops and modules, scale-free FP8 linears, u-muP optimiser rules.

    import lmkernels.umup.functional as U           # unit-scaled ops, the semantics of unit-scaling 0.3.5
    model = umup.TransformerDecoder(256, vocab, layers=4, heads=4, fp8="partial")
    optimiser = umup.AdamW(model.parameters(), lr=2**-3, weight_decay=1e-4)
    model.loss(ids).backward(); optimiser.step()

Layout: ``scale`` (the scaled identity and constraints), ``functional`` (+ ``activations``,
``normalization``), ``parameter`` (u-muP tags), ``modules``, ``fp8`` (the FP8 linear on the
lmkernels FP8 kernels), ``optim`` (learning-rate and weight-decay rules).
"""

from lmkernels.umup import functional, optim
from lmkernels.umup.fp8 import fp8_linear
from lmkernels.umup.modules import (FP8_SCHEMES, MHSA, MLP, DepthSequential, Embedding, Linear, LinearReadout, RMSNorm,
                                    TransformerDecoder, TransformerLayer, TransformerStack, set_fp8)
from lmkernels.umup.optim import Adam, AdamW, scaled_parameters
from lmkernels.umup.parameter import MUP_TYPES, UnitScaledParameter, is_tagged, parameter

__all__ = ["Adam", "AdamW", "FP8_SCHEMES", "MHSA", "MLP", "MUP_TYPES", "DepthSequential", "Embedding", "Linear",
           "LinearReadout", "RMSNorm", "TransformerDecoder", "TransformerLayer", "TransformerStack",
           "UnitScaledParameter", "fp8_linear", "functional", "is_tagged", "optim", "parameter", "scaled_parameters",
           "set_fp8"]
