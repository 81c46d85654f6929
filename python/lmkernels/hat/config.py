"""``HATConfig``: the schema of the released ``HATArchitectureConfig`` (its ``config.json``).

Three Llama-style stacks (encoder over bytes, backbone over words, decoder over bytes), each a
:class:`StackConfig`; the encoder and decoder carry a :class:`CrossAttentionConfig` for their word
connector. Unknown keys of a released file (``transformers_version``, ``auto_map``, ...) are
accepted and ignored, so ``HATConfig.from_dict(json.load(f))`` reads a checkpoint's config.

Sliding windows follow the released code (HF flash-attention ``window_size=(w, w)``): a byte sees
itself and the ``w`` bytes before it, i.e. ``w + 1`` keys (:attr:`StackConfig.attention_window`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


def _known(cls, values: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


@dataclass
class CrossAttentionConfig:
    """A word connector's attention: ``hidden_size`` = heads x head dim of the attention itself."""

    hidden_size: int
    hidden_size_q: int
    hidden_size_kv: int
    num_attention_heads: int
    attention_num_kv_heads: int
    word_window_size: int = 1
    key_query_norm: bool = False
    key_query_norm_per_head: bool = False

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.attention_num_kv_heads:
            raise ValueError(f"cross_attention_config: num_attention_heads {self.num_attention_heads} must divide "
                             f"hidden_size {self.hidden_size} and be a multiple of attention_num_kv_heads "
                             f"{self.attention_num_kv_heads}")


@dataclass
class StackConfig:
    """One Llama-style stack (``LlamaConfig`` fields plus HAT's)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 262144
    rope_theta: float = 500000.0
    rope_scaling: dict | None = None
    mlp_bias: bool = False
    vocab_size: int = 0
    sliding_window: int | None = None
    key_query_norm: bool = False
    key_query_norm_per_head: bool = False
    is_neox_style: bool = True
    hidden_act: str = "silu"
    cross_attention_config: CrossAttentionConfig | None = None
    cross_attn_every_layer: bool = False

    def __post_init__(self):
        if isinstance(self.cross_attention_config, dict):
            self.cross_attention_config = CrossAttentionConfig(**_known(CrossAttentionConfig,
                                                                        self.cross_attention_config))
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} must divide hidden_size "
                             f"{self.hidden_size} and be a multiple of num_key_value_heads {self.num_key_value_heads}")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act: only 'silu' (SwiGLU) is supported, got {self.hidden_act!r}")
        if self.sliding_window is not None and self.sliding_window < 0:
            raise ValueError(f"sliding_window: expected None or >= 0, got {self.sliding_window}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def attention_window(self) -> int | None:
        """Keys a query sees, itself included (``lmkernels.ops.attention``'s ``window``)."""
        return None if self.sliding_window is None else self.sliding_window + 1


@dataclass
class HATConfig:
    encoder_config: StackConfig
    backbone_config: StackConfig
    decoder_config: StackConfig
    special_token_dict: dict[str, int] = field(default_factory=lambda: {"<|eot_id|>": 192})
    eos_token_id: int = 192
    max_word_size: int = 100
    sliding_window: int = 768
    max_position_embeddings: int = 262144

    def __post_init__(self):
        for name in ("encoder_config", "backbone_config", "decoder_config"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, StackConfig(**_known(StackConfig, value)))
        for name in ("encoder_config", "decoder_config"):
            if getattr(self, name).cross_attention_config is None:
                raise ValueError(f"{name}: a cross_attention_config is required (the word connector)")
        if self.max_word_size < 1:
            raise ValueError(f"max_word_size: expected >= 1, got {self.max_word_size}")

    @classmethod
    def from_dict(cls, values: dict) -> HATConfig:
        return cls(**_known(cls, values))

    @classmethod
    def from_json(cls, path: str | Path) -> HATConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def tiny(cls, width: int = 64, layers: int = 1, window: int = 63) -> HATConfig:
        """A small model for tests, tours and the reference training script."""
        heads = max(1, width // 32)

        def stack(vocab: int, **extra) -> StackConfig:
            return StackConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                               num_key_value_heads=heads, intermediate_size=width * 3, rope_theta=10000.0,
                               vocab_size=vocab, **extra)

        def connector(q: int, kv: int) -> CrossAttentionConfig:
            return CrossAttentionConfig(hidden_size=width, hidden_size_q=q, hidden_size_kv=kv,
                                        num_attention_heads=heads, attention_num_kv_heads=heads)

        return cls(encoder_config=stack(256, sliding_window=window, cross_attention_config=connector(width, width)),
                   backbone_config=stack(0),
                   decoder_config=stack(256, sliding_window=window, cross_attention_config=connector(width, width),
                                        cross_attn_every_layer=True),
                   sliding_window=window)
