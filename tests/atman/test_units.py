"""Perturbation units: granularities, custom spans, auto, and bad spans."""

import pytest

from lmkernels.atman import Tokens, build_units
from lmkernels.atman.tokens import byte_tokens

TEXT = "Hello world. This is fine!\nNext line.\n\nSecond paragraph here."


def _labels(units):
    return [unit.label for unit in units]


def test_token_units_cover_every_prompt_token():
    tokens = byte_tokens("aé b")
    units = build_units(tokens, "token")
    assert [unit.positions for unit in units] == [(0,), (1,), (2,), (3,), (4,)]  # é is two bytes
    assert _labels(units) == ["a", "é", "é", " ", "b"]


def test_text_granularities():
    tokens = byte_tokens(TEXT)
    assert _labels(build_units(tokens, "word")) == ["Hello ", "world. ", "This ", "is ", "fine!\n", "Next ",
                                                    "line.\n\n", "Second ", "paragraph ", "here."]
    assert _labels(build_units(tokens, "sentence")) == ["Hello world. ", "This is fine!\n", "Next line.\n\n",
                                                        "Second paragraph here."]
    assert _labels(build_units(tokens, "paragraph")) == ["Hello world. This is fine!\nNext line.\n\n",
                                                         "Second paragraph here."]
    for granularity in ("word", "sentence", "paragraph"):
        positions = [p for unit in build_units(tokens, granularity) for p in unit.positions]
        assert positions == list(range(len(tokens)))  # a partition, in order


def test_leading_whitespace_joins_the_first_unit_and_special_tokens_are_left_out():
    tokens = Tokens((1, 2, 3, 4), "  ab", ((0, 0), (0, 2), (2, 3), (3, 4)), (True, False, False, False))
    assert [unit.positions for unit in build_units(tokens, "word")] == [(1, 2, 3)]
    assert [unit.positions for unit in build_units(tokens, "token")] == [(1,), (2,), (3,)]


def test_auto_picks_the_count_nearest_30():
    words = " ".join(f"w{i}" for i in range(30))
    assert len(build_units(byte_tokens(words), "auto")) == 30  # words, not 89 bytes
    assert len(build_units(byte_tokens("abc"), "auto")) == 3
    ids = Tokens(tuple(range(95)))
    units = build_units(ids, "auto")
    assert len(units) == 24 and units[0].positions == (0, 1, 2, 3) and units[-1].positions == (92, 93, 94)


def test_custom_spans_and_their_errors():
    tokens = Tokens(tuple(range(10)))
    assert [unit.positions for unit in build_units(tokens, [(0, 2), (5, 6)])] == [(0, 1), (5,)]
    with pytest.raises(IndexError, match="units"):
        build_units(tokens, [(8, 11)])
    with pytest.raises(IndexError, match="units"):
        build_units(tokens, [(3, 3)])
    with pytest.raises(IndexError, match="units"):
        build_units(tokens, [(-1, 2)])
    with pytest.raises(ValueError, match="overlap"):
        build_units(tokens, [(0, 4), (3, 5)])
    with pytest.raises(TypeError, match="units"):
        build_units(tokens, [1, 2])
    with pytest.raises(ValueError, match="units"):
        build_units(tokens, "letters")
    with pytest.raises(ValueError, match="needs the prompt as text"):
        build_units(tokens, "word")
    with pytest.raises(ValueError, match="no word unit"):
        build_units(byte_tokens("   "), "word")


def test_target_units_follow_the_prompts_and_keep_their_own_offsets():
    prompt, target = byte_tokens("Hello wor"), byte_tokens("ld. Bye now!")
    inputs = target.first(len(target) - 1)  # the last target token is never an input
    units = build_units(prompt, "word", inputs)
    # a word running on from the prompt into the target becomes two units, one on each side
    assert [(unit.label, unit.in_target) for unit in units] == [
        ("Hello ", False), ("wor", False), ("ld. ", True), ("Bye ", True), ("now", True)]
    assert units[2].positions == (9, 10, 11, 12) and units[-1].positions == (17, 18, 19)
    assert _labels(build_units(prompt, "sentence", inputs)) == ["Hello wor", "ld. ", "Bye now"]
    tokens = build_units(prompt, "token", inputs)
    assert [unit.positions for unit in tokens] == [(i,) for i in range(20)] and sum(u.in_target for u in tokens) == 11
    assert build_units(prompt, "word", byte_tokens("!").first(0)) == build_units(prompt, "word")


def test_target_units_auto_and_custom_spans():
    words = " ".join(f"w{i}" for i in range(20))
    # 20 + 10 words: "auto" counts prompt and target units together
    assert len(build_units(byte_tokens(words), "auto", byte_tokens(" " + words[:29] + ".").first(30))) == 30
    ids = build_units(Tokens(tuple(range(50))), "auto", Tokens(tuple(range(11))))  # chunks of 3, none across
    assert [unit.positions for unit in ids][-6:] == [(45, 46, 47), (48, 49), (50, 51, 52), (53, 54, 55),
                                                      (56, 57, 58), (59, 60)]
    assert [unit.in_target for unit in ids][-6:] == [False, False, True, True, True, True]
    prompt, target = Tokens(tuple(range(4))), Tokens((7, 8, 9))
    custom = build_units(prompt, [(1, 3), (4, 6), (6, 7)], target)
    assert [(u.positions, u.label, u.in_target) for u in custom] == [
        ((1, 2), "<1> <2>", False), ((4, 5), "<7> <8>", True), ((6,), "<9>", True)]
    with pytest.raises(ValueError, match="crosses the prompt/target boundary at token 4"):
        build_units(prompt, [(3, 5)], target)
    with pytest.raises(IndexError, match="outside prompt ⊕ target"):
        build_units(prompt, [(6, 8)], target)
    with pytest.raises(ValueError, match="needs the target as text"):
        build_units(byte_tokens("ab"), "word", target)
