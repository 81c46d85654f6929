"""HAT generation with caches: equal to greedy decoding by full forwards over the re-split text,
word boundaries found online (multi-byte first characters included), stops, bad input; and, with a
scripted byte head, every step of the algorithm (backbone step, decoder crop and re-decode, end of text)."""

import dataclasses
import inspect

import pytest
import torch

from lmkernels.hat import HATBatch, HATConfig, HATModel, HATRuleSplitter
from lmkernels.hat.generate import _Session, generate

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


class ScriptedHead:
    """Replaces ``model.lm_head``'s forward so that the greedy bytes are ``script``: call i adds a large logit to
    byte ``script[i]`` in every row. Generation calls the head once per sampled byte (prefill included), a full
    forward once per model call, and both read only the last row, so both produce the script. ``rows`` collects
    the unforced last rows, the model's own logits for each byte."""

    def __init__(self, monkeypatch, model, script):
        self.script, self.rows = list(script), []
        original = model.lm_head.forward

        def forward(x):
            logits = original(x)
            self.rows.append(logits[-1].clone())
            forced = torch.zeros(logits.shape[-1], dtype=logits.dtype)
            forced[self.script[len(self.rows) - 1]] = 1e4
            return logits + forced

        monkeypatch.setattr(model.lm_head, "forward", forward)

    def take(self):
        """The recorded rows [calls, 256], then a fresh start of the script."""
        rows, self.rows = self.rows, []
        return torch.stack(rows) if rows else torch.zeros(0, 256)


def record_session(monkeypatch):
    """Wrap the generation steps: completed word lengths per connector + backbone step, (rows, first position)
    per decode, (decoder length before, kept length) per crop."""
    calls = {"words": [], "decode": [], "crop": []}
    words, decode, crop = _Session.words, _Session.decode, _Session.crop_decoder

    def recorded_words(self, states, word_cu, first_word, first_position):
        calls["words"].extend((word_cu[1:] - word_cu[:-1]).tolist())
        return words(self, states, word_cu, first_word, first_position)

    def recorded_decode(self, states, predictive, word_cu, first_position):
        calls["decode"].append((states.shape[0], first_position))
        return decode(self, states, predictive, word_cu, first_position)

    def recorded_crop(self, length):
        calls["crop"].append((len(self.decoder[0]), length))
        return crop(self, length)

    monkeypatch.setattr(_Session, "words", recorded_words)
    monkeypatch.setattr(_Session, "decode", recorded_decode)
    monkeypatch.setattr(_Session, "crop_decoder", recorded_crop)
    return calls


# After the prompt "Hi": a space boundary, two words whose first character takes three bytes (日 = E6 97 A5
# right after " ab", 本 right after 日), punctuation, more words; then the end-of-text byte and bytes after it.
SCRIPT = " ab日本 cd, ef".encode()


def test_scripted_generation_equals_full_forwards_at_every_byte(monkeypatch):
    model = tiny_model()
    head = ScriptedHead(monkeypatch, model, [*SCRIPT, EOS, *b"zz"])
    text = generate(model, "Hi", 40)
    cached = head.take()
    assert text == greedy_by_full_forward(model, "Hi", 40) == SCRIPT.decode()
    full = head.take()
    assert cached.shape == full.shape == (len(SCRIPT) + 1, 256)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)  # the model's own logits, byte by byte


def test_sliding_window_caches_stay_bounded_and_exact(monkeypatch):
    # Window 5 (6 keys): the encoder and decoder caches keep at most 2 * (6 + 3) rows however long the
    # text, crops after multi-byte first characters included; the backbone keeps every word.
    model = tiny_model()
    script = (" ab日本 cd, ef" * 5).encode()
    head = ScriptedHead(monkeypatch, model, [*script, EOS])
    sessions = []
    init = _Session.__init__

    def recorded_init(self, *args):
        init(self, *args)
        sessions.append(self)

    monkeypatch.setattr(_Session, "__init__", recorded_init)
    text = generate(model, "Hi", 200)
    cached = head.take()
    assert text == greedy_by_full_forward(model, "Hi", 200) == script.decode()
    torch.testing.assert_close(cached, head.take(), rtol=1e-5, atol=1e-5)
    (session,) = sessions
    for cache in session.encoder + session.decoder:
        assert cache.dropped > 0 and cache.keys.shape[1] <= 2 * (6 + 3) + 4
        assert len(cache) == cache.dropped + cache.keys.shape[1]
    assert all(cache.dropped == 0 for cache in session.backbone)


def test_scripted_boundaries_step_the_backbone_and_redecode_multi_byte_first_characters(monkeypatch):
    model = tiny_model()
    ScriptedHead(monkeypatch, model, [*SCRIPT, EOS])
    calls = record_session(monkeypatch)
    assert generate(model, "Hi", 40) == SCRIPT.decode()
    assert calls["words"] == [2, 3, 3, 3, 4]  # "Hi", " ab", "日", "本", " cd,": one backbone step per word
    # 日's first two bytes (positions 5, 6) and 本's (8, 9) were decoded with the old P: dropped, then decoded
    # again with the new P together with the byte that completed the character.
    assert [(before, kept) for before, kept in calls["crop"] if kept < before] == [(7, 5), (10, 8)]
    assert len(calls["crop"]) == 5
    assert calls["decode"][0] == (2, 0)  # the prompt
    assert [(rows, first) for rows, first in calls["decode"][1:] if rows > 1] == [(3, 5), (3, 8)]
    assert len(calls["decode"]) == len(SCRIPT) + 1


@pytest.mark.parametrize("script, expected", [([*b"ok", EOS, *b"zz"], "ok"), ([EOS, *b"zz"], ""),
                                              ([*"é".encode(), EOS, EOS], "é")])
def test_scripted_end_of_text_stops_and_is_not_returned(monkeypatch, script, expected):
    model = tiny_model()
    head = ScriptedHead(monkeypatch, model, script)
    assert generate(model, "Hi", 40) == expected
    assert len(head.take()) == len(expected.encode()) + 1  # no step after the end-of-text byte
    assert greedy_by_full_forward(model, "Hi", 40) == expected


def test_scripted_max_bytes_caps_the_output(monkeypatch):
    model = tiny_model()
    head = ScriptedHead(monkeypatch, model, [*SCRIPT, EOS])
    for max_bytes in (0, 1, 4, 5, 6, 9, len(SCRIPT) - 1):
        assert generate(model, "Hi", max_bytes) == SCRIPT[:max_bytes].decode(errors="replace")
        assert len(head.take()) == max_bytes + 1  # the prompt's logits, then one step per byte
    assert generate(model, "Hi", 6, stop=["b"]) == " a"


@pytest.mark.parametrize("script", ["bcdefghij", "bcéfg"])
def test_scripted_words_at_max_word_size_equal_full_forwards(monkeypatch, script):
    """A word reaching max_word_size ends there; the full forwards split as HATRuleSplitter (and training) do:
    "abcéfg" at 4 bytes is "abc", "éfg" (a character is not cut)."""
    torch.manual_seed(0)
    model = HATModel(dataclasses.replace(HATConfig.tiny(width=32, layers=2, window=5), max_word_size=4)).eval()
    head = ScriptedHead(monkeypatch, model, [*script.encode(), EOS])
    calls = record_session(monkeypatch)
    assert generate(model, "a", 20) == script
    cached = head.take()
    splitter = HATRuleSplitter(model.config.special_token_dict, 4)
    assert calls["words"] == [len(word) for word in splitter.encode("a" + script)[:-1]]  # the completed words
    assert greedy_by_full_forward(model, "a", 20) == script
    torch.testing.assert_close(cached, head.take(), rtol=1e-5, atol=1e-5)


def test_model_generate_method_equals_the_function():
    model = tiny_model()
    assert model.generate("Hello", 12) == generate(model, "Hello", 12)
    method, function = (inspect.signature(f).parameters for f in (HATModel.generate, generate))
    assert [(p.name, p.kind, p.default) for p in list(method.values())[1:]] == [
        (p.name, p.kind, p.default) for p in list(function.values())[1:]]  # the same arguments and defaults
    assert (model.generate("Hello", 12, temperature=1.0, seed=5)
            == generate(model, "Hello", 12, temperature=1.0, seed=5))
    text = generate(model, "Hello", 12)
    if len(text) > 3:
        assert model.generate("Hello", 12, stop=[text[2:4]]) == text[:text.index(text[2:4])]
    with pytest.raises(ValueError, match="max_bytes"):
        model.generate("Hello", -1)


@pytest.mark.parametrize("arguments, error, message", [
    (dict(stop=[""]), ValueError, "stop\\[0\\]: expected a non-empty"),
    (dict(stop=["a", 1]), TypeError, "stop\\[1\\]: expected a str"),
    (dict(stop=5), TypeError, "stop: expected a str, a sequence of str or None"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature="1"), TypeError, "temperature"),
    (dict(temperature=True), TypeError, "temperature"),
    (dict(seed="x", temperature=1.0), TypeError, "seed"),
    (dict(seed=2**64, temperature=1.0), ValueError, "seed"),
    (dict(splitter="x"), TypeError, "splitter"),
    (dict(max_bytes=True), TypeError, "max_bytes"),
    (dict(max_bytes=5.0), TypeError, "max_bytes"),
    (dict(prompt="a\ud800"), ValueError, "prompt: lone surrogate U\\+D800 at index 1"),
])
def test_bad_arguments_name_the_argument(arguments, error, message):
    model = tiny_model()
    arguments = {"prompt": "Hello", "max_bytes": 5, **arguments}
    with pytest.raises(error, match=message):
        generate(model, arguments.pop("prompt"), arguments.pop("max_bytes"), **arguments)


def test_a_bare_stop_string_is_one_stop_string_and_none_is_none(monkeypatch):
    model = tiny_model()
    head = ScriptedHead(monkeypatch, model, [*b"one two three", EOS])

    def scripted(**arguments):
        text = generate(model, "Hi", 40, **arguments)
        head.take()
        return text

    assert scripted(stop="two") == scripted(stop=["two"]) == "one "
    assert scripted(stop="ox") == "one two three"  # as a set of characters, it stopped at "o"
    assert scripted(stop=None) == scripted() == "one two three"


def test_a_special_token_spelled_by_generated_bytes_ends_words_at_its_raw_bytes(monkeypatch):
    """With a special token "EOT" that bytes can spell, the text "x EOT ab!" re-splits into "x", " ",
    "EOT" (one special byte), " ab!". Generation holds the raw bytes E, O, T: the word boundaries must
    fall around all three of them, not after the first (as a count of the re-split's one byte gave)."""
    torch.manual_seed(0)
    config = dataclasses.replace(HATConfig.tiny(width=32, layers=1, window=5),
                                 special_token_dict={"<|eot_id|>": EOS, "EOT": 200})
    model = HATModel(config).eval()
    ScriptedHead(monkeypatch, model, [*b"T ab!", EOS])
    calls = record_session(monkeypatch)
    assert generate(model, "x EO", 10) == "T ab!"
    assert calls["words"] == [1, 1, 3]  # "x" (prefill), " ", "EOT"; " ab!" is still open
