"""Plain PyTorch implementations of every kernel: the oracles that the tests compare against."""

from lmkernels.reference.dictionary_score import dictionary_scores
from lmkernels.reference.embedding_bag import embedding_bag

__all__ = ["embedding_bag"]
