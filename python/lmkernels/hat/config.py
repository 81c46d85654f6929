"""``HATConfig``: the schema of the released ``HATArchitectureConfig`` (its ``config.json``).

Three Llama-style stacks (encoder over bytes, backbone over words, decoder over bytes), each a
:class:`StackConfig`; the encoder and decoder carry a :class:`CrossAttentionConfig` for their word
connector. Unknown keys of a released file (``transformers_version``, ``auto_map``, ...) are
accepted and ignored, so ``HATConfig.from_dict(json.load(f))`` reads a checkpoint's config. Each
stack is a ``LlamaConfig`` in the released code, so a key a file omits takes ``LlamaConfig``'s
default (``rms_norm_eps`` 1e-6, ``rope_theta`` 10000, ``max_position_embeddings`` 2048,
``num_key_value_heads`` = ``num_attention_heads``, ``head_dim`` = ``hidden_size`` / heads).

The widths must chain as the model wires them (spec §2.3): the encoder connector reads encoder
states (``hidden_size_kv`` = encoder width) into backbone inputs (``hidden_size_q`` = backbone
width); the decoder starts from the encoder's byte states (decoder width = encoder width) and adds
a guide made from backbone outputs (``hidden_size_kv`` = backbone width, ``hidden_size_q`` =
decoder width). Encoder and decoder read and predict bytes: ``vocab_size`` 256.

Sliding windows follow the released code (HF flash-attention ``window_size=(w, w)``): a byte sees
itself and the ``w`` bytes before it, i.e. ``w + 1`` keys (:attr:`StackConfig.attention_window`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_BYTE_VALUES = 256


def _known(cls, values: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def _build(cls, value, name: str):
    """``value`` as a ``cls``: built from a dict (``config.json``), with errors naming ``name``."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"{name}: expected a dict or a {cls.__name__}, got {type(value).__name__}")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in value and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{name}: missing required keys {missing}")
    try:
        return cls(**_known(cls, dict(value)))
    except (TypeError, ValueError) as error:
        raise type(error)(f"{name}.{error}") from None


def _check_int(owner: object, name: str, minimum: int) -> None:
    value = getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")


def _check_heads(owner: object, heads_name: str, kv_heads_name: str) -> None:
    heads, kv_heads = getattr(owner, heads_name), getattr(owner, kv_heads_name)
    if heads % kv_heads:
        raise ValueError(f"{heads_name}: expected a multiple of {kv_heads_name} {kv_heads}, got {heads}")
    if owner.head_dim % 2:
        raise ValueError(f"head_dim: expected an even head dimension (RoPE rotates pairs), got {owner.head_dim}")


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
        for name in ("hidden_size", "hidden_size_q", "hidden_size_kv", "num_attention_heads",
                     "attention_num_kv_heads"):
            _check_int(self, name, 1)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"num_attention_heads: expected a divisor of hidden_size {self.hidden_size}, got "
                             f"{self.num_attention_heads}")
        _check_heads(self, "num_attention_heads", "attention_num_kv_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class StackConfig:
    """One Llama-style stack (``LlamaConfig`` fields, with its defaults, plus HAT's)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_key_value_heads: int | None = None  # None: num_attention_heads (no grouping)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
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
        if self.cross_attention_config is not None:
            self.cross_attention_config = _build(CrossAttentionConfig, self.cross_attention_config,
                                                 "cross_attention_config")
        for name, minimum in (("hidden_size", 1), ("num_hidden_layers", 0), ("num_attention_heads", 1),
                              ("intermediate_size", 1), ("vocab_size", 0)):
            _check_int(self, name, minimum)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        _check_int(self, "num_key_value_heads", 1)
        if self.head_dim is None:  # a given head_dim is honoured, as LlamaConfig does
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"num_attention_heads: expected a divisor of hidden_size {self.hidden_size} "
                                 f"(or a head_dim), got {self.num_attention_heads}")
            self.head_dim = self.hidden_size // self.num_attention_heads
        _check_int(self, "head_dim", 1)
        _check_heads(self, "num_attention_heads", "num_key_value_heads")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act: only 'silu' (SwiGLU) is supported, got {self.hidden_act!r}")
        if self.sliding_window is not None:
            _check_int(self, "sliding_window", 0)
        self.rope_scaling = _rope_scaling(self.rope_scaling)

    @property
    def attention_window(self) -> int | None:
        """Keys a query sees, itself included (``lmkernels.ops.attention``'s ``window``)."""
        return None if self.sliding_window is None else self.sliding_window + 1


def _rope_scaling(scaling: dict | None) -> dict | None:
    """None, or a llama3 scaling; ``{"rope_type": "default"}`` (what HF writes for none) means None."""
    if scaling is None:
        return None
    if not isinstance(scaling, Mapping):
        raise TypeError(f"rope_scaling: expected a dict or None, got {type(scaling).__name__}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise ValueError(f"rope_scaling: only rope_type 'llama3' (or 'default') is supported, got {dict(scaling)!r}")
    return dict(scaling)


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
            setattr(self, name, _build(StackConfig, getattr(self, name), name))
        encoder, backbone, decoder = self.encoder_config, self.backbone_config, self.decoder_config
        for name, stack in (("encoder_config", encoder), ("decoder_config", decoder)):
            if stack.cross_attention_config is None:
                raise ValueError(f"{name}: a cross_attention_config is required (the word connector)")
            if stack.vocab_size != _BYTE_VALUES:
                raise ValueError(f"{name}.vocab_size: expected {_BYTE_VALUES} (byte values), got {stack.vocab_size}")
        widths = (
            ("encoder_config.cross_attention_config.hidden_size_kv", encoder.cross_attention_config.hidden_size_kv,
             "the encoder width", encoder.hidden_size),
            ("encoder_config.cross_attention_config.hidden_size_q", encoder.cross_attention_config.hidden_size_q,
             "the backbone width", backbone.hidden_size),
            ("decoder_config.hidden_size", decoder.hidden_size, "the encoder width (the decoder starts from the "
             "encoder's byte states)", encoder.hidden_size),
            ("decoder_config.cross_attention_config.hidden_size_kv", decoder.cross_attention_config.hidden_size_kv,
             "the backbone width", backbone.hidden_size),
            ("decoder_config.cross_attention_config.hidden_size_q", decoder.cross_attention_config.hidden_size_q,
             "the decoder width", decoder.hidden_size),
        )
        for name, width, expected_name, expected in widths:
            if width != expected:
                raise ValueError(f"{name}: expected {expected_name}, {expected}, got {width}")
        _check_int(self, "max_word_size", 1)
        _check_int(self, "sliding_window", 0)
        _check_int(self, "eos_token_id", 0)
        if self.eos_token_id >= _BYTE_VALUES:
            raise ValueError(f"eos_token_id: expected a byte value in [0, 255], got {self.eos_token_id}")
        if not isinstance(self.special_token_dict, Mapping):
            raise TypeError(f"special_token_dict: expected a dict of str to int, got "
                            f"{type(self.special_token_dict).__name__}")
        for token, byte in self.special_token_dict.items():
            if not isinstance(token, str) or not token:
                raise ValueError(f"special_token_dict: keys must be non-empty str, got {token!r}")
            if isinstance(byte, bool) or not isinstance(byte, int) or not 0 <= byte < _BYTE_VALUES:
                raise ValueError(f"special_token_dict[{token!r}]: expected a byte value in [0, 255], got {byte!r}")

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
                               num_key_value_heads=heads, intermediate_size=width * 3, rms_norm_eps=1e-5,
                               rope_theta=10000.0, max_position_embeddings=262144, vocab_size=vocab, **extra)

        def connector(q: int, kv: int) -> CrossAttentionConfig:
            return CrossAttentionConfig(hidden_size=width, hidden_size_q=q, hidden_size_kv=kv,
                                        num_attention_heads=heads, attention_num_kv_heads=heads)

        return cls(encoder_config=stack(256, sliding_window=window, cross_attention_config=connector(width, width)),
                   backbone_config=stack(0),
                   decoder_config=stack(256, sliding_window=window, cross_attention_config=connector(width, width),
                                        cross_attn_every_layer=True),
                   sliding_window=window)
