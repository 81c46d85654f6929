"""Building blocks shared by the methods."""

from lmkernels.nn.attention import KeySuppression, SelfAttention
from lmkernels.nn.causal_lm import ByteTokenizer, CausalLM
from lmkernels.nn.decoder import Decoder, DecoderConfig, DecoderLayer
from lmkernels.nn.embedding_bag import EmbeddingBag
from lmkernels.nn.kv_cache import KVCache
from lmkernels.nn.modes import evaluating
from lmkernels.nn.rms_norm import RMSNorm
from lmkernels.nn.rotary import RotaryEmbedding
from lmkernels.nn.swiglu import SwiGLU

__all__ = ["ByteTokenizer", "CausalLM", "Decoder", "DecoderConfig", "DecoderLayer", "EmbeddingBag", "KVCache", "KeySuppression",
           "RMSNorm", "RotaryEmbedding", "SelfAttention", "SwiGLU", "evaluating"]
