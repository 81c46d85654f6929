"""``lmk dtm`` at smoke-test size: it trains, sweeps, sparsifies three ways and writes its table."""

import json
import sys

import pytest

from lmkernels.cli import main

# The smallest run the tests make: seconds on a CPU (the reference continuations are cached under tmp_path).
TINY = ["--steps", "2", "--dim", "16", "--layers", "1", "--heads", "2", "--seq-len", "16", "--batch-size", "2",
        "--prompts", "3", "--eval-prompts", "2", "--prompt-len", "6", "--tokens", "5", "--iterations", "1",
        "--target", "0.3"]
PNG = b"\x89PNG"


def test_dtm_command(tmp_path, capsys):
    path = tmp_path / "dtm.json"
    argv = ["dtm", "--steps", "2", "--dim", "16", "--layers", "1", "--heads", "2", "--seq-len", "16",
            "--batch-size", "2", "--prompts", "3", "--eval-prompts", "2", "--prompt-len", "6", "--tokens", "5",
            "--iterations", "1", "--target", "0.3", "--probe-reference", "current", "--cache-dir", str(tmp_path),
            "--json", str(path), "--no-plot"]
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


@pytest.mark.parametrize("distil", [False, True])
def test_dtm_command_with_wanda_and_recovery(tmp_path, capsys, distil):
    path = tmp_path / "dtm.json"
    argv = ["dtm", "--steps", "2", "--dim", "16", "--layers", "1", "--heads", "2", "--seq-len", "16",
            "--batch-size", "2", "--prompts", "3", "--eval-prompts", "2", "--prompt-len", "6", "--tokens", "5",
            "--iterations", "2", "--target", "0.4", "--criterion", "wanda", "--recover-steps", "2",
            "--cache-dir", str(tmp_path), "--json", str(path), "--no-plot"] + ["--recover-distil"] * distil
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "component sweep: Wanda pruning to 50%" in out
    assert ("wanda pruning, 2 recovery steps after each, distilling the dense model" in out) == distil
    assert "wanda pruning, 2 recovery steps after each" in out
    saved = json.loads(path.read_text())
    assert saved["criterion"] == "wanda" and saved["recover_steps"] == 2 and saved["recover_distil"] == distil
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
    with pytest.raises(ValueError, match="--recover-distil"):
        main(["dtm", "--steps", "1", "--dim", "16", "--layers", "1", "--recover-distil", "--cache-dir",
              str(tmp_path)])
    # Checked before the training, which would otherwise come first.
    for flag, value in (("--tokens", "0"), ("--iterations", "0"), ("--steps", "0"), ("--target", "1.5"),
                        ("--quantile", "2"), ("--sweep-sparsity", "-0.1"), ("--int8-budget", "2")):
        with pytest.raises(ValueError, match=flag):
            main(["dtm", "--steps", "100000", "--dim", "16", "--layers", "1", flag, value, "--cache-dir",
                  str(tmp_path)])
    with pytest.raises(ValueError, match="--eval-prompts: only"):
        main(["dtm", "--steps", "1", "--dim", "16", "--layers", "1", "--eval-prompts", "100000", "--cache-dir",
              str(tmp_path)])


def test_dtm_command_saves_the_plot_where_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "plots" / "sparsity.png"
    path.parent.mkdir()
    assert main(["dtm", *TINY, "--cache-dir", str(tmp_path), "--plot", str(path)]) == 0
    assert path.read_bytes().startswith(PNG)
    assert f"saved the plot to {path}" in capsys.readouterr().out
    assert not (tmp_path / "dtm.png").exists()


def test_dtm_command_saves_the_plot_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["dtm", *TINY, "--cache-dir", str(tmp_path)]) == 0
    assert (tmp_path / "dtm.png").read_bytes().startswith(PNG)
    assert "saved the plot to dtm.png" in capsys.readouterr().out


def test_dtm_command_no_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["dtm", *TINY, "--cache-dir", str(tmp_path), "--no-plot"]) == 0
    captured = capsys.readouterr()
    assert "plot" not in captured.out + captured.err
    assert list(tmp_path.glob("*.png")) == []
    with pytest.raises(SystemExit):  # argparse: not allowed with argument --plot
        main(["dtm", "--plot", str(tmp_path / "x.png"), "--no-plot"])


def test_dtm_command_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    # The default plot is skipped with a one-line note; the run succeeds.
    assert main(["dtm", *TINY, "--cache-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "plot" in line]  # stderr also has the progress bars
    assert len(notes) == 1 and notes[0].startswith("skipped the plot (dtm.png): matplotlib is missing")
    assert list(tmp_path.glob("*.png")) == []
    # An explicit --plot fails at once, before the training.
    with pytest.raises(ImportError, match=r"--plot needs matplotlib: pip install 'lmkernels\[plot\]'"):
        main(["dtm", *TINY, "--cache-dir", str(tmp_path), "--plot", str(tmp_path / "x.png")])
    assert "training" not in capsys.readouterr().out
