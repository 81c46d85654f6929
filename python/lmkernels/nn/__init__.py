"""Building blocks shared by the methods."""

from lmkernels.nn.embedding_bag import EmbeddingBag

__all__ = ["EmbeddingBag"]
