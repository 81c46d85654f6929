"""HAT generation with caches: equal to greedy decoding by full forwards over the re-split text,
word boundaries found online (multi-byte first characters included), stops, bad input."""

import pytest
import torch

from lmkernels.hat import HATBatch, HATConfig, HATModel, HATRuleSplitter
from lmkernels.hat.generate import generate

EOS = 192


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return HATModel(HATConfig.tiny(width=32, layers=2, window=5)).eval()


def words_of(byte_values, splitter):
    """The split generation sees: the longest decodable prefix split into words, any trailing bytes of
    an incomplete character kept in its last word."""
    for end in range(len(byte_values), -1, -1):
        try:
            text = splitter.decode(byte_values[:end], errors="strict")
            break
        except UnicodeDecodeError:
            continue
    words = splitter.encode(text)
    words[-1] = words[-1] + list(byte_values[end:])
    return [bytes(w) for w in words]


def greedy_by_full_forward(model, prompt, max_bytes):
    splitter = HATRuleSplitter(model.config.special_token_dict, model.config.max_word_size)
    context = [b for word in splitter.encode(prompt) for b in word]
    generated = []
    with torch.no_grad():
        for _ in range(max_bytes):
            logits = model(HATBatch.from_words([words_of(context + generated, splitter)]))
            byte = int(logits[-1].argmax())
            if byte == EOS:
                break
            generated.append(byte)
    return splitter.decode(generated, errors="replace")


@pytest.mark.parametrize("seed, prompt", [(0, "Hello world, this is"), (1, "Größe 日本"), (2, "a<|eot_id|>b"),
                                          (3, "x")])
def test_cached_generation_equals_full_forwards(seed, prompt):
    model = tiny_model(seed)
    assert generate(model, prompt, 24) == greedy_by_full_forward(model, prompt, 24)


def test_stop_strings_and_limits():
    model = tiny_model()
    text = generate(model, "Hello", 30)
    assert generate(model, "Hello", 0) == ""
    assert generate(model, "Hello", 5) == text[:len(generate(model, "Hello", 5))]
    if len(text) > 3:
        assert generate(model, "Hello", 30, stop=[text[2:4]]) == text[:text.index(text[2:4])]


def test_sampling_is_seeded():
    model = tiny_model()
    a = generate(model, "Hello", 20, temperature=1.0, seed=3)
    assert a == generate(model, "Hello", 20, temperature=1.0, seed=3)


def test_bad_input():
    model = tiny_model()
    with pytest.raises(ValueError, match="prompt"):
        generate(model, "", 5)
    with pytest.raises(TypeError, match="prompt"):
        generate(model, b"bytes", 5)
    with pytest.raises(ValueError, match="max_bytes"):
        generate(model, "a", -1)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, "a", 5, temperature=-1.0)
