"""``component_sweep``: one row per component, CSV/JSON output, references reused, weights unchanged."""

import csv
import io
import json

import torch

from lmkernels import dtm
from lmkernels.dtm import continuations as continuations_module
from lmkernels.dtm.sweep import COLUMNS, ProgressBar


def test_sweep_scores_every_component_and_restores_the_model(model, prompts, tmp_path):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "sweep.csv"
    table = dtm.component_sweep(model, prompts, dtm.MagnitudePruning(0.9), num_tokens=6, batch_size=2,
                                output=path, progress=False, cache_dir=tmp_path)
    assert [row["component"] for row in table.rows] == ["-"] + list(dtm.components(model))
    assert table.rows[0]["fdt_mean"] == 6 and table.rows[0]["sdt"] == 0
    assert any(row["sdt"] > 0 for row in table.rows[1:])
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 15 and rows[2]["component"] == "layers.0.k"
    json_path = tmp_path / "sweep.json"
    table.write(json_path)
    saved = json.loads(json_path.read_text())
    assert saved["num_tokens"] == 6 and saved["compression"] == "magnitude pruning to 90%"
    assert saved["rows"] == table.rows
    assert "layers.1.down" in table.format()


def test_sweep_reuses_references_and_takes_a_subset(model, prompts, tmp_path, monkeypatch):
    references = dtm.reference_continuations(model, prompts, 6, 5, cache_dir=tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated the references")

    monkeypatch.setattr(continuations_module, "greedy", fail)
    table = dtm.component_sweep(model, references, dtm.Int8Absmax(), components=["layers.1.q", "layers.0.up"],
                                progress=False)
    assert [row["component"] for row in table.rows] == ["-", "layers.1.q", "layers.0.up"]
    assert table.rows[1]["parameters"] == 32 * 32


def test_progress_bar_counts_to_the_end():
    stream = io.StringIO()
    bar = ProgressBar(2, "sweep", width=4, stream=stream)
    bar.advance("a")
    bar.advance("b")
    text = stream.getvalue()
    assert "[##..] 1/2" in text and "[####] 2/2" in text and text.endswith("\n")


def test_huggingface_llama_sweep(llama, prompts, tmp_path):
    table = dtm.component_sweep(llama, prompts, dtm.MagnitudePruning(0.5), components=["layers.0.gate"],
                                num_tokens=5, batch_size=5, progress=False, cache_dir=tmp_path)
    assert [row["component"] for row in table.rows] == ["-", "layers.0.gate"]
    assert table.rows[0]["fdt_mean"] == 5
