"""Wanda-style pruning: a plain per-row reference, ties, exact counts, nested masks, the input norms, bad input."""

import pytest
import torch

from lmkernels import dtm
from lmkernels.dtm import models


def _reference_wanda(weight, norms, sparsity):
    """Row by row in plain Python: sort (already zero first, score, column), zero each row's share."""
    rows, columns = weight.shape
    count = round(sparsity * rows * columns)
    shares = [count // rows + (1 if r < count % rows else 0) for r in range(rows)]
    pruned = weight.clone()
    for r in range(rows):
        keys = sorted(range(columns), key=lambda j: (weight[r, j].item() != 0,
                                                     abs(weight[r, j].item()) * norms[j].item(), j))
        for j in keys[:shares[r]]:
            pruned[r, j] = 0
    return pruned


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.33, 0.5, 0.9, 1.0])
def test_wanda_matches_the_per_row_reference_and_hits_the_exact_count(sparsity):
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(13, 17, generator=generator)
    norms = torch.rand(17, generator=generator) * 3
    pruned = dtm.wanda_prune(weight, norms, sparsity)
    assert torch.equal(pruned, _reference_wanda(weight, norms, sparsity))
    assert int((pruned == 0).sum()) == round(sparsity * weight.numel())
    kept = pruned != 0
    assert torch.equal(pruned[kept], weight[kept])
    # Row shares differ by at most one zero.
    per_row = (~kept).sum(1)
    assert int(per_row.max() - per_row.min()) <= 1


def test_wanda_is_not_magnitude_pruning():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # Feature 3 carries almost no signal, so its large weight goes first.
    assert dtm.wanda_prune(weight, torch.tensor([1.0, 1.0, 1.0, 0.01]), 0.25).tolist() == [[1.0, 2.0, 3.0, 0.0]]
    assert dtm.magnitude_prune(weight, 0.25).tolist() == [[0.0, 2.0, 3.0, 4.0]]


def test_wanda_ties_go_to_the_lower_column_and_the_remainder_to_the_first_rows():
    weight = torch.tensor([[1.0, 2.0, 1.0, 2.0], [2.0, 1.0, 2.0, 1.0]])
    norms = torch.tensor([2.0, 1.0, 2.0, 1.0])  # every score of row 0 is 2
    assert dtm.wanda_prune(weight, norms, 0.5).tolist() == [[0.0, 0.0, 1.0, 2.0], [2.0, 0.0, 2.0, 0.0]]
    # 3 zeros over 2 rows: row 0 takes 2, row 1 takes 1.
    assert dtm.wanda_prune(weight, norms, 0.375).tolist() == [[0.0, 0.0, 1.0, 2.0], [2.0, 0.0, 2.0, 1.0]]


def test_wanda_extends_an_earlier_mask():
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(20, 10, generator=generator)
    norms, other_norms = torch.rand(10, generator=generator), torch.rand(10, generator=generator)
    once = dtm.wanda_prune(weight, norms, 0.3)
    twice = dtm.wanda_prune(once, norms, 0.6)
    assert torch.equal(twice, dtm.wanda_prune(weight, norms, 0.6))
    # With other norms (a later step's) the earlier zeros stay and the count is still exact.
    later = dtm.wanda_prune(once, other_norms, 0.6)
    assert bool((later[once == 0] == 0).all()) and int((later == 0).sum()) == 120
    # A row with more zeros than its share keeps them: pruning never revives a weight.
    weight[0] = 0
    assert torch.equal(dtm.wanda_prune(weight, norms, 0.05)[0], torch.zeros(10))
    # 10 zeros to place: one each in rows 0..9; row 0 has its 10 already, rows 1..9 add one each.
    assert int((dtm.wanda_prune(weight, norms, 0.05) == 0).sum()) == 10 + 9


def _hooked_norms(model, references, names):
    """Input norms from one unpadded prompt at a time, with hooks of its own: no padding to exclude."""
    modules = dtm.component_modules(model)
    squares = {name: 0.0 for name in names}
    handles = [modules[name].register_forward_hook(
        lambda module, inputs, output, name=name: squares.__setitem__(
            name, squares[name] + inputs[0][0].double().square().sum(0))) for name in names]
    with torch.no_grad():
        for prompt, continuation in zip(references.prompts, references.continuations):
            sequence = torch.cat((prompt, continuation))[None]
            models.logits_of(model, sequence, torch.ones_like(sequence, dtype=torch.bool))
    for handle in handles:
        handle.remove()
    return {name: total.sqrt().float() for name, total in squares.items()}


@pytest.mark.parametrize("which", ["model", "llama"])
def test_input_norms_cover_the_real_tokens_of_prompts_and_continuations(request, prompts, tmp_path, which):
    model = request.getfixturevalue(which)
    references = dtm.reference_continuations(model, prompts, 6, 5, cache_dir=tmp_path)
    names = ["layers.0.q", "layers.1.o", "layers.1.down"]
    norms = dtm.input_norms(model, references, names)
    expected = _hooked_norms(model, references, names)
    assert list(norms) == names
    for name in names:
        assert norms[name].dtype == torch.float32
        assert norms[name].shape == (dtm.components(model)[name].shape[1],)
        torch.testing.assert_close(norms[name], expected[name], rtol=1e-4, atol=1e-5)
    assert all(not module._forward_hooks for module in dtm.component_modules(model).values())
    assert list(dtm.input_norms(model, references)) == list(dtm.components(model))


def test_wanda_pruning_compresses_each_component_with_its_own_norms(model, prompts, tmp_path):
    references = dtm.reference_continuations(model, prompts, 6, 5, cache_dir=tmp_path)
    norms = dtm.input_norms(model, references)
    pruning = dtm.WandaPruning(0.5, norms)
    assert pruning.label == "Wanda pruning to 50%"
    before = {c: w.detach().clone() for c, w in dtm.components(model).items()}
    for name in ("layers.0.k", "layers.1.up"):
        with dtm.compressed(model, name, pruning):
            assert torch.equal(dtm.components(model)[name], dtm.wanda_prune(before[name], norms[name], 0.5))
    table = dtm.component_sweep(model, references, pruning, ["layers.0.k", "layers.1.up"], progress=False)
    assert table.compression == "Wanda pruning to 50%" and [r["component"] for r in table.rows][1:] == [
        "layers.0.k", "layers.1.up"]
    with dtm.compressed(model, "layers.0.k", dtm.WandaPruning(0.5, norms)):
        assert table.results["layers.0.k"].fdt.tolist() == dtm.score(model, references).fdt.tolist()
    assert all(torch.equal(w, before[c]) for c, w in dtm.components(model).items())


def test_wanda_bad_input(model, prompts):
    weight, norms = torch.randn(3, 4), torch.ones(4)
    for sparsity in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="sparsity"):
            dtm.wanda_prune(weight, norms, sparsity)
    with pytest.raises(ValueError, match=r"input_norms: expected a floating-point tensor of shape \[4\]"):
        dtm.wanda_prune(weight, torch.ones(3), 0.5)
    with pytest.raises(ValueError, match="input_norms"):
        dtm.wanda_prune(weight, torch.ones(1, 4), 0.5)
    with pytest.raises(ValueError, match="input_norms"):
        dtm.wanda_prune(weight, torch.ones(4, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="input_norms: expected finite, non-negative"):
        dtm.wanda_prune(weight, torch.tensor([1.0, -1.0, 1.0, 1.0]), 0.5)
    with pytest.raises(ValueError, match="input_norms: expected finite, non-negative"):
        dtm.wanda_prune(weight, torch.tensor([1.0, float("nan"), 1.0, 1.0]), 0.5)
    with pytest.raises(TypeError, match="input_norms"):
        dtm.wanda_prune(weight, [1.0, 1.0, 1.0, 1.0], 0.5)
    with pytest.raises(ValueError, match="weight"):
        dtm.wanda_prune(torch.ones(4), norms, 0.5)
    with pytest.raises(ValueError, match="sparsity"):
        dtm.WandaPruning(1.5, {})
    with pytest.raises(TypeError, match="input_norms"):
        dtm.WandaPruning(0.5, [norms])
    with pytest.raises(ValueError, match="input_norms: has no norms for the component 'layers.0.q'"):
        with dtm.compressed(model, "layers.0.q", dtm.WandaPruning(0.5, {})):
            pass
    with pytest.raises(TypeError, match="references"):
        dtm.input_norms(model, prompts)
