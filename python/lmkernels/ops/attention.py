"""Stand-in until the native attention kernel lands: forwards to the dense reference."""

from lmkernels.reference.attention import attention, varlen_attention

__all__ = ["attention", "varlen_attention"]
