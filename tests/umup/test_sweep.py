"""``lmk umup sweep`` end to end at smoke-test sizes, and the pieces of the sweep."""

import json
import math

import pytest
import torch

from lmkernels.cli import main
from lmkernels.umup import cli
from lmkernels.umup.cli import report, split_heldout
from lmkernels.umup.sweep import SweepResult, SweepSettings, byte_stream, sweep, windows

TEXT = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog, again and again." for i in range(40))


def test_sweep_cli_prints_tables_and_writes_json_and_plot(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    argv = ["umup", "sweep", "--text", str(corpus), "--widths", "16,32", "--sp-lrs=-8", "--umup-lrs=-1,1",
            "--steps", "2", "--layers", "1", "--seq-len", "8", "--batch-size", "2", "--json", str(out),
            "--plot", str(png)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"saved the plot to {png}" in printed
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.stat().st_size > 10_000
    assert "standard parametrisation (SP): held-out loss" in printed and "u-muP: held-out loss" in printed
    assert "best learning rate per width, u-muP" in printed and "FP8 (partial scheme) at width 32" in printed
    result = json.loads(out.read_text())
    assert set(result["losses"]) == {"sp", "umup"}
    assert set(result["losses"]["umup"]) == {"16", "32"} and set(result["losses"]["umup"]["32"]) == {"-1", "1"}
    losses = [v for by_width in result["losses"].values() for by_lr in by_width.values() for v in by_lr.values()]
    assert all(0 < v < 10 for v in losses)  # bytes: ln 256 = 5.5 at chance
    assert len(result["fp8_curves"]["fp8"]) == len(result["fp8_curves"]["high precision"]) == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="--widths"):
        main(["umup", "sweep", "--widths", "20"])
    with pytest.raises(ValueError, match="--sp-lrs"):
        main(["umup", "sweep", "--sp-lrs", "a,b"])
    with pytest.raises(ValueError, match="--steps"):
        main(["umup", "sweep", "--steps", "0"])


def test_windows_and_report():
    stream = byte_stream("abcdefghij")
    batch = windows(stream, 3, 4, torch.Generator().manual_seed(0))
    assert batch.shape == (3, 5) and all((row[1:] - row[:-1] == 1).all() for row in batch)
    with pytest.raises(ValueError, match="text"):
        windows(stream, 1, 20, torch.Generator())
    with pytest.raises(ValueError, match="text"):
        windows(stream, 1, 10, torch.Generator())  # 10 inputs need 11 bytes with their targets
    result = SweepResult(SweepSettings(widths=(16, 32)),
                         losses={"umup": {16: {0: 2.0, 1: 1.5}, 32: {0: 1.4, 1: math.inf}}})
    assert result.best_log2_lr("umup", 16) == 1 and result.best_log2_lr("umup", 32) == 0
    text = report(result)
    assert "diverged" in text and "2^1, 2^0 (moves by 1 octaves)" in text


def test_windows_reach_the_last_byte():
    stream = byte_stream("abcdefghij")
    only = windows(stream, 4, 9, torch.Generator().manual_seed(0))  # 9 inputs and their targets: the whole stream
    assert (only == stream).all()
    starts = windows(stream, 200, 7, torch.Generator().manual_seed(0))[:, 0] - ord("a")
    assert set(starts.tolist()) == {0, 1, 2}  # every start, the last one (target = the final byte) included


def _captured_texts(monkeypatch, tmp_path, text):
    """The (train, held-out) texts ``lmk umup sweep --text`` hands to the sweep for a file holding ``text``."""
    captured = []

    def fake_sweep(train_text, heldout_text, settings):
        captured.append((train_text, heldout_text))
        return SweepResult(settings)

    monkeypatch.setattr(cli, "sweep", fake_sweep)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    assert main(["umup", "sweep", "--text", str(corpus), "--seq-len", "8"]) == 0
    return captured[0]


def test_one_paragraph_is_split_by_bytes_not_reused(monkeypatch, tmp_path):
    paragraph = "the quick brown fox jumps over the lazy dog, " * 4 + "and the held-out end."
    train_text, heldout_text = _captured_texts(monkeypatch, tmp_path, paragraph + "\n")
    assert train_text + heldout_text == paragraph and heldout_text == paragraph[-len(heldout_text):]
    assert len(heldout_text.encode()) == len(paragraph.encode()) - len(paragraph.encode()) * 9 // 10
    assert _captured_texts(monkeypatch, tmp_path, TEXT) == (TEXT[:TEXT.index("Paragraph 36")].rstrip(),
                                                            TEXT[TEXT.index("Paragraph 36"):])


def test_split_heldout_cuts_between_characters():
    text = "é" * 15  # 30 bytes: a tenth is 3, one and a half characters
    train_text, heldout_text = split_heldout(text)
    assert (train_text, heldout_text) == ("é" * 13, "é" * 2)
    assert split_heldout("") == ("", "")


def test_a_text_too_short_for_a_held_out_window_names_text(monkeypatch, tmp_path):
    def no_sweep(*_args):
        raise AssertionError("the sweep started")

    monkeypatch.setattr(cli, "sweep", no_sweep)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("x" * 100)
    with pytest.raises(ValueError, match="--text: the held-out part has 10 bytes, fewer than --seq-len \\+ 1 = 17"):
        main(["umup", "sweep", "--text", str(corpus), "--seq-len", "16"])


@pytest.fixture
def one_thread():
    """These models are tiny: one thread is faster than two and does not fight other work for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("scheme", ["partial", "all"])
def test_fp8_run_tracks_fp32(scheme, one_thread):
    """The sweep's FP8 run (width 32, one layer, 40 steps of 8 x 16 bytes at lr 1) trains as far as its fp32 twin.

    The tolerance, measured on the mean training loss of the last quarter of the steps over seeds 0-11 (2-core
    CPU): both runs fall from 5.5 nats per byte (chance) to 0.41-0.55, and FP8 differs from fp32 by at most
    2.9 % (partial) and 4.6 % (all). The test allows 10 %. What it catches, seed 0: the FP8 layers' weights
    frozen (no weight gradient) end 17 % higher, the fp32 run at lr 0.5 instead of 1 (training half as
    fast) 70-90 % higher, and a run that does not train stays near 5.5.
    """
    settings = SweepSettings(widths=(32,), sp_log2_lrs=(-8,), umup_log2_lrs=(0,), layers=1, seq_len=16, batch_size=8,
                             steps=40, heldout_batches=1, fp8_scheme=scheme, seed=0)
    result = sweep(TEXT, TEXT, settings, progress=lambda line: None)
    assert (result.fp8_width, result.fp8_log2_lr) == (32, 0)
    high, fp8 = result.fp8_curves["high precision"], result.fp8_curves["fp8"]
    assert len(high) == len(fp8) == 40 and all(map(math.isfinite, high + fp8))
    tail = len(high) // 4
    high_loss, fp8_loss = sum(high[-tail:]) / tail, sum(fp8[-tail:]) / tail
    assert high[0] > 5 and high_loss < 1.5, high_loss  # the fp32 run trains
    assert abs(fp8_loss - high_loss) < 0.10 * high_loss, (fp8_loss, high_loss)
