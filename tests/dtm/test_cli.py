"""``lmk dtm`` at smoke-test size: it trains, sweeps, sparsifies three ways and writes its table."""

import json

import pytest

from lmkernels.cli import main


def test_dtm_command(tmp_path, capsys):
    path = tmp_path / "dtm.json"
    argv = ["dtm", "--steps", "2", "--dim", "16", "--layers", "1", "--heads", "2", "--seq-len", "16",
            "--batch-size", "2", "--prompts", "3", "--eval-prompts", "2", "--prompt-len", "6", "--tokens", "5",
            "--iterations", "1", "--target", "0.3", "--probe-reference", "current", "--cache-dir", str(tmp_path),
            "--json", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "FDT(F, F) = 5 on every prompt" in out
    assert "component sweep: magnitude pruning to 50%" in out and "layers.0.down" in out
    assert "int8 absmax per component" in out
    assert "probes against the current model" in out
    for method in ("dense", "fdt", "perplexity", "uniform"):
        assert f"  {method} " in out
    saved = json.loads(path.read_text())
    assert [row["method"] for row in saved["comparison"]] == ["dense", "fdt", "perplexity", "uniform"]
    assert all(row["sparsity"] == pytest.approx(0.3, abs=1e-3) for row in saved["comparison"][1:])
    # The evaluation prompts are the dense model's own: FDT = N there; the allocation never saw them.
    assert "on 2 evaluation prompts" in out and "best FDT mean on the 2 evaluation prompts" in out
    assert saved["comparison"][0]["eval"]["fdt_mean"] == 5 and saved["comparison"][0]["eval"]["sdt"] == 0
    assert all(0 <= row["eval"]["fdt_mean"] <= 5 for row in saved["comparison"][1:])


def test_dtm_command_with_wanda_and_recovery(tmp_path, capsys):
    path = tmp_path / "dtm.json"
    argv = ["dtm", "--steps", "2", "--dim", "16", "--layers", "1", "--heads", "2", "--seq-len", "16",
            "--batch-size", "2", "--prompts", "3", "--eval-prompts", "2", "--prompt-len", "6", "--tokens", "5",
            "--iterations", "2", "--target", "0.4", "--criterion", "wanda", "--recover-steps", "2",
            "--cache-dir", str(tmp_path), "--json", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "component sweep: Wanda pruning to 50%" in out
    assert "wanda pruning, 2 recovery steps after each" in out
    saved = json.loads(path.read_text())
    assert saved["criterion"] == "wanda" and saved["recover_steps"] == 2
    assert all(row["sparsity"] == pytest.approx(0.4, abs=1e-3) for row in saved["comparison"][1:])
    # Two recovery calls (one per step) for every method.
    for method in ("fdt", "perplexity", "uniform"):
        line = next(line for line in out.splitlines() if line.startswith(f"  {method} ") and "recovery" in line)
        assert line.count("->") == 2


def test_dtm_command_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="--prompts"):
        main(["dtm", "--steps", "1", "--dim", "16", "--layers", "1", "--prompts", "0", "--cache-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--eval-prompts"):
        main(["dtm", "--steps", "1", "--dim", "16", "--layers", "1", "--eval-prompts", "-1", "--cache-dir",
              str(tmp_path)])
    with pytest.raises(ValueError, match="--recover-steps"):
        main(["dtm", "--steps", "1", "--dim", "16", "--layers", "1", "--recover-steps", "-1", "--cache-dir",
              str(tmp_path)])
    with pytest.raises(ValueError, match="--eval-prompts: only"):
        main(["dtm", "--steps", "1", "--dim", "16", "--layers", "1", "--eval-prompts", "100000", "--cache-dir",
              str(tmp_path)])
