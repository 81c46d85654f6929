"""T-FREE (Deiseroth et al. 2024): tokenizer-free word-level language models over trigram patterns."""

from lmkernels.tfree.words import join_words, split_words

__all__ = ["split_words", "join_words"]
