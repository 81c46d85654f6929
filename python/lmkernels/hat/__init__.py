"""HAT (Neitemeier et al. 2025): hierarchical autoregressive transformers over bytes grouped into words.

    words = split("Hello, world!")                       # ['Hello,', ' world!']
    chunks = split_with_limit("verylongword", 10)         # [b'verylongwo', b'rd']
    batch = split_batch(texts, max_bytes=100)             # flat uint8 bytes + int64 word offsets
    HATRuleSplitter().encode("Hi!<|eot_id|>")             # [[72, 105, 33], [192]]
    model = HATModel(HATConfig.tiny())                    # or HATModel.from_pretrained(directory)
    model.generate("Hello", max_bytes=64)                 # the text that follows (lmkernels.hat.generate)
"""

from lmkernels.hat.config import CrossAttentionConfig, HATConfig, StackConfig
from lmkernels.hat.model import HATBatch, HATModel, hat_loss
from lmkernels.hat.splitter import (DEFAULT_SPECIAL_TOKENS, HATRuleSplitter, SplitBatch, split, split_batch,
                                    split_with_limit)

__all__ = ["DEFAULT_SPECIAL_TOKENS", "CrossAttentionConfig", "HATBatch", "HATConfig", "HATModel", "HATRuleSplitter",
           "SplitBatch", "StackConfig", "hat_loss", "split", "split_batch", "split_with_limit"]
