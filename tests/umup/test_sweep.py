"""``lmk umup sweep`` end to end at smoke-test sizes, and the pieces of the sweep."""

import json
import math

import pytest
import torch

from lmkernels.cli import main
from lmkernels.umup.cli import report
from lmkernels.umup.sweep import SweepResult, SweepSettings, byte_stream, windows

TEXT = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog, again and again." for i in range(40))


def test_sweep_cli_prints_tables_and_writes_json(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "sweep.json"
    argv = ["umup", "sweep", "--text", str(corpus), "--widths", "16,32", "--sp-lrs=-8", "--umup-lrs=-1,1",
            "--steps", "2", "--layers", "1", "--seq-len", "8", "--batch-size", "2", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
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
    result = SweepResult(SweepSettings(widths=(16, 32)),
                         losses={"umup": {16: {0: 2.0, 1: 1.5}, 32: {0: 1.4, 1: math.inf}}})
    assert result.best_log2_lr("umup", 16) == 1 and result.best_log2_lr("umup", 32) == 0
    text = report(result)
    assert "diverged" in text and "2^1, 2^0 (moves by 1 octaves)" in text
