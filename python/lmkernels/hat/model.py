"""``HATModel``: the released Hierarchical Autoregressive Transformer, over packed byte sequences.

    H   = encoder(byte_embedding(bytes))            sliding-window causal, byte positions, no final norm
    e_i = connector(latent_query; H[bytes of word i])  one query per word (word_attention)
    b   = backbone(e)                               causal over words, word positions, no norm, no head
    P_i = b_{i-1}, P_0 = first_word_embedding       shift right by one word, per sequence
    D   = decoder(H, P)                             per layer: H += guide(kv_norm(P_word)); Llama layer
    logits = lm_head(layer_norm(D))                 next-byte logits over 256 values

The decoder state at the last byte of word i predicts the first byte of word i + 1 from P_i =
b_{i-1}: the backbone runs once per word, after the byte that reveals the boundary.
Weight names are those of the released checkpoints (:meth:`HATModel.from_pretrained`);
:meth:`HATModel.generate` continues a prompt with three KV caches (``lmkernels.hat.generate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from lmkernels.hat.config import HATConfig
from lmkernels.hat.layers import CrossAttention, DecoderBlock, LlamaLayer
from lmkernels.nn.rms_norm import RMSNorm
from lmkernels.nn.rotary import RotaryEmbedding

if TYPE_CHECKING:
    from lmkernels.hat.splitter import HATRuleSplitter


_FIELDS = ("bytes", "word_cu", "sequence_bytes", "sequence_words")
# Every integer dtype but int64 itself. uint64 values above int64's range wrap to negative values,
# which check() refuses in every field (bytes and boundaries are never negative): no valid batch
# changes in the conversion.
_CONVERTED_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.uint16, torch.uint32, torch.uint64)


@dataclass
class HATBatch:
    """Packed sequences: ``bytes`` [T], their words ``word_cu`` [W + 1], and the sequences as byte
    ranges ``sequence_bytes`` [N + 1] and word ranges ``sequence_words`` [N + 1].

    All four are 1-D integer tensors on one device, kept as int64: tensors of the other integer
    dtypes (int8 to int32, uint8 to uint64; such as ``split_batch``'s uint8 bytes) are converted when
    the batch is built. Bool, float and complex tensors are refused.
    """

    bytes: Tensor
    word_cu: Tensor
    sequence_bytes: Tensor
    sequence_words: Tensor

    def __post_init__(self):
        for name in _FIELDS:
            value = getattr(self, name)
            if isinstance(value, Tensor) and value.dtype in _CONVERTED_DTYPES:
                setattr(self, name, value.long())

    @classmethod
    def from_words(cls, sequences: list[list[bytes]], device=None) -> HATBatch:
        """Pack already split sequences (lists of words, each word its UTF-8 bytes)."""
        if not sequences or any(not words for words in sequences):
            raise ValueError("sequences: expected at least one sequence, each with at least one word")
        for s, sequence in enumerate(sequences):
            for w, word in enumerate(sequence):
                if not isinstance(word, (bytes, bytearray, memoryview)):
                    raise TypeError(f"sequences[{s}][{w}]: expected bytes, got {type(word).__name__}")
                if not word:
                    raise ValueError(f"sequences[{s}][{w}]: words must not be empty")
        words = [word for sequence in sequences for word in sequence]
        stream = b"".join(words)
        lengths = torch.tensor([len(word) for word in words])
        word_cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        sequence_words = torch.tensor([0, *torch.tensor([len(s) for s in sequences]).cumsum(0).tolist()])
        return cls(bytes=torch.frombuffer(bytearray(stream), dtype=torch.uint8).long().to(device),
                   word_cu=word_cu.to(device), sequence_bytes=word_cu[sequence_words].to(device),
                   sequence_words=sequence_words.to(device))

    def check(self, max_word_size: int) -> None:
        """Raise TypeError or ValueError, naming the field, unless the batch is well formed: at least
        one byte, words of 1 to ``max_word_size`` bytes covering the bytes, sequences of at least one
        whole word covering the words, byte values in [0, 255]."""
        for name in _FIELDS:
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
            if value.dtype != torch.int64:
                raise TypeError(f"{name}: expected int64 values (int8 to int32 and uint8 to uint64 are converted "
                                f"when the batch is built), got {value.dtype}")
            if value.dim() != 1:
                raise ValueError(f"{name}: expected 1 dimension, got shape {list(value.shape)}")
            if value.device != self.bytes.device:
                raise ValueError(f"{name}: expected the device of bytes ({self.bytes.device}), got {value.device}")
        total = self.bytes.shape[0]
        if total == 0:
            raise ValueError("bytes: expected at least one byte")
        if bool((self.bytes < 0).any()) or bool((self.bytes > 255).any()):
            raise ValueError("bytes: expected values in [0, 255]")
        lengths = self.word_cu.diff()
        if (self.word_cu.shape[0] < 2 or self.word_cu[0] != 0 or self.word_cu[-1] != total
                or bool((lengths < 1).any())):
            raise ValueError(f"word_cu: expected increasing word boundaries from 0 to {total}")
        if int(lengths.max()) > max_word_size:
            raise ValueError(f"word_cu: a word of {int(lengths.max())} bytes exceeds max_word_size {max_word_size}")
        if (self.sequence_words.shape[0] < 2 or self.sequence_words[0] != 0
                or self.sequence_words[-1] != lengths.shape[0] or bool((self.sequence_words.diff() < 1).any())):
            raise ValueError(f"sequence_words: expected increasing word boundaries from 0 to {lengths.shape[0]} "
                             "(every sequence at least one word)")
        if not torch.equal(self.word_cu[self.sequence_words], self.sequence_bytes):
            raise ValueError("sequence_bytes: expected the byte boundaries of sequence_words (word_cu[sequence_words])")

    def positions(self) -> tuple[Tensor, Tensor]:
        """Byte positions [T] and word positions [W], each counted from its sequence's start."""
        return (_positions(self.sequence_bytes, self.bytes.shape[0]),
                _positions(self.sequence_words, self.word_cu.shape[0] - 1))


def _positions(cu_seqlens: Tensor, total: int) -> Tensor:
    starts = torch.repeat_interleave(cu_seqlens[:-1], cu_seqlens[1:] - cu_seqlens[:-1], output_size=total)
    return torch.arange(total, device=cu_seqlens.device) - starts


class Encoder(torch.nn.Module):
    def __init__(self, config: HATConfig):
        super().__init__()
        stack = config.encoder_config
        self.embedding_layer = torch.nn.Embedding(stack.vocab_size, stack.hidden_size)
        self.layers = torch.nn.ModuleList(LlamaLayer(stack) for _ in range(stack.num_hidden_layers))

    def forward(self, batch: HATBatch, byte_positions: Tensor) -> Tensor:
        h = self.embedding_layer(batch.bytes)
        for layer in self.layers:
            h = layer(h, byte_positions, batch.sequence_bytes)
        return h


class EncoderConnector(torch.nn.Module):
    def __init__(self, config: HATConfig):
        super().__init__()
        backbone_width = config.backbone_config.hidden_size
        self.latent_query = torch.nn.Parameter(torch.randn(1, 1, backbone_width) * backbone_width ** -0.5)
        self.cross_attention_encoder_connector = CrossAttention(config.encoder_config.cross_attention_config,
                                                                config.encoder_config)

    def forward(self, byte_states: Tensor, batch: HATBatch, word_positions: Tensor, byte_positions: Tensor) -> Tensor:
        return self.cross_attention_encoder_connector.word_embeddings(
            self.latent_query[0, 0], byte_states, batch.word_cu, word_positions, byte_positions)


class Backbone(torch.nn.Module):
    def __init__(self, config: HATConfig):
        super().__init__()
        self.layers = torch.nn.ModuleList(LlamaLayer(config.backbone_config)
                                          for _ in range(config.backbone_config.num_hidden_layers))

    def forward(self, words: Tensor, word_positions: Tensor, sequence_words: Tensor) -> Tensor:
        for layer in self.layers:
            words = layer(words, word_positions, sequence_words)
        return words


class DecoderConnector(torch.nn.Module):
    def __init__(self, config: HATConfig):
        super().__init__()
        width = config.backbone_config.hidden_size
        self.first_word_embedding = torch.nn.Parameter(torch.randn(1, 1, width) * width ** -0.5)

    def forward(self, backbone_out: Tensor, sequence_words: Tensor) -> Tensor:
        """P_i = b_{i-1} within each sequence, the first word of each sequence getting the learned vector."""
        predictive = backbone_out.roll(1, dims=0)
        firsts = sequence_words[:-1]
        return predictive.index_put((firsts,), self.first_word_embedding[0, 0].to(predictive.dtype))


class Decoder(torch.nn.Module):
    def __init__(self, config: HATConfig):
        super().__init__()
        stack = config.decoder_config
        self.decoder_layers = torch.nn.ModuleList(
            DecoderBlock(stack, stack.cross_attn_every_layer or i == 0) for i in range(stack.num_hidden_layers))

    def forward(self, byte_states: Tensor, predictive: Tensor, batch: HATBatch, byte_positions: Tensor) -> Tensor:
        h = byte_states
        for block in self.decoder_layers:
            h = block(h, predictive, batch.word_cu, byte_positions, batch.sequence_bytes)
        return h


class HATModel(torch.nn.Module):
    def __init__(self, config: HATConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.encoder_connector = EncoderConnector(config)
        self.backbone = Backbone(config)
        self.decoder_connector = DecoderConnector(config)
        self.decoder = Decoder(config)
        self.layer_norm = RMSNorm(config.decoder_config.hidden_size, config.decoder_config.rms_norm_eps)
        self.lm_head = torch.nn.Linear(config.decoder_config.hidden_size, config.decoder_config.vocab_size,
                                       bias=False)

    def forward(self, batch: HATBatch) -> Tensor:
        """Next-byte logits [T, 256] for a packed batch."""
        if not torch.compiler.is_compiling():  # its value checks would break the graph at every bool()
            batch.check(self.config.max_word_size)
        byte_positions, word_positions = batch.positions()
        byte_states = self.encoder(batch, byte_positions)
        words = self.encoder_connector(byte_states, batch, word_positions, byte_positions)
        backbone_out = self.backbone(words, word_positions, batch.sequence_words)
        predictive = self.decoder_connector(backbone_out, batch.sequence_words)
        decoded = self.decoder(byte_states, predictive, batch, byte_positions)
        return self.lm_head(self.layer_norm(decoded))

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype = torch.bfloat16) -> HATModel:
        """Load a released checkpoint directory (``config.json`` and ``*.safetensors``, the ``hf`` extra)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config = HATConfig.from_json(directory / "config.json")
        state = {}
        for path in sorted(directory.glob("*.safetensors")):
            state.update(load_file(path))
        if not state:
            raise FileNotFoundError(f"directory: no *.safetensors files in {directory}")
        # Built on the meta device, the parameters are the loaded tensors themselves: no random
        # initialisation and no fp32 copy (an 8B checkpoint would otherwise need 32 GB more).
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(state, strict=True, assign=True)
        for module in model.modules():
            if isinstance(module, RotaryEmbedding):
                module.materialize()
        return model.to(dtype)

    def generate(self, prompt: str, max_bytes: int = 256, *, temperature: float = 0.0,
                 stop: str | Sequence[str] | None = None, seed: int | None = None,
                 splitter: HATRuleSplitter | None = None) -> str:
        """Continue ``prompt`` by up to ``max_bytes`` bytes (greedy when ``temperature`` is 0) and return the
        continuation as text: :func:`lmkernels.hat.generate.generate` on this model, with the same arguments."""
        from lmkernels.hat.generate import generate

        return generate(self, prompt, max_bytes, temperature=temperature, stop=stop, seed=seed, splitter=splitter)


def hat_loss(logits: Tensor, batch: HATBatch) -> Tensor:
    """Mean next-byte cross-entropy: byte t predicts byte t + 1 of the same sequence.

    Raises ValueError when no byte has a next byte (every sequence is one byte long): the mean over
    no targets is undefined, and such a batch is more likely a data bug than a training step.
    """
    targets = batch.bytes.roll(-1)
    last = batch.sequence_bytes[1:] - 1
    if last.shape[0] >= targets.shape[0]:
        raise ValueError(f"batch: no byte to predict (its {last.shape[0]} sequences hold {targets.shape[0]} bytes: "
                         "each is one byte long, and the last byte of a sequence predicts nothing)")
    mask = torch.ones_like(targets, dtype=torch.bool).index_fill(0, last, False)
    return F.cross_entropy(logits[mask].float(), targets[mask])
