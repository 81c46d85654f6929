"""``CausalLM``: a token embedding, the Llama-style ``Decoder`` and an untied output head.

    x      = E[tokens]                      ([B, S, dim])
    h      = Decoder(x, positions)           (RMSNorm, RoPE, SwiGLU; causal, with an optional KV cache)
    logits = h W_head^T                      ([B, S, V], no bias)

Initialisation: N(0, 2 / (5 dim)) for the embedding, the head and the SwiGLU input and gate
projections, std ``2 / (L sqrt(dim))`` for the SwiGLU output projection (as the T-FREE model).
``ByteTokenizer`` maps text to its UTF-8 bytes (V = 256), which is all a small reference model needs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lmkernels.nn.attention import KeySuppression
from lmkernels.nn.decoder import Decoder, DecoderConfig
from lmkernels.nn.kv_cache import KVCache
from lmkernels.nn.normal_init import NormalEmbedding, NormalLinear, init_mlps, init_normal, reset_submodules


class CausalLM(torch.nn.Module):
    def __init__(self, vocab_size: int, config: DecoderConfig | None = None, device=None, dtype=None):
        super().__init__()
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size: expected a positive int, got {vocab_size!r}")
        self.vocab_size = vocab_size
        self.config = config or DecoderConfig()
        dim = self.config.dim
        self.embedding = NormalEmbedding(vocab_size, dim, device=device, dtype=dtype)
        self.decoder = Decoder(self.config, device, dtype)
        self.head = NormalLinear(dim, vocab_size, bias=False, device=device, dtype=dtype)
        init_normal(self.embedding, math.sqrt(2 / (5 * dim)))
        init_normal(self.head, math.sqrt(2 / (5 * dim)))
        init_mlps(self.decoder)

    def reset_parameters(self) -> None:
        """Draw every weight again by the scheme of the module docstring (after ``to_empty`` of a model
        built on the meta device, say); so does ``reset_parameters`` of each module in turn."""
        reset_submodules(self)

    def new_cache(self) -> KVCache:
        return self.decoder.new_cache()

    def forward(self, tokens: Tensor, positions: Tensor | None = None, cache: KVCache | None = None,
                allowed: Tensor | None = None, suppression: KeySuppression | None = None,
                prefix: KVCache | None = None) -> Tensor:
        """Logits [B, S, V] of ``tokens`` [B, S].

        ``positions`` [B, S] default to the positions that follow the cache or the shared prefix (0, 1,
        ... without one); ``allowed`` [B, S, cached + S] (True = may attend) replaces the causal mask,
        for example to keep left padding out of attention; ``suppression`` and ``prefix``: AtMan's
        per-key suppression and a shared clean prefix (see ``SelfAttention``).
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens: expected [B, S], got shape {list(tokens.shape)}")
        if tokens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"tokens: expected an int32 or int64 tensor, got {tokens.dtype}")
        # Not traceable (data-dependent); under torch.compile the embedding's own bounds check remains.
        if tokens.numel() and not torch.compiler.is_compiling():
            low, high = torch.aminmax(tokens)
            if int(low) < 0 or int(high) >= self.vocab_size:
                raise IndexError(f"tokens: expected values in [0, {self.vocab_size})")
        if positions is None:
            start = cache.length if cache is not None else prefix.length if prefix is not None else 0
            positions = torch.arange(start, start + tokens.shape[1], device=tokens.device).expand_as(tokens)
        elif positions.shape != tokens.shape:
            raise ValueError(f"positions: expected shape {list(tokens.shape)}, got {list(positions.shape)}")
        return self.head(self.decoder(self.embedding(tokens), positions, allowed, cache, suppression, prefix))


class ByteTokenizer:
    """Text <-> its UTF-8 bytes as token ids (V = 256); decoding replaces invalid UTF-8."""

    vocab_size = 256

    def encode(self, text: str) -> Tensor:
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)

    def decode(self, tokens) -> str:
        return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")
