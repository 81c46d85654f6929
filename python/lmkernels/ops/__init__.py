"""One ``torch.library`` custom op (``lmk::<name>``) per kernel: argument checks, output
allocation, a fake implementation for ``torch.compile`` and, where differentiable, autograd."""

from lmkernels.ops.attention import attention, varlen_attention
from lmkernels.ops.dictionary_score import dictionary_scores, top_words
from lmkernels.ops.embedding_bag import embedding_bag
from lmkernels.ops.fp8_cast import fp8_cast
from lmkernels.ops.fp8_gemm import fp8_gemm
from lmkernels.ops.int8_absmax import int8_dequantize, int8_fake_quantize, int8_quantize
from lmkernels.ops.multilabel_bce import multilabel_bce_with_logits
from lmkernels.ops.word_connector import guide_broadcast, word_attention
from lmkernels.ops.token_divergence import TokenDivergence, token_divergence

__all__ = ["guide_broadcast", "word_attention", "TokenDivergence", "attention", "dictionary_scores", "embedding_bag", "fp8_cast", "fp8_gemm", "int8_dequantize",
           "int8_fake_quantize", "int8_quantize", "multilabel_bce_with_logits", "token_divergence", "top_words", "varlen_attention"]
