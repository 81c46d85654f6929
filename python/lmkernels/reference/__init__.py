"""Plain PyTorch implementations of every kernel: the oracles that the tests compare against."""

from lmkernels.reference import tfree_words
from lmkernels.reference.embedding_bag import embedding_bag
from lmkernels.reference import tfree_patterns

__all__ = ["embedding_bag", "tfree_patterns", "tfree_words"]
