"""Plain PyTorch implementations of every kernel: the oracles that the tests compare against."""

from lmkernels.reference import tfree_patterns, tfree_words
from lmkernels.reference.attention import attention, varlen_attention
from lmkernels.reference.dictionary_score import dictionary_scores
from lmkernels.reference.embedding_bag import embedding_bag
from lmkernels.reference.fp8_cast import fp8_cast
from lmkernels.reference.fp8_gemm import fp8_gemm
from lmkernels.reference.int8_absmax import int8_dequantize, int8_fake_quantize, int8_quantize
from lmkernels.reference.multilabel_bce import multilabel_bce_with_logits
from lmkernels.reference.word_connector import guide_broadcast, word_attention
from lmkernels.reference.token_divergence import token_divergence

__all__ = ["guide_broadcast", "word_attention", "attention", "dictionary_scores", "embedding_bag", "fp8_cast", "fp8_gemm", "int8_dequantize", "int8_fake_quantize",
           "int8_quantize", "multilabel_bce_with_logits", "tfree_patterns", "tfree_words", "token_divergence", "varlen_attention"]
