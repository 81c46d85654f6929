"""The HAT reference script: noise, windows, and a smoke run of ``lmk hat train`` end to end."""

import subprocess
import sys

import pytest

from lmkernels.hat.train import TrainSettings, _same_size_causal_lm, add_noise, run, train_hat, word_windows
from lmkernels.nn import CausalLM, DecoderConfig


def test_noise_levels():
    text = "The quick brown fox jumps over the lazy dog. " * 20
    assert add_noise(text, 0.0) == text
    noisy = add_noise(text, 0.1, seed=1)
    assert noisy != text and abs(len(noisy) - len(text)) < 0.1 * len(text)
    assert add_noise(text, 0.1, seed=1) == noisy


def test_word_windows_keep_whole_words_within_the_budget():
    words = [b"a" * n for n in (3, 4, 5, 9, 1, 2, 2)]
    windows = word_windows(words, 10)
    assert all(sum(map(len, w)) <= 10 and len(w) > 1 for w in windows)
    assert windows == [[words[0], words[1]], [words[3], words[4]], [words[5], words[6]]]  # [5] alone is dropped


def test_the_bpe_peer_has_the_layer_count_closest_to_the_hat_size():
    def parameters(model):
        return sum(p.numel() for p in model.parameters())

    one, two, three = (parameters(CausalLM(512, DecoderConfig(dim=64, num_layers=layers, num_heads=2)))
                       for layers in (1, 2, 3))
    middle = (one + two) // 2
    for target, expected in ((0, one), (middle - 1, one), (middle + 1, two), (two, two), (three + 1000, three)):
        assert parameters(_same_size_causal_lm(512, 64, target)) == expected


def test_lmk_hat_train_smoke(tmp_path):
    text = tmp_path / "text.txt"
    paragraphs = [f"Paragraph {i} says hello to the world and counts {i * 7} apples." for i in range(40)]
    text.write_text("\n\n".join(paragraphs))
    run = subprocess.run([sys.executable, "-m", "lmkernels.cli", "hat", "train", "--text", str(text), "--steps", "2",
                          "--width", "32", "--seq-bytes", "64", "--batch-size", "2", "--bpe-vocab", "300",
                          "--prompt", "Hi"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "bytes per word" in run.stdout and "nats per byte" in run.stdout and "sample: 'Hi'" in run.stdout


@pytest.mark.parametrize("flag, message", [("--steps=0", "argument --steps: expected an integer >= 1, got 0"),
                                           ("--batch-size=0", "argument --batch-size: expected an integer >= 1"),
                                           ("--seq-bytes=1", "argument --seq-bytes: expected an integer >= 2"),
                                           ("--prompt=", "argument --prompt: expected a non-empty prompt")])
def test_lmk_hat_train_rejects_bad_flags_before_training(capsys, flag, message):
    from lmkernels.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["hat", "train", "--no-bpe", flag])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [(dict(steps=0), "steps"), (dict(batch_size=0), "batch_size"),
                                             (dict(seq_bytes=1), "seq_bytes")])
def test_bad_settings_name_the_setting(change, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(**change)


def test_bad_prompts_and_windows_are_reported_before_training():
    text = "One two three four five six seven."
    with pytest.raises(ValueError, match="prompts\\[1\\]: expected a non-empty prompt"):
        run(text, text, TrainSettings(steps=1, bpe_vocab=None), prompts=("Hi", ""), log=lambda line: None)
    with pytest.raises(ValueError, match="seq_bytes: no training window"):
        train_hat(text, TrainSettings(seq_bytes=5, steps=1), log=lambda line: None)
    with pytest.raises(ValueError, match="text: no training window"):
        train_hat("", TrainSettings(steps=1), log=lambda line: None)


def test_no_held_out_text_reports_no_loss_rather_than_zero():
    lines = []
    paragraph = " ".join(f"word{i}" for i in range(60))
    settings = TrainSettings(width=32, steps=2, seq_bytes=64, batch_size=2, warmup=1, bpe_vocab=None)
    result = run(paragraph, "", settings, log=lines.append)
    assert result.hat_nats_per_byte == {}
    assert any("held-out loss: not measured" in line for line in lines)
    assert not any("0.000" in line for line in lines)
