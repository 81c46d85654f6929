"""``generate``: HAT text generation with online word boundaries and three KV caches.

The released algorithm (the HF reference's ``_generate_cached``):

1. Split the prompt into words (``HATRuleSplitter``: special tokens become one-byte words). Every
   word but the last is complete: encoder, connector, backbone and decoder prefill them; the last
   word's bytes go through encoder and decoder with P = the backbone output of the word before.
2. Per byte: sample from the last logits; append the byte to the current word; decode that word
   strictly as UTF-8 and re-split it. An incomplete multi-byte character keeps the byte in the
   word; two or more words (or a word at ``max_word_size``) mean a boundary.
3. On a boundary the completed word's encoder states go through the connector, the backbone takes
   one step (its KV cache), and its output is the P of the new word. When the new word already
   holds several bytes (it starts with a multi-byte character), their decoder rows were computed
   with the old P: the decoder cache is cropped and they are decoded again with the new P, as in
   training.
4. Stop at the end-of-text byte (192 by default), after ``max_bytes`` bytes, or at a stop string.

Every step attends through ``lmkernels.ops.attention`` over the caches (sliding windows included).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from lmkernels._checks import check_int
from lmkernels.hat.layers import LayerCache
from lmkernels.hat.model import HATModel
from lmkernels.hat.splitter import HATRuleSplitter


class _Session:
    """The three caches of one sequence and the steps that extend them."""

    def __init__(self, model: HATModel):
        self.model = model
        self.encoder = [LayerCache(layer.self_attn.window) for layer in model.encoder.layers]
        self.backbone = [LayerCache(layer.self_attn.window) for layer in model.backbone.layers]
        self.decoder = [LayerCache(block.llama_layer.self_attn.window) for block in model.decoder.decoder_layers]
        self.device = model.lm_head.weight.device

    def encode(self, byte_values: Sequence[int], first_position: int) -> Tensor:
        ids = torch.tensor(list(byte_values), dtype=torch.long, device=self.device)
        positions = torch.arange(first_position, first_position + len(byte_values), device=self.device)
        h = self.model.encoder.embedding_layer(ids)
        for layer, cache in zip(self.model.encoder.layers, self.encoder):
            h = layer.step(h, positions, cache)
        return h

    def words(self, states: Tensor, word_cu: Tensor, first_word: int, first_position: int) -> Tensor:
        """Connector then backbone for complete words whose encoder states are ``states``."""
        count = word_cu.shape[0] - 1
        word_positions = torch.arange(first_word, first_word + count, device=self.device)
        byte_positions = torch.arange(first_position, first_position + states.shape[0], device=self.device)
        connector = self.model.encoder_connector
        e = connector.cross_attention_encoder_connector.word_embeddings(
            connector.latent_query[0, 0], states, word_cu, word_positions, byte_positions)
        for layer, cache in zip(self.model.backbone.layers, self.backbone):
            e = layer.step(e, word_positions, cache)
        return e

    def decode(self, states: Tensor, predictive: Tensor, word_cu: Tensor, first_position: int) -> Tensor:
        positions = torch.arange(first_position, first_position + states.shape[0], device=self.device)
        h = states
        for block, cache in zip(self.model.decoder.decoder_layers, self.decoder):
            h = block(h, predictive, word_cu, positions, None, cache=cache)
        return self.model.lm_head(self.model.layer_norm(h))

    def crop_decoder(self, length: int) -> None:
        for cache in self.decoder:
            cache.crop(length)


def _boundaries(lengths: Sequence[int], device) -> Tensor:
    return torch.tensor([0, *torch.tensor(list(lengths), dtype=torch.long).cumsum(0).tolist()], device=device)


def _sample(logits: Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature == 0:
        return int(logits.argmax())
    probabilities = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probabilities.cpu(), 1, generator=generator))


def _whole_characters(word: list[int]) -> int:
    """The length of the longest prefix of ``word`` (UTF-8 bytes) that ends between two characters;
    all of ``word`` where it has none shorter."""
    for back in range(1, min(4, len(word)) + 1):
        lead = word[-back]
        if lead & 0xC0 != 0x80:  # the last character's first byte
            length = 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF8 else 1
            return len(word) - back if back < length and back < len(word) else len(word)
    return len(word)


def _raw_length(candidate: list[int], first_word: list[int], token_lengths: dict[int, int]) -> int:
    """How many bytes of ``candidate`` make up ``first_word``, the first word of its re-split. The two
    count differently where generated bytes spell a special token, which the re-split holds as its
    one byte: lengths are compared in text bytes (a special byte counting as its token's)."""
    target = sum(token_lengths.get(value, 1) for value in first_word)
    covered = 0
    for count, value in enumerate(candidate):
        if covered >= target:
            return count
        covered += token_lengths.get(value, 1)
    return len(candidate)


def _check_text(text: object, name: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name}: expected a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{name}: lone surrogate U+{ord(text[error.start]):04X} at index {error.start} "
                         "(not encodable as UTF-8)") from None


def _stop_strings(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    elif not isinstance(stop, Iterable):
        raise TypeError(f"stop: expected a str, a sequence of str or None, got {type(stop).__name__}")
    stop = tuple(stop)
    for i, text in enumerate(stop):
        _check_text(text, f"stop[{i}]")
        if not text:
            raise ValueError(f"stop[{i}]: expected a non-empty stop string")
    return stop


@torch.no_grad()
def generate(model: HATModel, prompt: str, max_bytes: int = 256, *, temperature: float = 0.0,
             stop: str | Sequence[str] | None = None, seed: int | None = None,
             splitter: HATRuleSplitter | None = None) -> str:
    """Continue ``prompt`` by up to ``max_bytes`` bytes; greedy when ``temperature`` is 0.

    ``stop`` is one stop string or several (None: none). Returns the continuation as text (special
    bytes as their token strings, invalid UTF-8 replaced), without the end-of-text byte and cut
    before the first stop string. Raises TypeError or ValueError naming the bad argument.
    """
    _check_text(prompt, "prompt")
    check_int(max_bytes, "max_bytes", 0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature: expected a number, got {type(temperature).__name__}")
    if not temperature >= 0:
        raise ValueError(f"temperature: expected a number >= 0 (0: greedy), got {temperature}")
    stop = _stop_strings(stop)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        if not -2**63 <= seed < 2**64:
            raise ValueError(f"seed: expected an int in [-2**63, 2**64), got {seed}")
    if splitter is not None and not isinstance(splitter, HATRuleSplitter):
        raise TypeError(f"splitter: expected a HATRuleSplitter or None, got {type(splitter).__name__}")
    config = model.config
    if splitter is None:
        splitter = HATRuleSplitter(config.special_token_dict, config.max_word_size)
    token_lengths = {byte: len(token.encode()) for token, byte in splitter.special_tokens.items()}
    words = splitter.encode(prompt)
    if not words:
        raise ValueError("prompt: expected at least one byte")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    session = _Session(model)
    device = session.device

    prompt_bytes = [b for word in words for b in word]
    states = session.encode(prompt_bytes, 0)
    word_cu = _boundaries([len(w) for w in words], device)
    first = model.decoder_connector.first_word_embedding[0].to(states.dtype)  # [1, d_b]
    complete = int(word_cu[-2])
    backbone_out = session.words(states[:complete], word_cu[:-1], 0, 0) if len(words) > 1 else first[:0]
    predictive = torch.cat([first, backbone_out])  # P_0 = first word embedding, P_i = b_{i-1}
    logits = session.decode(states, predictive, word_cu, 0)[-1]

    current, current_states = list(words[-1]), states[complete:]
    current_predictive, word_index, seen = predictive[-1:], len(words) - 1, len(prompt_bytes)
    generated: list[int] = []
    while len(generated) < max_bytes:
        byte = _sample(logits, temperature, generator)
        if byte == config.eos_token_id:
            break
        generated.append(byte)
        if stop and any(s in splitter.decode(generated, errors="replace") for s in stop):
            break
        candidate = current + [byte]
        try:
            resplit = splitter.encode(splitter.decode(candidate, errors="strict"))
        except UnicodeDecodeError:
            resplit = None
        full = len(current) >= config.max_word_size
        if full or (resplit is not None and len(resplit) > 1):
            # Where the splitter ends the word: at a word boundary, or at the size limit, which it
            # never places inside a character (those bytes then start the next word, re-decoded).
            done = (_raw_length(candidate, resplit[0], token_lengths) if resplit is not None and len(resplit) > 1
                    else _whole_characters(current))
            word_cu = torch.tensor([0, done], device=device)
            current_predictive = session.words(current_states[:done], word_cu, word_index, seen - len(current))
            word_index += 1
            refed = len(current) - done  # bytes of the new word decoded with the old P
            session.crop_decoder(seen - refed)
            new_states = torch.cat([current_states[done:], session.encode([byte], seen)])
            logits = session.decode(new_states, current_predictive, torch.tensor([0, new_states.shape[0]],
                                                                                 device=device), seen - refed)[-1]
            current, current_states = candidate[done:], new_states
        else:
            new_state = session.encode([byte], seen)
            logits = session.decode(new_state, current_predictive, torch.tensor([0, 1], device=device), seen)[-1]
            current.append(byte)
            current_states = torch.cat([current_states, new_state])
        seen += 1
    text = splitter.decode(generated, errors="replace")
    cut = min((text.index(s) for s in stop if s in text), default=len(text))
    return text[:cut]
