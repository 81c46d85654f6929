"""``lmk tfree train`` at smoke-test size: it trains, compares with BPE, samples and plots."""

import pytest

from lmkernels.cli import main
from lmkernels.tfree.train import TrainSettings, bpe_vocabulary_size, train

TEXT = "\n\n".join(f"The cat number {i} sat on the mat. A dog looked at the cat and ran away." for i in range(60))


def test_train_command_reports_parameters_losses_and_samples(tmp_path, capsys):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    argv = ["tfree", "train", "--text", str(path), "--steps", "4", "--vocab-size", "1000", "--m", "4",
            "--k-lowercase", "1", "--dim", "32", "--seq-len", "16", "--batch-size", "4", "--bpe-vocab", "500",
            "--prompt", "The cat"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "T-FREE embedding + head: 64,000 parameters" in out
    # 2 x 1000 x 32 T-FREE parameters against 2 x (at most 500) x 32: T-FREE uses more here, said as such.
    assert "BPE embedding + head:" in out and "% more" in out and "-" not in out.split("T-FREE uses")[1][:2]
    assert "training loss: step 1:" in out and "held-out loss:" in out
    assert "'The cat' -> " in out


def test_train_command_plots_the_loss_curve(tmp_path, capsys):
    path, plot = tmp_path / "text.txt", tmp_path / "losses.png"
    path.write_text(TEXT, encoding="utf-8")
    argv = ["tfree", "train", "--text", str(path), "--steps", "2", "--vocab-size", "1000", "--m", "4",
            "--k-lowercase", "1", "--dim", "32", "--seq-len", "16", "--batch-size", "4", "--no-bpe",
            "--prompt", "The cat", "--plot", str(plot)]
    assert main(argv) == 0
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert f"saved the loss curve to {plot}" in capsys.readouterr().out


def test_bpe_vocabulary_is_trained_on_the_text():
    size = bpe_vocabulary_size(TEXT, 400)
    assert 256 < size <= 400


def test_train_rejects_text_without_words(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("   ", encoding="utf-8")
    with pytest.raises(ValueError, match="text"):
        main(["tfree", "train", "--text", str(path), "--steps", "1", "--no-bpe"])


@pytest.mark.parametrize("flag, value, message", [
    ("--steps", "0", "^steps: expected an int >= 1, got 0"),
    ("--seq-len", "0", "^seq_len: expected an int >= 1"),
    ("--batch-size", "-1", "^batch_size: expected an int >= 1"),
    ("--dim", "0", "^dim: expected an int >= 1"),
    ("--layers", "0", "^num_layers: expected an int >= 1"),
    ("--lr", "0", "^learning_rate: expected a positive finite number"),
    ("--lr", "nan", "^learning_rate: expected a positive finite number"),
])
def test_train_rejects_settings_that_are_not_positive_before_it_starts(tmp_path, monkeypatch, flag, value, message):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    monkeypatch.setattr("lmkernels.tfree.train.Tokenizer", None)  # the check comes first: nothing is built
    with pytest.raises(ValueError, match=message):
        main(["tfree", "train", "--text", str(path), "--no-bpe", "--vocab-size", "1000", "--m", "4", flag, value])


@pytest.mark.parametrize("setting, value, error", [
    ("num_heads", 0, ValueError), ("dictionary_size", 0, ValueError), ("warmup", -1, ValueError),
    ("pos_weight", 0.0, ValueError), ("loss_scale", float("inf"), ValueError), ("steps", 2.5, TypeError),
    ("learning_rate", "3e-3", TypeError),
])
def test_train_rejects_settings_without_flags_too(setting, value, error):
    with pytest.raises(error, match=f"^{setting}: expected"):
        train(TEXT, settings=TrainSettings(**{setting: value}), log=None)
