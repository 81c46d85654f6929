"""HAT: byte-level Hierarchical Autoregressive Transformers (Neitemeier et al., ICLR 2025)."""

from lmkernels.hat.config import CrossAttentionConfig, HATConfig, StackConfig
from lmkernels.hat.model import HATBatch, HATModel, hat_loss

__all__ = ["CrossAttentionConfig", "HATBatch", "HATConfig", "HATModel", "StackConfig", "hat_loss"]
