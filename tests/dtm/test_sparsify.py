"""The FDT-guided allocation on synthetic curves, and sparsify / int8_plan on a tiny model."""

import copy
import importlib

import pytest
import torch

from lmkernels import dtm

sparsify_module = importlib.import_module("lmkernels.dtm.sparsify")  # the name dtm.sparsify is the function


def test_largest_sparsity_above_interpolates_linearly():
    xs, ys = [0.0, 0.1, 0.3, 1.0], [100.0, 90.0, 50.0, 0.0]
    assert dtm.largest_sparsity_above(xs, ys, 100.0) == 0.0
    assert dtm.largest_sparsity_above(xs, ys, 95.0) == pytest.approx(0.05)
    assert dtm.largest_sparsity_above(xs, ys, 70.0) == pytest.approx(0.2)
    assert dtm.largest_sparsity_above(xs, ys, 0.0) == 1.0
    # Not monotone: the largest x wins, also past a dip.
    assert dtm.largest_sparsity_above([0.0, 0.1, 0.3, 1.0], [100.0, 40.0, 80.0, 0.0], 60.0) == pytest.approx(
        0.3 + 0.7 * 20 / 80)


def _synthetic_curves(target):
    # "robust" barely moves FDT until far past the target; "sensitive" collapses at once.
    return {
        "robust": ([0.0, target / 2, 1.5 * target, 1.0], [100.0, 100.0, 95.0, 0.0]),
        "middle": ([0.0, target / 2, 1.5 * target, 1.0], [100.0, 80.0, 40.0, 0.0]),
        "sensitive": ([0.0, target / 2, 1.5 * target, 1.0], [100.0, 20.0, 5.0, 0.0]),
    }


@pytest.mark.parametrize("target", [0.1, 0.3, 0.5])
def test_allocation_keeps_sensitive_components_denser_and_reaches_the_target(target):
    parameters = {"robust": 1000, "middle": 3000, "sensitive": 2000}
    added, threshold = dtm.allocate(_synthetic_curves(target), parameters, target)
    assert added["robust"] > added["middle"] > added["sensitive"]
    mean = sum(parameters[c] * added[c] for c in parameters) / sum(parameters.values())
    assert mean == pytest.approx(target)
    assert 0 <= threshold <= 100
    paper, _ = dtm.allocate(_synthetic_curves(target), parameters, target, interpolate=False)
    assert sum(parameters[c] * paper[c] for c in parameters) / sum(parameters.values()) >= target - 1e-12


def test_allocation_threshold_is_the_first_that_reaches_the_target():
    curves = {"a": ([0.0, 1.0], [100.0, 0.0]), "b": ([0.0, 1.0], [100.0, 0.0])}
    added, threshold = dtm.allocate(curves, {"a": 1, "b": 1}, 0.25, interpolate=False)
    assert threshold == 75 and added == pytest.approx({"a": 0.25, "b": 0.25})


def test_allocation_bad_input():
    curves = _synthetic_curves(0.2)
    with pytest.raises(ValueError, match="target"):
        dtm.allocate(curves, {"robust": 1, "middle": 1, "sensitive": 1}, 1.5)
    with pytest.raises(ValueError, match="curves"):
        dtm.allocate(curves, {"robust": 1}, 0.2)
    with pytest.raises(ValueError, match="threshold_step"):
        dtm.allocate(curves, {"robust": 1, "middle": 1, "sensitive": 1}, 0.2, threshold_step=0)


@pytest.mark.parametrize("method", dtm.METHODS)
@pytest.mark.parametrize("criterion", dtm.CRITERIA)
def test_sparsify_reaches_the_global_target(model, prompts, tmp_path, method, criterion):
    references = dtm.reference_continuations(model, prompts, 8, 5, cache_dir=tmp_path)
    plan = dtm.sparsify(model, 0.4, references, method=method, iterations=2, criterion=criterion, progress=False)
    counts = dtm.parameter_counts(model)
    # Never short of it (each component's count rounded apart could be); over by less than a weight each.
    assert 0.4 <= plan.global_sparsity < 0.4 + len(counts) / sum(counts.values())
    assert dtm.global_sparsity(model) == plan.global_sparsity
    assert [s["step"] for s in plan.steps] == [1, 2]
    assert plan.sparsity == {c: dtm.sparsity_of(w) for c, w in dtm.components(model).items()}
    assert plan.result.num_tokens == 8
    if method == "uniform":
        assert all(s == pytest.approx(0.4, abs=1e-3) for s in plan.sparsity.values())


def test_sparsify_with_wanda_prunes_by_the_input_norms_of_the_model_as_it_stands(model, prompts, tmp_path):
    references = dtm.reference_continuations(model, prompts, 8, 5, cache_dir=tmp_path)
    before = {c: w.detach().clone() for c, w in dtm.components(model).items()}
    norms = dtm.input_norms(model, references)
    plan = dtm.sparsify(model, 0.4, references, method="uniform", iterations=1, criterion="wanda", progress=False)
    assert plan.criterion == "wanda"
    for c, w in dtm.components(model).items():
        assert torch.equal(w, dtm.wanda_prune(before[c], norms[c], 0.4))


@pytest.mark.parametrize("probe_reference", dtm.PROBE_REFERENCES)
def test_sparsify_with_wanda_takes_fresh_norms_over_each_steps_probes(model, prompts, tmp_path, monkeypatch,
                                                                      probe_reference):
    references = dtm.reference_continuations(model, prompts, 8, 5, cache_dir=tmp_path)
    calls = []
    real_norms = sparsify_module.input_norms

    def spy(m, probes, names):
        calls.append((probes, dtm.global_sparsity(m)))
        return real_norms(m, probes, names)

    monkeypatch.setattr(sparsify_module, "input_norms", spy)
    plan = dtm.sparsify(model, 0.6, references, iterations=3, criterion="wanda", probe_reference=probe_reference,
                        progress=False)
    assert [sparsity for _, sparsity in calls] == pytest.approx([0.0, 0.2, 0.4], abs=1e-3)
    assert all((probes is references) == (probe_reference == "initial") for probes, _ in calls)
    assert plan.global_sparsity == pytest.approx(0.6, abs=1e-3)


def test_sparsify_with_wanda_on_a_huggingface_llama(llama, prompts, tmp_path):
    references = dtm.reference_continuations(llama, prompts, 6, 5, cache_dir=tmp_path)
    plan = dtm.sparsify(llama, 0.5, references, method="fdt", iterations=2, criterion="wanda", progress=False)
    assert plan.global_sparsity == pytest.approx(0.5, abs=1e-3) == dtm.global_sparsity(llama)


@pytest.mark.parametrize("probe_reference", dtm.PROBE_REFERENCES)
def test_sparsify_scores_probes_against_the_chosen_reference(model, prompts, tmp_path, monkeypatch,
                                                             probe_reference):
    references = dtm.reference_continuations(model, prompts, 8, 5, cache_dir=tmp_path)
    seen = []
    real_curves = sparsify_module._curves

    def spy(m, probes, *args):
        seen.append((probes, dtm.score(m, probes).fdt.tolist(), dtm.score(m, references).fdt.tolist()))
        return real_curves(m, probes, *args)

    monkeypatch.setattr(sparsify_module, "_curves", spy)
    plan = dtm.sparsify(model, 0.9, references, iterations=3, probe_reference=probe_reference, progress=False)
    assert len(seen) == 3 and plan.global_sparsity == pytest.approx(0.9, abs=1e-3)
    # After a step at 30 % sparsity the model no longer reproduces the initial references everywhere.
    assert any(fdt < 8 for _, _, initial_fdt in seen[1:] for fdt in initial_fdt)
    for probes, probe_fdt, _ in seen:
        if probe_reference == "initial":
            assert probes is references
        else:
            assert probe_fdt == [8] * len(prompts) and probes.prompts == references.prompts
    # Each step records the FDT75 of the model after it against the initial references.
    for step, (_, _, initial_fdt) in zip(plan.steps, seen[1:]):
        assert step["fdt_score"] == pytest.approx(100 * torch.quantile(torch.tensor(initial_fdt).double(), 0.75) / 8)


def test_sparsify_bad_input(model, prompts, tmp_path):
    references = dtm.reference_continuations(model, prompts, 4, 5, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="method"):
        dtm.sparsify(model, 0.5, references, method="wanda")
    with pytest.raises(ValueError, match="target"):
        dtm.sparsify(model, 1.2, references)
    with pytest.raises(ValueError, match="iterations"):
        dtm.sparsify(model, 0.5, references, iterations=0)
    with pytest.raises(ValueError, match="probe_reference"):
        dtm.sparsify(model, 0.5, references, probe_reference="dense")
    with pytest.raises(ValueError, match="do not exist"):
        dtm.sparsify(model, 0.5, references, components=["layers.9.q"])


def test_int8_plan_converts_least_divergent_first_within_budget(model, prompts, tmp_path):
    references = dtm.reference_continuations(model, prompts, 8, 5, cache_dir=tmp_path)
    before = {c: w.detach().clone() for c, w in dtm.components(model).items()}
    plan = dtm.int8_plan(model, 0.5, references, progress=False)
    scores = [plan.sweep.results[c].fdt_score() for c in plan.order]
    assert scores == sorted(scores, reverse=True) and sorted(plan.order) == sorted(before)
    assert plan.converted == plan.order[:len(plan.converted)] and 0 < plan.converted_fraction <= 0.5
    for c, w in dtm.components(model).items():
        assert torch.equal(w, dtm.int8_absmax(before[c]) if c in plan.converted else before[c])
    with pytest.raises(ValueError, match="budget"):
        dtm.int8_plan(model, 2.0, references)


def test_uniform_fills_up_to_the_target_when_a_component_is_full(model, prompts, tmp_path):
    with torch.no_grad():
        dtm.components(model)["layers.0.down"].zero_()  # full: it can lose nothing more
    start = dtm.global_sparsity(model)
    references = dtm.reference_continuations(model, prompts, 4, 5, cache_dir=tmp_path)
    for iterations in (1, 3):
        candidate = copy.deepcopy(model)
        plan = dtm.sparsify(candidate, 0.6, references, method="uniform", iterations=iterations, progress=False)
        assert start < 0.6 and plan.global_sparsity == pytest.approx(0.6, abs=1e-3)
        assert dtm.global_sparsity(candidate) == pytest.approx(0.6, abs=1e-3)


@pytest.mark.parametrize("step", [float("nan"), 1e-15, 1e-6, float("inf"), 0.0])
def test_allocation_rejects_steps_that_would_never_end(step):
    with pytest.raises(ValueError, match="threshold_step"):
        dtm.allocate({"a": ([0, 0.1, 0.3, 1], [100, 90, 50, 0])}, {"a": 10}, 0.2, threshold_step=step)


def test_empty_component_lists_and_bad_quantiles_are_named(model, prompts, tmp_path):
    references = dtm.reference_continuations(model, prompts, 4, 5, cache_dir=tmp_path)
    for call in (lambda: dtm.sparsify(model, 0.5, references, components=[], progress=False),
                 lambda: dtm.int8_plan(model, 0.5, references, components=[], progress=False),
                 lambda: dtm.global_sparsity(model, [])):
        with pytest.raises(ValueError, match="components"):
            call()
    with pytest.raises(ValueError, match="quantile"):
        dtm.int8_plan(model, 0.5, references, quantile=2, progress=False)
    with pytest.raises(TypeError, match="quantile"):
        dtm.sparsify(model, 0.5, references, quantile="0.5", progress=False)
