"""``HATConfig``: the schema of the released ``HATArchitectureConfig`` (its ``config.json``).

Three Llama-style stacks (encoder over bytes, backbone over words, decoder over bytes), each a
:class:`StackConfig`; the encoder and decoder carry a :class:`CrossAttentionConfig` for their word
connector. Unknown keys of a released file (``transformers_version``, ``auto_map``, ...) are
accepted and ignored, so ``HATConfig.from_dict(json.load(f))`` reads a checkpoint's config. Each
stack is a ``LlamaConfig`` in the released code, so a key a file omits takes ``LlamaConfig``'s
default (``rms_norm_eps`` 1e-6, ``rope_theta`` 10000, ``max_position_embeddings`` 2048,
``num_key_value_heads`` = ``num_attention_heads``, ``head_dim`` = ``hidden_size`` / heads). Those two
stay None in the fields when omitted and are resolved where used (:attr:`StackConfig.kv_heads`,
:attr:`StackConfig.head_size`), so ``dataclasses.replace`` of the width or the heads re-derives them
and ``to_dict`` writes back only what was given. A stack written by transformers >= 5 holds
``rope_parameters`` instead of ``rope_theta`` and ``rope_scaling``; it is read as those two.

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

from lmkernels._checks import check_int

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
    check_int(getattr(owner, name), name, minimum)


def _check_heads(heads_name: str, heads: int, kv_heads_name: str, kv_heads: int, head_dim: int) -> None:
    if heads % kv_heads:
        raise ValueError(f"{heads_name}: expected a multiple of {kv_heads_name} {kv_heads}, got {heads}")
    if head_dim % 2:
        raise ValueError(f"head_dim: expected an even head dimension (RoPE rotates pairs), got {head_dim}")


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
        _check_heads("num_attention_heads", self.num_attention_heads, "attention_num_kv_heads",
                     self.attention_num_kv_heads, self.head_dim)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class StackConfig:
    """One Llama-style stack (``LlamaConfig`` fields, with its defaults, plus HAT's)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    # The fields keep the order they have always had, so positional construction keeps its meaning
    # (head_dim, added later, comes last). num_key_value_heads may be omitted (LlamaConfig's None), so
    # intermediate_size after it needs a default too: None, refused in __post_init__.
    num_key_value_heads: int | None = None  # None: num_attention_heads (no grouping), see kv_heads
    intermediate_size: int | None = None  # required: None is refused (see above)
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
    head_dim: int | None = None  # None: hidden_size // num_attention_heads, see head_size

    def __post_init__(self):
        if self.intermediate_size is None:
            raise ValueError("intermediate_size: required (the MLP width), got None")
        if self.cross_attention_config is not None:
            self.cross_attention_config = _build(CrossAttentionConfig, self.cross_attention_config,
                                                 "cross_attention_config")
        for name, minimum in (("hidden_size", 1), ("num_hidden_layers", 0), ("num_attention_heads", 1),
                              ("intermediate_size", 1), ("vocab_size", 0)):
            _check_int(self, name, minimum)
        # The given values are checked but not overwritten with the derived ones: a field that
        # held the derived value would survive dataclasses.replace of the width or the heads.
        if self.num_key_value_heads is not None:
            _check_int(self, "num_key_value_heads", 1)
        if self.head_dim is not None:  # a given head_dim is honoured, as LlamaConfig does
            _check_int(self, "head_dim", 1)
        elif self.hidden_size % self.num_attention_heads:
            raise ValueError(f"num_attention_heads: expected a divisor of hidden_size {self.hidden_size} "
                             f"(or a head_dim), got {self.num_attention_heads}")
        _check_heads("num_attention_heads", self.num_attention_heads, "num_key_value_heads", self.kv_heads,
                     self.head_size)
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act: only 'silu' (SwiGLU) is supported, got {self.hidden_act!r}")
        if self.sliding_window is not None:
            _check_int(self, "sliding_window", 0)
        self.rope_scaling = _rope_scaling(self.rope_scaling)

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``num_key_value_heads``, or ``num_attention_heads`` when it is None."""
        return self.num_attention_heads if self.num_key_value_heads is None else self.num_key_value_heads

    @property
    def head_size(self) -> int:
        """Dimension of one head: ``head_dim``, or ``hidden_size // num_attention_heads`` when it is None."""
        return self.hidden_size // self.num_attention_heads if self.head_dim is None else self.head_dim

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


def _read_rope_parameters(values: Mapping, name: str) -> Mapping:
    """A stack dict with transformers >= 5's ``rope_parameters`` read as ``rope_theta`` and ``rope_scaling``.

    ``rope_parameters`` is ``{"rope_type", "rope_theta"}`` plus, for llama3, the keys of a llama3
    ``rope_scaling``. Where the dict also holds ``rope_theta`` or ``rope_scaling``, they must say the
    same: which one the released code would follow depends on the transformers version.
    """
    parameters = values.get("rope_parameters")
    if parameters is None:
        return values
    field_name = f"{name}.rope_parameters"
    if not isinstance(parameters, Mapping):
        raise TypeError(f"{field_name}: expected a dict, got {type(parameters).__name__}")
    missing = [key for key in ("rope_type", "rope_theta") if key not in parameters]
    if missing:
        raise ValueError(f"{field_name}: missing keys {missing}, got {dict(parameters)!r}")
    kind, theta = parameters["rope_type"], parameters["rope_theta"]
    if kind == "default":
        scaling = None
    elif kind == "llama3":
        scaling = {key: value for key, value in parameters.items() if key != "rope_theta"}
    else:
        raise ValueError(f"{field_name}: only rope_type 'llama3' (or 'default') is supported, got {kind!r}")
    if "rope_theta" in values and values["rope_theta"] != theta:
        raise ValueError(f"{field_name}: rope_theta {theta!r} disagrees with the stack's rope_theta "
                         f"{values['rope_theta']!r}")
    if "rope_scaling" in values and _normal_scaling(values["rope_scaling"], name) != _normal_scaling(scaling, name):
        raise ValueError(f"{field_name}: {dict(parameters)!r} disagrees with the stack's rope_scaling "
                         f"{values['rope_scaling']!r}")
    return {**{key: value for key, value in values.items() if key != "rope_parameters"},
            "rope_theta": theta, "rope_scaling": scaling}


def _normal_scaling(scaling, name: str) -> dict | None:
    """``scaling`` as :func:`_rope_scaling` reads it, with ``type`` spelt ``rope_type``: one form for two spellings."""
    try:
        scaling = _rope_scaling(scaling)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{name}.{error}") from None
    if scaling is None:
        return None
    return {("rope_type" if key == "type" else key): value for key, value in scaling.items()}


@dataclass
class HATConfig:
    encoder_config: StackConfig
    backbone_config: StackConfig
    decoder_config: StackConfig
    special_token_dict: dict[str, int] = field(default_factory=lambda: {"<|eot_id|>": 192})
    eos_token_id: int = 192
    max_word_size: int = 100
    sliding_window: int | None = 768  # unused here (vLLM's cache sizing); None as the stacks allow
    max_position_embeddings: int = 262144

    def __post_init__(self):
        for name in ("encoder_config", "backbone_config", "decoder_config"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                value = _read_rope_parameters(value, name)
            setattr(self, name, _build(StackConfig, value, name))
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
        if self.sliding_window is not None:
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
