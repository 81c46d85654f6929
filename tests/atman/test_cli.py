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


def test_explain_command_checks(tmp_path):
    with pytest.raises(ValueError, match="--steps"):
        main(["explain", "--steps", "0"])
    with pytest.raises(ValueError, match="--prompt and --target"):
        main(["explain", "--hf", str(tmp_path)])
